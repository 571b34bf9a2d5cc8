"""Every trainer learns, in the right direction: from one fixed start, a run rewarded for bright
images must end brighter than a run rewarded for dark ones (same seeds, same evaluation noise).
A sign error makes the order wrong; an update that does nothing leaves the two runs exactly equal.
(The action trainers' counterpart is tests/test_policy_rl.py's bandit test.)"""

import json

import numpy as np
import pytest
from accelerate.state import AcceleratorState
from conftest import TINY_TRAIN_OVERRIDES, run_cli
from PIL import Image

# A few epochs of large steps: enough to move a tiny random-init model's brightness.
FAST = [*TINY_TRAIN_OVERRIDES, "num_epochs=3", "optimizer.learning_rate=3e-3", "ppo.clip_range=0.2", "ppo.timestep_fraction=1",
        "rollout.eval_samples=8", "rollout.metric_rewards=[toy_rewards:brightness]", "lora.rank=8", "lora.alpha=8",
        "ppo.stat_min_count=100"]
CASES = {
    "ddpo": ("configs/ddpo/shapes_compressibility.yaml", "brightness", []),
    "pxpo": ("configs/pxpo/shapes_pixel_alignment.yaml", "brightness_map", []),
    "rebel": ("configs/rebel/shapes_compressibility.yaml", "brightness", ["rebel.pairs_per_update=2", "optimizer.learning_rate=3e-2"]),
    "b2diffurl": ("configs/b2diffurl/shapes_sparse_alignment.yaml", "brightness",
                  # The whole 4-step chain is the trained window (branching at step 0): the test is about the
                  # update's direction through B^2's selection; the stage schedule has its own tests.
                  ["rollout.batch_size=8", "rollout.group_size=4", "b2diffurl.split_step_start=4", "b2diffurl.split_step_end=4",
                   "b2diffurl.positive_threshold=0.0", "b2diffurl.negative_threshold=0.0"]),
}


def _brightness_after(recipe, reward, extra, model_dir, out):
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run_cli("train", recipe, f"model.path={model_dir}", f"output_dir={out}", *FAST,
                   f"rollout.reward.name=toy_rewards:{reward}", *extra) == 0
    summary = json.loads((out / "summary.json").read_text())
    return summary["toy_rewards:brightness_before"], summary["toy_rewards:brightness_after"]


@pytest.mark.parametrize("trainer", list(CASES))
def test_image_trainer_moves_the_reward_the_way_it_is_rewarded(trainer, tiny_model_dir, tmp_path):
    recipe, reward, extra = CASES[trainer]
    before, bright = _brightness_after(recipe, reward, extra, tiny_model_dir, tmp_path / "bright")
    _, dark = _brightness_after(recipe, reward.replace("brightness", "darkness"), extra, tiny_model_dir, tmp_path / "dark")
    assert bright > dark, (bright, before, dark)


def test_sft_pg_moves_samples_toward_the_real_data(tiny_model_dir, tmp_path):
    """SFT-PG's reward is its critic against real data: white real images pull samples brighter
    than black real images do."""
    ends = {}
    for name, value in [("white", 255), ("black", 0)]:
        data = tmp_path / f"{name}_images"
        data.mkdir()
        for i in range(8):
            Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(data / f"{i}.png")
        _, ends[name] = _brightness_after("configs/sft/shapes_10step.yaml", "brightness",
                                          [f"sft_pg.real_data={data}", "sft_pg.critic_batch_size=8", "sft_pg.critic_warmup_steps=20"],
                                          tiny_model_dir, tmp_path / name)
    assert ends["white"] > ends["black"], ends
