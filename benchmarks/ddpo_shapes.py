"""Benchmark: DDPO on a shipped Shapes model (diffusion or flow) for JPEG compressibility.

Claims measured (issue "Foundation", benchmarks):
  * the mean JPEG size of samples falls by >= 25% within 15 minutes on 2 CPU cores,
  * prompt alignment (the reader's exact prompt match) stays within 10 points of the base model,
  * time breakdown of an epoch (sampling / reward / training) and the share of time spent
    outside the network's own forward/backward passes.

Run:  .venv/bin/python benchmarks/ddpo_shapes.py [--config C] [--epochs N] [--seed S]
      (--config configs/ddpo/shapes_flow_compressibility.yaml for the flow model)
Writes benchmarks/results/<config name>_seed<S>.{json,md} and the run itself under a new
runs/bench_<config name>_seed<S>_<date-time>/ (earlier runs are kept).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from genrl.config import load_config
from genrl.models.loading import load_model
from genrl.run_dir import read_metrics
from genrl.trainers import train

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def model_only_seconds(config) -> float:
    """Time the network's own passes that one epoch makes, with nothing else around them:
    forward at the sampling batch for every sampling step, forward+backward at the training
    batch for every trained step. Same LoRA-wrapped network, same shapes."""
    from genrl.trainers.online_rl import _add_lora
    from genrl.samplers import build_sampler

    model = load_model(ROOT / config.model.path)
    model.requires_grad_(False)
    _add_lora(model.network, config)
    sampler = build_sampler(config.sampler, model)
    trained = max(1, round(config.ppo.timestep_fraction * len(sampler.stochastic_steps())))
    condition = model.encode_prompts(["a red circle at the top"] * config.rollout.batch_size)
    x = torch.randn(config.rollout.batch_size, *model.sample_shape)
    t = torch.full((config.rollout.batch_size,), 500)
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(config.rollout.num_batches * sampler.num_steps):
            model.network(x, t, **condition)
    batch = config.train_batch_size
    minibatches = config.rollout.num_batches * config.rollout.batch_size // batch
    condition = {k: v[:batch] for k, v in condition.items()}
    for _ in range(minibatches * trained):
        model.network(x[:batch], t[:batch], **condition).sample.mean().backward()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/ddpo/shapes_compressibility.yaml")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-samples", type=int, default=128)
    parser.add_argument("--tag", default="", help="suffix for the result files, e.g. for a variant")
    parser.add_argument("overrides", nargs="*", help="extra dotted config overrides, e.g. optimizer.learning_rate=1e-3")
    args = parser.parse_args()
    torch.set_num_threads(2)
    name = Path(args.config).stem + (f"_{args.tag}" if args.tag else "")
    out = ROOT / f"runs/bench_{name}_seed{args.seed}_{time.strftime('%Y%m%d-%H%M%S')}"  # new: earlier runs are kept
    config = load_config("train", ROOT / args.config, [
        f"output_dir={out}", f"num_epochs={args.epochs}", f"seed={args.seed}", f"rollout.eval_samples={args.eval_samples}",
        *args.overrides,
    ])
    config.model.path = str(ROOT / config.model.path)
    wall, cpu = time.perf_counter(), cpu_seconds()
    summary = train(config)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    records = read_metrics(out / "metrics.jsonl")

    epoch_seconds = sum(r["time_sampling"] + r["time_reward"] + r["time_training"] for r in records) / len(records)
    breakdown = {k: sum(r[k] for r in records) / len(records) for k in ("time_sampling", "time_reward", "time_training")}
    model_seconds = model_only_seconds(config)
    jpeg_before = summary["jpeg_compressibility/jpeg_kb_before"]
    jpeg_after = summary["jpeg_compressibility/jpeg_kb_after"]
    first_25 = next((r for r in records if r["jpeg_compressibility/jpeg_kb"] <= 0.75 * jpeg_before), None)
    result = {
        "command": f".venv/bin/python benchmarks/ddpo_shapes.py --config {args.config} "
                   f"--epochs {args.epochs} --seed {args.seed}" + (f" --tag {args.tag} " + " ".join(args.overrides) if args.tag else ""),
        "epochs": args.epochs,
        "samples_seen": records[-1]["samples_seen"],
        "wall_seconds": wall,
        "process_cpu_seconds": cpu,
        "jpeg_kb_before": jpeg_before,
        "jpeg_kb_after": jpeg_after,
        "jpeg_reduction": 1 - jpeg_after / jpeg_before,
        "prompt_match_before": summary["shapes_alignment/prompt_match_before"],
        "prompt_match_after": summary["shapes_alignment/prompt_match_after"],
        "object_recall_before": summary["shapes_alignment/object_recall_before"],
        "object_recall_after": summary["shapes_alignment/object_recall_after"],
        "first_epoch_with_25pct_smaller_training_samples": first_25 and first_25["epoch"],
        "seconds_to_that_epoch": first_25 and sum(
            r["time_sampling"] + r["time_reward"] + r["time_training"] for r in records[: first_25["epoch"]]),
        "epoch_seconds_mean": epoch_seconds,
        **{f"{k}_mean": v for k, v in breakdown.items()},
        "model_forward_backward_seconds_per_epoch": model_seconds,
        "share_outside_model_passes": 1 - model_seconds / epoch_seconds,
        "curve": [{k: r[k] for k in ("epoch", "samples_seen", "reward_mean", "jpeg_compressibility/jpeg_kb",
                                     "shapes_alignment/prompt_match")} for r in records],
        "grid": str((out / "samples" / "before_after.png").relative_to(ROOT)),
    }
    stem = ROOT / f"benchmarks/results/{name}_seed{args.seed}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"# DDPO, {name} (seed {args.seed})", "", f"Command: `{result['command']}`", ""]
    for key, value in result.items():
        if key not in ("curve", "command"):
            lines.append(f"- {key}: {value:.4f}" if isinstance(value, float) else f"- {key}: {value}")
    lines += ["", "| epoch | samples_seen | reward_mean | jpeg_kb | prompt_match |", "|---|---|---|---|---|"]
    for r in result["curve"]:
        lines.append(f"| {r['epoch']} | {r['samples_seen']} | {r['reward_mean']:.3f} | "
                     f"{r['jpeg_compressibility/jpeg_kb']:.3f} | {r['shapes_alignment/prompt_match']:.3f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:24]))


if __name__ == "__main__":
    main()
