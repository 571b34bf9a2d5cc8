import os

import pytest
import torch
from accelerate.state import AcceleratorState

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Under pytest-xdist (scripts/test.sh runs two workers) each worker gets one of the two cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every test starts and ends without accelerate's process-wide state (the CLI creates it)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def run_cli(*args):
    """Run `genrl ...` in-process; returns the exit code."""
    from genrl.cli import main

    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def assert_distill_resumes_exactly(args: list, out) -> None:
    """A 6-step `genrl distill` run (checkpoints every 3) crashes after checkpoint 3: `resume=true` redoes
    steps 4-6, logs each step once, and ends with the same student as the uninterrupted run."""
    import shutil

    from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from genrl.run_dir import read_metrics

    assert run_cli("distill", *args) == 0
    finished = DiffusionPolicy.from_pretrained(out / "model")
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    shutil.rmtree(out / "model")
    assert run_cli("distill", *args, "resume=true") == 0
    resumed = DiffusionPolicy.from_pretrained(out / "model")
    for a, b in zip(finished.network.parameters(), resumed.network.parameters()):
        assert torch.equal(a, b)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


@pytest.fixture
def tiny_unet_config():
    """A UNet2DConditionModel small enough to run in milliseconds."""
    return dict(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )


TINY_PRETRAIN = {
    "model": {
        "kind": "prompt_diffusion",
        "network": {
            "kind": "unet2d_condition",
            "config": dict(
                sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=[8, 16],
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                attention_head_dim=4, norm_num_groups=4,
            ),
        },
        "text_encoder": {"hidden_size": 16, "num_layers": 1, "num_heads": 2},
    },
}

# A DDPO run small enough for a test: 8 samples x 4 steps per epoch.
TINY_TRAIN_OVERRIDES = [
    "rollout.batch_size=4", "rollout.num_batches=2", "train_batch_size=4", "gradient_accumulation_steps=1",
    "sampler.num_steps=4", "rollout.eval_samples=4", "rollout.grid_prompts=4", "checkpoint_every=1", "log_with=[]",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-init prompt-conditioned model saved like the shipped one."""
    from genrl.config import PretrainConfig
    from genrl.pretraining import build_model

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny_model")
    build_model(PretrainConfig.model_validate(TINY_PRETRAIN)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_flow_model_dir(tmp_path_factory):
    """The same tiny network as a flow-matching (velocity) model."""
    from genrl.config import PretrainConfig
    from genrl.pretraining import build_model

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny_flow_model")
    config = PretrainConfig.model_validate({**TINY_PRETRAIN, "schedule": {"family": "flow", "shift": 3.0}})
    build_model(config).save_pretrained(directory)
    return directory


# ------------------------------------------------------------------ action policies
# PointMaze U-maze's recipes: collect (demos), pretrain (behaviour cloning), eval (episodes).
UMAZE = "configs/collect/pointmaze_umaze.yaml"
UMAZE_PRETRAIN = "configs/pretrain/policy_pointmaze_umaze.yaml"
UMAZE_EVAL = "configs/eval/policy_pointmaze_umaze.yaml"
# A Diffusion Policy small enough for tests (pretrain overrides): 8-step chunks, a two-level UNet,
# 20 diffusion steps, evaluated with 4 DDIM steps and no videos.
TINY_POLICY_OVERRIDES = [
    "model.horizon=8", "model.n_action_steps=4", "model.down_dims=[8,16]", "model.n_groups=4",
    "model.timestep_embed_dim=16", "schedule.num_train_timesteps=20",
    "eval.episodes.sampler.kind=ddim", "eval.episodes.sampler.num_steps=4", "eval.episodes.sampler.eta=0.0",
    "eval.episodes.num_videos=0",
]
# `genrl eval` of such a policy: its sampler fits 20 training steps.
TINY_POLICY_EVAL_OVERRIDES = ["sampler.kind=ddim", "sampler.num_steps=4", "sampler.eta=0.0", "rollout.eval.num_videos=0"]


@pytest.fixture(scope="session")
def umaze_demos(tmp_path_factory):
    """Four expert episodes in PointMaze U-maze, written by `collect`."""
    from genrl.commands import collect
    from genrl.config import load_config

    path = tmp_path_factory.mktemp("demos") / "umaze.zarr"
    collect.run(load_config("collect", UMAZE, [f"dataset.path={path}", "collect.num_episodes=4"]))
    return path


@pytest.fixture(scope="session")
def tiny_policy_dir(umaze_demos, tmp_path_factory):
    """A random-init tiny Diffusion Policy for U-maze, saved like the shipped ones."""
    from genrl.config import load_config
    from genrl.data.demonstrations import load_demonstrations
    from genrl.pretraining import build_policy

    torch.manual_seed(0)
    config = load_config("pretrain", UMAZE_PRETRAIN, [f"data.path={umaze_demos}", *TINY_POLICY_OVERRIDES])
    directory = tmp_path_factory.mktemp("tiny_policy")
    build_policy(config, load_demonstrations(umaze_demos)).save_pretrained(directory)
    return directory
