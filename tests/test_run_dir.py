"""The run directory keeps its promises: resume after a crash repeats nothing and changes nothing,
settings cannot silently change on resume, no command overwrites another's outputs, and old
checkpoints are pruned without touching the one being resumed."""

import shutil

import yaml
from accelerate.state import AcceleratorState
from conftest import TINY_TRAIN_OVERRIDES, run_cli

from genrl.run_dir import read_metrics

DDPO = "configs/ddpo/shapes_compressibility.yaml"


def _train(model_dir, out, *overrides):
    AcceleratorState._reset_state(reset_partial_state=True)
    return run_cli("train", DDPO, f"model.path={model_dir}", f"output_dir={out}", *TINY_TRAIN_OVERRIDES, *overrides)


def test_resume_after_a_crash_between_checkpoints_redoes_the_lost_epoch_exactly(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_model_dir, out, "num_epochs=3", "checkpoint_every=2") == 0
    uninterrupted = read_metrics(out / "metrics.jsonl")
    # As if killed after epoch 3 was logged but before its checkpoint was written.
    shutil.rmtree(out / "checkpoints" / "checkpoint-3")
    assert _train(tiny_model_dir, out, "num_epochs=4", "checkpoint_every=2", "resume=true") == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]  # no duplicate epoch 3
    assert records[2]["reward_mean"] == uninterrupted[2]["reward_mean"]  # bit-identical redo
    assert records[2]["approx_kl"] == uninterrupted[2]["approx_kl"]

    # Settings that change what is learnt are refused on resume; the run is left as it was.
    saved_config = (out / "config.yaml").read_text()
    assert _train(tiny_model_dir, out, "num_epochs=5", "resume=true", "optimizer.learning_rate=1e-2") == 2
    assert "optimizer.learning_rate" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == saved_config
    assert _train(tiny_model_dir, out, "num_epochs=5", "resume=true", "optimizer.learning_rate=1e-2",
                  "resume_allow_changes=true") == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["optimizer"]["learning_rate"] == 1e-2


def test_eval_refuses_a_training_run_directory(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_model_dir, out, "num_epochs=1") == 0
    config, summary = (out / "config.yaml").read_text(), (out / "summary.json").read_text()
    assert run_cli("eval", "configs/eval/shapes.yaml", f"model.path={out / 'model'}", f"output_dir={out}",
                   "rollout.eval_samples=2") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == config and (out / "summary.json").read_text() == summary


def test_checkpoints_are_pruned_but_the_resumed_one_is_kept(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_model_dir, out, "num_epochs=3", "keep_checkpoints=2") == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert _train(tiny_model_dir, out, "num_epochs=5", "keep_checkpoints=1", "resume=true") == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-5"]
