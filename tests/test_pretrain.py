"""`genrl pretrain` on a tiny network: writes a loadable model, resumes from a checkpoint."""

import pytest
import yaml
from accelerate.state import AcceleratorState
from conftest import TINY_PRETRAIN

from genrl.cli import main
from genrl.models.loading import load_model
from genrl.run_dir import read_metrics


@pytest.mark.parametrize("family", ["diffusion", "flow"])
def test_tiny_pretrain_writes_a_model_and_resumes(tmp_path, family):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_PRETRAIN, "batch_size": 4, "log_every": 2, "checkpoint_every": 2,
                                      "eval_samples": 4, "schedule": {"family": family}}))
    out = tmp_path / "run"
    for max_steps, extra in [(2, []), (4, ["resume=true"])]:
        AcceleratorState._reset_state(reset_partial_state=True)
        with pytest.raises(SystemExit) as exit_info:
            main(["pretrain", str(config), f"output_dir={out}", f"max_steps={max_steps}", *extra])
        assert exit_info.value.code == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == [2, 4]  # the resumed run continued at step 3, not from scratch
    assert (out / "checkpoints" / "checkpoint-4").is_dir()
    model = load_model(out / "model")
    assert model.sample_shape == (3, 32, 32) and model.family == family
    assert "eval_shapes_alignment_prompt_match" in read_metrics(out / "metrics.jsonl")[-1]
