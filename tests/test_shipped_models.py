"""The shipped models load, still do what they are asked, and are what their recipes build."""

import json
from pathlib import Path

import numpy as np
import pytest

from genrl.commands import eval as eval_command
from genrl.config import PromptConfig, SamplerConfig, load_config
from genrl.data.demonstrations import load_demonstrations
from genrl.evaluation.images import make_prompts, sample_images, score_images
from genrl.models.loading import load_model
from genrl.policies.diffusion import DiffusionPolicy
from genrl.pretraining import build_model, build_policy

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [("shapes-diffusion", SamplerConfig(kind="ddim", num_steps=20, eta=0.0)),
           ("shapes-flow", SamplerConfig(kind="flow_sde", num_steps=20, noise_level=0.0))]


@pytest.mark.parametrize("name,sampler", SHIPPED, ids=[s[0] for s in SHIPPED])
def test_shipped_model_follows_single_object_prompts(name, sampler):
    path = ROOT / "models" / name
    if not path.exists():
        pytest.skip(f"models/{name} is not shipped in this checkout")
    model = load_model(path).eval()
    prompts = make_prompts(PromptConfig(num_objects=(1, 1)), np.random.default_rng(123), 24)
    images = sample_images(model, prompts, sampler, seed=0, batch_size=24)
    scores = score_images(images, prompts, ["shapes_alignment"])
    # Measured on 256 prompts at 20 deterministic steps: see README. A broken model scores ~0.
    assert scores["shapes_alignment/prompt_match"] >= 0.5, scores


def _settings(module) -> dict:
    """A diffusers config without its metadata (`_class_name`, `_diffusers_version`, `_name_or_path`, ...)."""
    return json.loads(json.dumps({key: value for key, value in module.config.items() if not key.startswith("_")}))


def _scheduler_settings(scheduler) -> dict:
    keys = ("num_train_timesteps", "beta_schedule", "prediction_type", "clip_sample", "shift")
    return {key: scheduler.config.get(key) for key in keys}


@pytest.mark.parametrize("name,recipe", [("shapes-diffusion", "shapes"), ("shapes-flow", "shapes_flow")])
def test_shipped_shapes_models_are_what_their_recipes_build(name, recipe):
    path = ROOT / "models" / name
    if not path.exists():
        pytest.skip(f"models/{name} is not shipped in this checkout")
    shipped = load_model(path)
    built = build_model(load_config("pretrain", ROOT / "configs" / "pretrain" / f"{recipe}.yaml"))
    assert _settings(built.network) == _settings(shipped.network)
    assert _settings(built.text_encoder) == _settings(shipped.text_encoder)
    assert _scheduler_settings(built.scheduler) == _scheduler_settings(shipped.scheduler)


@pytest.mark.parametrize("task", ["pointmaze_umaze", "pointmaze_medium", "pusht"])
def test_shipped_policies_are_what_their_recipes_build(task):
    """The pretrain recipe on the shipped dataset gives the shipped policy's network, schedule,
    normalisation statistics and env; the eval recipe points at it."""
    evaluate = load_config("eval", ROOT / "configs" / "eval" / f"policy_{task}.yaml")
    path = ROOT / evaluate.model.path
    if not path.exists():
        pytest.skip(f"{evaluate.model.path} is not shipped in this checkout")
    shipped = DiffusionPolicy.from_pretrained(path)
    config = load_config("pretrain", ROOT / "configs" / "pretrain" / f"policy_{task}.yaml")
    built = build_policy(config, load_demonstrations(ROOT / config.data.path))
    assert _settings(built.network) == _settings(shipped.network)
    assert _scheduler_settings(built.scheduler) == _scheduler_settings(shipped.scheduler)
    assert built.policy_config == shipped.policy_config
    assert shipped.env_config == evaluate.rollout.env.model_dump(mode="json")
    for field in ("obs", "action"):
        np.testing.assert_allclose(getattr(built.normalizer, field).scale, getattr(shipped.normalizer, field).scale, rtol=1e-6)
        np.testing.assert_allclose(getattr(built.normalizer, field).offset, getattr(shipped.normalizer, field).offset, rtol=1e-6)


def test_the_policy_eval_recipe_runs_on_the_shipped_policy(tmp_path):
    path = ROOT / "models" / "policy-pointmaze-umaze"
    if not path.exists():
        pytest.skip("models/policy-pointmaze-umaze is not shipped in this checkout")
    config = load_config("eval", ROOT / "configs" / "eval" / "policy_pointmaze_umaze.yaml",
                         [f"model.path={path}", f"output_dir={tmp_path / 'eval'}", "sampler={kind: ddim, num_steps: 10, eta: 0.0}",
                          "rollout.eval.num_episodes=2", "rollout.eval.num_envs=2", "rollout.eval.num_videos=0"])
    summary = eval_command.run(config)
    assert summary["num_episodes"] == 2 and summary["success_rate"] >= 0.5  # measured: 100% over 150 episodes (README)
