"""`genrl eval CONFIG` (configs/eval/): sample a model and score it, then write the figures to
metrics.jsonl and summary.json in `output_dir`.

- Images (`rollout.kind: prompts`): `rollout.eval_samples` prompts, sampled with `sampler`, scored
  with `rollout.reward` and each of `rollout.metric_rewards`; a grid of the first 64 in samples/eval.png.
- A policy (`rollout.kind: env`): `rollout.eval.num_episodes` seeded episodes in `rollout.env`, with
  `rollout.eval.sampler` (or `sampler` when unset); the first episodes as videos in samples/.
  With a `guidance:` section (ITPS) the sampling is steered toward each episode's sketch, and the
  summary adds alignment and wall contacts (per-episode records in episodes.json, a picture of the
  first rollouts in samples/steered_rollouts.png).
- A discrete model (`rollout.kind: tokens`): samples of every class, optionally guided (`guidance.kind:
  discrete`, D-CFG or D-CBG), the class hit rate read by `rollout.reader_path`, and the samples in
  samples/eval.png (token grids) or samples/eval.txt (sequences).
- Spatial control (`rollout.kind: spatial_control`): a frozen prompt model steered by a UFC adapter
  (`guidance.kind: ufc`, `adapter_path`; none: the base model alone) toward conditions of one type; the
  IoU between requested and rebuilt conditions, and samples/control.png (conditions above samples).
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
    evaluate = {"env": evaluate_policy_model, "tokens": evaluate_discrete_model,
                "spatial_control": evaluate_spatial_control}.get(config.rollout.kind, evaluate_image_model)
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


def evaluate_discrete_model(config: EvalConfig) -> dict:
    import torch

    from genrl.discrete.data import token_picture
    from genrl.discrete.model import DiscreteModel
    from genrl.discrete.sampling import DiscreteGuidance, check_guidance, classify, sample_tokens

    rollout, spec = config.rollout, config.guidance
    model = DiscreteModel.from_pretrained(config.model.path)
    reader = DiscreteModel.from_pretrained(rollout.reader_path) if rollout.reader_path else None
    guidance = None
    if spec is not None:
        classifier = DiscreteModel.from_pretrained(spec.classifier_path) if spec.classifier_path else None
        guidance = DiscreteGuidance(spec.method, spec.gamma, classifier, spec.first_order)
    check_guidance(model, guidance)  # a classifier for other classes fails before output_dir is made
    if reader is not None and (reader.kind != "classifier" or reader.noise is not None or reader.num_classes != model.num_classes):
        raise ConfigError(f"rollout.reader_path {rollout.reader_path} is not a clean token classifier of the model's "
                          f"{model.num_classes} classes")
    output_dir = prepare_output_dir(config)
    labels = torch.arange(model.num_classes).repeat_interleave(rollout.samples_per_class)
    tokens = sample_tokens(model, labels, rollout.num_steps, torch.Generator().manual_seed(config.seed), guidance)
    summary = {"num_samples": len(labels), "num_steps": rollout.num_steps}
    if reader is not None:
        hits = (classify(reader, tokens) == labels).float()
        summary.update(class_hit=float(hits.mean()), class_hit_stderr=float(hits.std() / len(hits) ** 0.5))
    (output_dir / "samples").mkdir(parents=True, exist_ok=True)
    if model.domain.get("domain") == "token_shapes":
        grid = model.domain["grid"]
        pictures = token_picture(tokens, grid).reshape(model.num_classes, rollout.samples_per_class, grid, grid, 3)
        from PIL import Image

        rows = np.concatenate(np.concatenate(pictures[:, :8], axis=2), axis=0)  # one row per class, 8 samples each
        Image.fromarray(rows).resize((rows.shape[1] * 8, rows.shape[0] * 8), Image.NEAREST).save(output_dir / "samples" / "eval.png")
    else:
        lines = [f"class {int(c)}: " + " ".join(map(str, row.tolist())) for c, row in zip(labels, tokens)]
        (output_dir / "samples" / "eval.txt").write_text("\n".join(lines) + "\n")
    return summary


def evaluate_spatial_control(config: EvalConfig) -> dict:
    from genrl.evaluation.spatial_control import evaluate_control
    from genrl.guidance.ufc_training import load_adapter

    rollout = config.rollout
    model = load_model(config.model.path).eval().requires_grad_(False)
    adapter = None
    if config.guidance is not None and config.guidance.adapter_path:
        adapter, _ = load_adapter(config.guidance.adapter_path, model)
        if rollout.task not in adapter.task_bias:
            raise ConfigError(f"the adapter at {config.guidance.adapter_path} has no task {rollout.task!r} "
                              f"(it knows {', '.join(adapter.task_bias)}): few-shot train it first")
    build_sampler(config.sampler, model)
    output_dir = prepare_output_dir(config)
    return evaluate_control(model, adapter, rollout.task, config.sampler, rollout.num_conditions, rollout.shots, rollout.pool_size,
                            rollout.pool_seed, config.seed, output_dir)
