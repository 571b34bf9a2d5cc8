"""Does RL make the shipped Shapes models better? Before/after evaluation of image trainers, several seeds.

    .venv/bin/python benchmarks/image_rl.py --run ddpo_jpeg --seeds 0 1 2
    .venv/bin/python benchmarks/image_rl.py --table        # rebuild the table and plot from saved results

Each run is a real `genrl train` in its own process. Its before/after figures are the run's own
evaluation: `rollout.eval_samples` fixed prompts (held out: they are drawn from the evaluation
seed, not the training stream) with fixed noise, so every sample pairs with itself across
before and after; the table gives each figure's standard error and the paired standard error
of the gain (per-sample scores from samples/{before,after}_scores.pt). A gain counts when it
exceeds 2 paired standard errors. `opt steps`, `approx_kl` and `clipfrac` show that updates
happened; CPU minutes are the training process's user + system time.

Finished runs are skipped; each attempt writes a new directory runs/benchmarks/image_rl/
<name>_seed<S>_<date-time>/ (an interrupted one is kept). Per-run results:
benchmarks/results/image_rl/, the table benchmarks/results/image_rl.md, the curves
benchmarks/results/image_rl.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from curves import plot_mean_and_band
from runner import train_and_measure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "image_rl"
RUNS_DIR = ROOT / "runs" / "benchmarks" / "image_rl"
JPEG_FLOOR_KB = 0.844  # benchmarks/jpeg_floor.py: one shape on a plain background, the content-preserving floor

LORA = ["lora={enabled: true, rank: 4, alpha: 4.0, target_modules: [to_q, to_k, to_v, to_out.0, conv1, conv2]}"]

RUNS = {
    # name: (recipe, overrides, the reward figure, the alignment figure)
    "ddpo_jpeg": ("configs/ddpo/shapes_compressibility_fast.yaml", [], "jpeg_compressibility/jpeg_kb",
                  "shapes_alignment/prompt_match"),
    # tried while tuning ddpo_jpeg (seed 0): LoRA rank 4 at two learning rates, and the whole UNet
    # with larger minibatches (160 items) and each epoch's samples used twice
    "ddpo_jpeg_lora_lr5e-4": ("configs/ddpo/shapes_compressibility_fast.yaml", LORA + ["optimizer.learning_rate=5e-4"],
                              "jpeg_compressibility/jpeg_kb", "shapes_alignment/prompt_match"),
    "ddpo_jpeg_lora_lr1e-3": ("configs/ddpo/shapes_compressibility_fast.yaml", LORA + ["optimizer.learning_rate=1e-3"],
                              "jpeg_compressibility/jpeg_kb", "shapes_alignment/prompt_match"),
    "ddpo_jpeg_full_reuse": ("configs/ddpo/shapes_compressibility_fast.yaml", ["gradient_accumulation_steps=10", "ppo.update_epochs=2"],
                             "jpeg_compressibility/jpeg_kb", "shapes_alignment/prompt_match"),
    # the same recipe for twice the epochs (about the 15 CPU-minute budget)
    "ddpo_jpeg_24_epochs": ("configs/ddpo/shapes_compressibility_fast.yaml", ["num_epochs=24", "checkpoint_every=12"],
                            "jpeg_compressibility/jpeg_kb", "shapes_alignment/prompt_match"),
    # REBEL with LoRA rank 4 at lr 5e-4: compare with ddpo_jpeg_lora_lr5e-4 (same adapters, lr, queries, steps)
    "rebel_jpeg": ("configs/rebel/shapes_compressibility_fast.yaml", [], "jpeg_compressibility/jpeg_kb",
                   "shapes_alignment/prompt_match"),
    # tried: the regression target scaled down 100x (eta_inverse 100: DDPO-sized log-ratio gaps)
    "rebel_jpeg_eta100": ("configs/rebel/shapes_compressibility_fast.yaml", ["rebel.eta_inverse=100"],
                          "jpeg_compressibility/jpeg_kb", "shapes_alignment/prompt_match"),
    # tried: REBEL with DDPO's recipe settings (the whole UNet at lr 1e-4)
    "rebel_jpeg_full": ("configs/rebel/shapes_compressibility_fast.yaml",
                        ["lora.enabled=false", "optimizer.learning_rate=1e-4"], "jpeg_compressibility/jpeg_kb",
                        "shapes_alignment/prompt_match"),
}


def run(name: str, seed: int, extra: list[str]) -> dict:
    path = RESULTS / f"{name}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    recipe, overrides, _, _ = RUNS[name]
    output_dir = RUNS_DIR / f"{name}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    result = {"name": name, "seed": seed, **train_and_measure(recipe, output_dir, seed, overrides + extra),
              "paired": paired_gains(output_dir)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def paired_gains(output_dir: Path) -> dict:
    """Mean and standard error of (after - before) per score, sample by sample."""
    import torch

    first = torch.load(output_dir / "samples" / "before_scores.pt")
    last = torch.load(output_dir / "samples" / "after_scores.pt")
    gains = {}
    for key in first:
        difference = (last[key] - first[key]).double()
        gains[key] = {"mean": float(difference.mean()), "stderr": float(difference.std() / len(difference) ** 0.5)}
    return gains


def _mean_spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _load(name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{name}_seed*.json"))]


def _diagnostic(metrics: list[list[dict]], key: str, spec: str) -> str:
    """Mean over runs of a per-epoch diagnostic's run mean; '-' for trainers that do not log it (REBEL has no clip)."""
    runs = [[m[key] for m in run if key in m] for run in metrics]
    return format(statistics.mean(statistics.mean(values) for values in runs), spec) if all(runs) else "-"


def build_table() -> str:
    lines = ["# RL on the shipped Shapes models: before/after on held-out evaluation prompts (CPU)", "",
             "Made by `benchmarks/image_rl.py`; mean ± std over seeds. `s.e.`: the evaluation's standard error "
             "(64 samples); `paired s.e.`: of the per-sample gain (same prompts and noise before and after). "
             f"`% of gap`: share of the distance from the base model to the content-preserving JPEG floor "
             f"({JPEG_FLOOR_KB} kB, `benchmarks/jpeg_floor.py`) that the run closed.", "",
             "| run | seeds | reward before (s.e.) | after | gain (paired s.e.) | gain / paired s.e. | % of gap | "
             "prompt match before | after | opt steps | approx_kl | clipfrac | reward queries | CPU min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (_, _, score, alignment) in RUNS.items():
        results = _load(name)
        if not results:
            continue
        s = [r["summary"] for r in results]
        before, after = [x[f"{score}_before"] for x in s], [x[f"{score}_after"] for x in s]
        stderr = statistics.mean(x[f"{score}_stderr_before"] for x in s)
        gains = [r["paired"][score]["mean"] for r in results]
        paired = statistics.mean(r["paired"][score]["stderr"] for r in results)
        ratio = [r["paired"][score]["mean"] / r["paired"][score]["stderr"] for r in results]
        gap = [100 * (b - a) / (b - JPEG_FLOOR_KB) for b, a in zip(before, after)] if "jpeg" in score else None
        metrics = [r["metrics"] for r in results]
        lines.append(
            f"| {name} | {len(s)} | {_mean_spread(before)} ({stderr:.3f}) | {_mean_spread(after)} | "
            f"{_mean_spread(gains)} ({paired:.3f}) | {_mean_spread(ratio, 1)} | {_mean_spread(gap, 0) if gap else '-'} | "
            f"{_mean_spread([x[f'{alignment}_before'] for x in s])} | {_mean_spread([x[f'{alignment}_after'] for x in s])} | "
            f"{_mean_spread([sum(m['optimizer_steps'] for m in run) for run in metrics], 0)} | "
            f"{_diagnostic(metrics, 'approx_kl', '.1e')} | {_diagnostic(metrics, 'clipfrac', '.3f')} | "
            f"{_mean_spread([run[-1]['samples_seen'] for run in metrics], 0)} | "
            f"{_mean_spread([r['cpu_minutes'] for r in results], 1)} |")
    lines += ["", "Gain = after - before (JPEG kB: negative is better). Curves: `image_rl.png`.", "",
              "## Commands (`seed=S` for S in the seeds; each run's own command line is in its result file)", ""]
    for name, (recipe, overrides, _, _) in RUNS.items():
        if _load(name):
            command = " ".join(["genrl train", recipe, "seed=S", *[f"'{o}'" if " " in o else o for o in overrides]])
            lines.append(f"- {name}: `{command}`")
    return "\n".join(lines) + "\n"


def plot() -> Path | None:
    """Training JPEG size against reward queries: mean over seeds with its min-max band, one line per run."""
    series = {}
    for name, (_, _, score, _) in RUNS.items():
        results = _load(name)
        if results:
            length = min(len(r["metrics"]) for r in results)
            series[name] = ([m["samples_seen"] for m in results[0]["metrics"][:length]],
                            [[m[score] for m in r["metrics"][:length]] for r in results])
    return plot_mean_and_band(series, "reward queries", "training JPEG size (kB)",
                              ROOT / "benchmarks" / "results" / "image_rl.png",
                              reference=(JPEG_FLOOR_KB, "content-preserving floor"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", choices=list(RUNS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = parser.parse_args()
    if args.run and not args.table:
        for seed in args.seeds:
            run(args.run, seed, args.overrides)
    table = build_table()
    (ROOT / "benchmarks" / "results" / "image_rl.md").write_text(table)
    plot()
    print(table)


if __name__ == "__main__":
    sys.exit(main())
