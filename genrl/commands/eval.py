"""`genrl eval CONFIG` (configs/eval/): sample a model and score it, then write the figures to
metrics.jsonl and summary.json in `output_dir`.

- Images (`rollout.kind: prompts`): `rollout.eval_samples` prompts, sampled with `sampler`, scored
  with `rollout.reward` and each of `rollout.metric_rewards`; a grid of the first 64 in samples/eval.png.
- A policy (`rollout.kind: env`): `rollout.eval.num_episodes` seeded episodes in `rollout.env`, with
  `rollout.eval.sampler` (or `sampler` when unset); the first episodes as videos in samples/.
  With a `guidance:` section (ITPS) the sampling is steered toward each episode's sketch, and the
  summary adds alignment and wall contacts (per-episode records in episodes.json, a picture of the
  first rollouts in samples/steered_rollouts.png).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from accelerate import PartialState

from genrl.config import EvalConfig
from genrl.errors import ConfigError
from genrl.evaluation.episodes import evaluate_policy
from genrl.evaluation.steering import evaluate_steered_policy
from genrl.evaluation.images import make_prompts, sample_images, score_images
from genrl.models.loading import load_model
from genrl.policies.diffusion.modeling_diffusion import MODEL_INDEX, DiffusionPolicy
from genrl.run_dir import MetricsLog, prepare_output_dir, save_grid
from genrl.samplers import build_sampler
from rewards import check_reward_config, get_reward


def run(config: EvalConfig) -> dict:
    evaluate = evaluate_policy_model if config.rollout.kind == "env" else evaluate_image_model
    summary = {"model_path": config.model.path, **evaluate(config)}
    output_dir = Path(config.output_dir)
    MetricsLog(output_dir / "metrics.jsonl").write({"step": 0, **summary})
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def evaluate_image_model(config: EvalConfig) -> dict:
    rollout = config.rollout
    check_reward_config(rollout.reward)  # unknown rewards fail before the model is loaded
    for name in rollout.metric_rewards:
        get_reward(name)
    if _class_name(config.model.path) == "DiffusionPolicy":
        raise ConfigError(f"model.path {config.model.path} is a policy: evaluate it with rollout.kind env "
                          "(configs/eval/policy_<task>.yaml)")
    model = load_model(config.model.path, resolution=config.model.resolution, decode_chunk_size=config.model.decode_chunk_size)
    model = model.to(PartialState().device).eval()
    build_sampler(config.sampler, model)  # a sampler that does not fit the model fails before output_dir is made
    output_dir = prepare_output_dir(config)
    prompts = make_prompts(rollout.prompts, np.random.default_rng(config.seed), rollout.eval_samples)
    images = sample_images(model, prompts, config.sampler, seed=config.seed, batch_size=config.batch_size, progress=True)
    save_grid(images[:64], output_dir / "samples" / "eval.png", nrow=8)
    return {"num_samples": len(prompts), **score_images(images, prompts, rollout.metric_rewards, rollout.reward)}


def _class_name(path: str) -> str | None:
    index = Path(path) / MODEL_INDEX
    try:
        return json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    except (json.JSONDecodeError, AttributeError):
        return None  # the loader names what is wrong with the directory


def evaluate_policy_model(config: EvalConfig) -> dict:
    rollout = config.rollout
    policy = DiffusionPolicy.from_pretrained(config.model.path).to(PartialState().device).eval()
    sampler = build_sampler(rollout.eval.sampler or config.sampler, policy)
    output_dir = prepare_output_dir(config)
    if config.guidance is not None:
        summary = evaluate_steered_policy(policy, rollout.env, rollout.eval, sampler, config.guidance, output_dir)
        (output_dir / "episodes.json").write_text(json.dumps(summary.pop("episodes"), indent=1))
        return summary
    return evaluate_policy(policy, rollout.env, rollout.eval, sampler, output_dir)
