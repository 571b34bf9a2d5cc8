"""One table, same budget: each new trainer on its natural task against DDPO with the same
number of reward queries, several seeds, on the shipped Shapes diffusion model (CPU).

    .venv/bin/python benchmarks/trainer_table.py --comparison pxpo --seeds 0 1 2 --epochs 12
    .venv/bin/python benchmarks/trainer_table.py --comparison b2diffurl ...
    .venv/bin/python benchmarks/trainer_table.py --comparison rebel ...
    .venv/bin/python benchmarks/trainer_table.py --comparison sft ...
    .venv/bin/python benchmarks/trainer_table.py --table      # rebuild the markdown table from results

Each run is a real `genrl train` in its own process (so peak memory is per run); finished runs
are skipped, so the script can be re-run after an interruption. Each run writes a new directory
runs/benchmarks/<comparison>_<arm>_seed<S>_<date-time>/: an interrupted one is kept, not deleted. Per-run results go to
benchmarks/results/trainers/, the table to benchmarks/results/trainer_table.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "trainers"
RUNS = ROOT / "runs" / "benchmarks"

# Per-epoch budget shared by both arms of a comparison (reward queries per epoch).
BUDGET = ["rollout.num_batches=1", "train_batch_size=16", "gradient_accumulation_steps=2", "checkpoint_every=100",
          "log_with=[]", "rollout.eval_samples=64", "rollout.eval_group_size=4"]

COMPARISONS = {
    # comparison: {arm: (recipe, overrides)}
    "pxpo": {
        "pxpo": ("configs/pxpo/shapes_pixel_alignment.yaml", ["rollout.batch_size=32"]),
        "ddpo": ("configs/pxpo/shapes_pixel_alignment.yaml", ["trainer=ddpo", "rollout.batch_size=32"]),
    },
    "b2diffurl": {
        "b2diffurl": ("configs/b2diffurl/shapes_sparse_alignment.yaml", ["rollout.batch_size=30", "train_batch_size=8"]),
        "ddpo": ("configs/b2diffurl/shapes_sparse_alignment.yaml",
                 ["b2diffurl.enabled=false", "rollout.batch_size=30", "train_batch_size=10", "gradient_accumulation_steps=3",
                  "ppo.timestep_fraction=0.5", "ppo.stat_min_count=16"]),
    },
    "rebel": {
        "rebel": ("configs/rebel/shapes_compressibility.yaml", ["rollout.batch_size=32"]),
        "ddpo": ("configs/ddpo/shapes_compressibility.yaml", ["rollout.batch_size=32", "rollout.eval_group_size=4"]),
    },
    "sft": {
        "sft_pg": ("configs/sft/shapes_10step.yaml", ["rollout.batch_size=32", "sft_pg.critic_batch_size=32"]),
    },
}


# The same comparison at a 4x larger budget (run with --epochs 40): 300 queries of a reward that
# is 1 for ~5% of the base model's samples give each arm only ~15 successes to learn from.
COMPARISONS["b2diffurl_long"] = COMPARISONS["b2diffurl"]


def run_arm(comparison: str, arm: str, seed: int, epochs: int) -> dict:
    result_path = RESULTS / f"{comparison}_{arm}_seed{seed}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    recipe, overrides = COMPARISONS[comparison][arm]
    # A new directory per attempt: an interrupted run's directory is kept, never deleted.
    output_dir = RUNS / f"{comparison}_{arm}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    command = [str(ROOT / ".venv" / "bin" / "genrl"), "train", recipe, f"output_dir={output_dir}", f"seed={seed}",
               f"num_epochs={epochs}", *BUDGET, *overrides]
    print("$", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.perf_counter() - started
    metrics = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    result = {
        "comparison": comparison, "arm": arm, "seed": seed, "epochs": epochs, "command": " ".join(command[1:]),
        "wall_seconds": wall, "metrics": metrics,
        "summary": json.loads((output_dir / "summary.json").read_text()),
    }
    if comparison == "sft":
        result["distance"] = sft_distances(output_dir, seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1))
    return result


def _shapes_samples(model_path: str, sampler_overrides: dict, count: int, seed: int):
    import numpy as np

    from genrl.config import PromptConfig, SamplerConfig
    from genrl.evaluation.images import make_prompts, sample_images
    from genrl.models.loading import load_model

    model = load_model(model_path)
    prompts = make_prompts(PromptConfig(num_objects=(1, 3)), np.random.default_rng([seed, 31337]), count)
    return sample_images(model, prompts, SamplerConfig(**sampler_overrides), seed=seed + 1000, batch_size=64, progress=True)


def _real_images(count: int):
    import numpy as np

    from genrl.shapes import generate_batch

    return generate_batch(np.random.default_rng(2024), count, (1, 3), 32)[0]


SFT_EVAL_SAMPLES = 512


def sft_distances(output_dir: Path, seed: int) -> dict:
    """Frechet distance (Shapes feature net) and sliced Wasserstein to 512 real images, of the
    10-step sampler before and after fine-tuning (the same prompts and seeds)."""
    from genrl.metrics import load_shapes_features, shapes_data_distance

    features = load_shapes_features()
    real = _real_images(SFT_EVAL_SAMPLES)
    sampler = {"kind": "ddim", "num_steps": 10, "eta": 1.0}
    distances = {}
    for tag, path in [("before", "models/shapes-diffusion"), ("after", str(output_dir / "model"))]:
        images = _shapes_samples(path, sampler, SFT_EVAL_SAMPLES, seed)
        distances[f"fd_10step_{tag}"] = shapes_data_distance(images, real, features, "frechet")
        distances[f"swd_10step_{tag}"] = shapes_data_distance(images, real, features, "sliced_wasserstein")
    return distances


def full_step_reference(seed: int) -> dict:
    """The base model's 100-step DDPM sampler, measured the same way."""
    path = RESULTS / f"sft_base100_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    from genrl.metrics import load_shapes_features, shapes_data_distance

    started = time.perf_counter()
    images = _shapes_samples("models/shapes-diffusion", {"kind": "ddpm", "num_steps": 100}, SFT_EVAL_SAMPLES, seed)
    real = _real_images(SFT_EVAL_SAMPLES)
    features = load_shapes_features()
    result = {"fd_100step": shapes_data_distance(images, real, features, "frechet"),
              "swd_100step": shapes_data_distance(images, real, features, "sliced_wasserstein"),
              "seconds": time.perf_counter() - started, "seed": seed}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


# ------------------------------------------------------------------ the table
def _mean_spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _smoothed(metrics: list[dict], key: str = "reward_mean") -> list[float]:
    """Two-epoch moving average of a per-epoch training metric (one epoch is noisy)."""
    values = [m[key] for m in metrics]
    return [sum(values[max(0, i - 1) : i + 1]) / len(values[max(0, i - 1) : i + 1]) for i in range(len(values))]


def _load(comparison: str, arm: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{comparison}_{arm}_seed*.json"))]


def _epoch_seconds(result: dict) -> float:
    return statistics.mean(m["time_sampling"] + m["time_reward"] + m["time_training"] + m.get("time_critic", 0.0)
                           for m in result["metrics"])


def build_table() -> str:
    lines = ["# Trainer table (Shapes diffusion model, CPU, same reward queries per arm)", "",
             "Made by `benchmarks/trainer_table.py`; mean ± standard deviation over seeds (n = seeds).", ""]
    # PXPO vs DDPO
    pxpo, ddpo = _load("pxpo", "pxpo"), _load("pxpo", "ddpo")
    if pxpo and ddpo:
        lines += ["## PXPO vs DDPO on the per-pixel reward `shapes_pixel_alignment`", "",
                  "| seed | DDPO final reward | DDPO queries | PXPO queries to reach it | ratio | PXPO final reward |",
                  "|---|---|---|---|---|---|"]
        ratios = []
        for d, p in zip(ddpo, pxpo):
            target = _smoothed(d["metrics"])[-1]
            curve = _smoothed(p["metrics"])
            total = d["metrics"][-1]["samples_seen"]
            reached = next((m["samples_seen"] for m, v in zip(p["metrics"], curve) if v >= target), None)
            ratio = reached / total if reached else float("nan")
            if reached:
                ratios.append(ratio)
            lines.append(f"| {d['seed']} | {target:.4f} | {total} | {reached if reached else 'not reached'} | "
                         f"{ratio:.2f} | {curve[-1]:.4f} |")
        lines += ["", f"Mean ratio over seeds that reached it: {_mean_spread(ratios)} "
                  f"({len(ratios)}/{len(ddpo)} seeds reached DDPO's final reward). Goal: <= 0.67.",
                  "Final reward = two-epoch moving average of the training reward at the last epoch.", ""]
        lines += ["| arm | eval reward before | eval reward after | prompt match after | diversity after |", "|---|---|---|---|---|"]
        for name, results in [("ddpo", ddpo), ("pxpo", pxpo)]:
            s = [r["summary"] for r in results]
            lines.append(f"| {name} | {_mean_spread([x['shapes_pixel_alignment_before'] for x in s])} | "
                         f"{_mean_spread([x['shapes_pixel_alignment_after'] for x in s])} | "
                         f"{_mean_spread([x['shapes_alignment/prompt_match_after'] for x in s])} | "
                         f"{_mean_spread([x['diversity_after'] for x in s])} |")
        lines.append("")
    # B^2 vs DDPO, at the default and the larger budget
    for comparison in ("b2diffurl", "b2diffurl_long"):
        b2, ddpo = _load(comparison, "b2diffurl"), _load(comparison, "ddpo")
        if not (b2 and ddpo):
            continue
        base_diversity = statistics.mean(r["summary"]["diversity_before"] for r in b2 + ddpo)
        queries = b2[0]["metrics"][-1]["samples_seen"]
        lines += [f"## B^2-DiffuRL vs DDPO on the sparse reward `shapes_prompt_match` (2-3 object prompts), "
                  f"{b2[0]['epochs']} epochs, {queries} reward queries per run", "",
                  "| arm | prompt match before | prompt match after | diversity after | diversity / base |", "|---|---|---|---|---|"]
        for name, results in [("ddpo", ddpo), ("b2diffurl", b2)]:
            s = [r["summary"] for r in results]
            lines.append(f"| {name} (n={len(s)}) | {_mean_spread([x['shapes_prompt_match_before'] for x in s])} | "
                         f"{_mean_spread([x['shapes_prompt_match_after'] for x in s])} | "
                         f"{_mean_spread([x['diversity_after'] for x in s])} | "
                         f"{_mean_spread([x['diversity_after'] / base_diversity for x in s])} |")
        lines += ["", f"Base model diversity (mean pixel RMS distance between samples of one prompt): {base_diversity:.3f}. "
                  "Goal: B^2 alignment above DDPO's with diversity >= 90% of the base model's.", ""]
    # REBEL vs DDPO
    rebel, ddpo = _load("rebel", "rebel"), _load("rebel", "ddpo")
    if rebel and ddpo:
        lines += ["## REBEL vs DDPO on `jpeg_compressibility`", "",
                  "| arm | JPEG kB before | JPEG kB after | prompt match after | s / epoch | peak memory MB | run wall s |",
                  "|---|---|---|---|---|---|---|"]
        for name, results in [("ddpo", ddpo), ("rebel", rebel)]:
            s = [r["summary"] for r in results]
            lines.append(f"| {name} (n={len(s)}) | {_mean_spread([x['jpeg_compressibility/jpeg_kb_before'] for x in s])} | "
                         f"{_mean_spread([x['jpeg_compressibility/jpeg_kb_after'] for x in s])} | "
                         f"{_mean_spread([x['shapes_alignment/prompt_match_after'] for x in s])} | "
                         f"{_mean_spread([_epoch_seconds(r) for r in results])} | "
                         f"{_mean_spread([max(m['memory_peak_mb'] for m in r['metrics']) for r in results])} | "
                         f"{_mean_spread([r['wall_seconds'] for r in results])} |")
        lines.append("")
    # SFT-PG
    sft = _load("sft", "sft_pg")
    references = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("sft_base100_seed*.json"))]
    if sft:
        d = [r["distance"] for r in sft]
        lines += ["## SFT-PG: distance to data of the 10-step sampler (512 samples vs 512 real Shapes images)", "",
                  "| sampler | Frechet distance (feature net) | sliced Wasserstein |", "|---|---|---|",
                  f"| base, 10 DDIM steps (eta 1) | {_mean_spread([x['fd_10step_before'] for x in d])} | "
                  f"{_mean_spread([x['swd_10step_before'] for x in d])} |",
                  f"| SFT-PG fine-tuned, 10 steps (n={len(d)}) | {_mean_spread([x['fd_10step_after'] for x in d])} | "
                  f"{_mean_spread([x['swd_10step_after'] for x in d])} |"]
        if references:
            lines.append(f"| base, 100 DDPM steps (n={len(references)}) | {_mean_spread([x['fd_100step'] for x in references])} | "
                         f"{_mean_spread([x['swd_100step'] for x in references])} |")
        lines += ["", "Goal: fine-tuned 10-step <= full-step.", ""]
    lines += ["## Commands", ""]
    for path in sorted(RESULTS.glob("*_seed0.json")):
        result = json.loads(path.read_text())
        if "command" in result:
            lines.append(f"- `genrl {result['command'].replace(str(ROOT) + '/', '')}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comparison", choices=list(COMPARISONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--table", action="store_true", help="only rebuild the table from saved results")
    args = parser.parse_args()
    if args.comparison and not args.table:
        for seed in args.seeds:
            for arm in COMPARISONS[args.comparison]:
                run_arm(args.comparison, arm, seed, args.epochs)
            if args.comparison == "sft":
                if seed == args.seeds[0]:  # 100-step sampling is costly on CPU: one reference seed
                    full_step_reference(seed)
    table = build_table()
    (ROOT / "benchmarks" / "results" / "trainer_table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
