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

import json
import statistics
import sys
import time
from pathlib import Path

from curves import plot_mean_and_band
from runner import benchmark_command_line, train_and_measure
from trainer_table import full_step_reference, sft_distances

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
    # PXPO vs DDPO on the per-pixel reward at equal queries and updates: the same recipe, trainer swapped
    # (evaluated every 2 epochs too, for the queries each needs to reach the other's final evaluation reward)
    "pxpo_pixel": ("configs/pxpo/shapes_pixel_alignment_fast.yaml", ["rollout.eval_every=2"], "shapes_pixel_alignment",
                   "shapes_alignment/prompt_match"),
    "ddpo_pixel": ("configs/pxpo/shapes_pixel_alignment_fast.yaml", ["trainer=ddpo", "rollout.eval_every=2"],
                   "shapes_pixel_alignment", "shapes_alignment/prompt_match"),
    # B^2-DiffuRL vs DDPO on the sparse prompt-match reward, two-object prompts: the same recipe, B^2 switched off
    "b2diffurl_two_objects": ("configs/b2diffurl/shapes_two_objects_fast.yaml", [], "shapes_prompt_match",
                              "shapes_alignment/object_recall"),
    "ddpo_two_objects": ("configs/b2diffurl/shapes_two_objects_fast.yaml", ["b2diffurl.enabled=false"],
                         "shapes_prompt_match", "shapes_alignment/object_recall"),
    # tried first (seed 0): the B^2 reference's clip range 0.1 with branching from step 14 of 20; both arms
    # lost prompt match (the clip does not bind at this learning rate; few children differ when branched late)
    "b2diffurl_two_objects_clip0.1": ("configs/b2diffurl/shapes_two_objects_fast.yaml",
                                      ["ppo.clip_range=0.1", "b2diffurl.split_step_start=14"],
                                      "shapes_prompt_match", "shapes_alignment/object_recall"),
    "ddpo_two_objects_clip0.1": ("configs/b2diffurl/shapes_two_objects_fast.yaml", ["b2diffurl.enabled=false", "ppo.clip_range=0.1"],
                                 "shapes_prompt_match", "shapes_alignment/object_recall"),
    # SFT-PG: the 10-step sampler's distance to data (Shapes feature-net Frechet distance, 512 samples)
    "sft_pg_10step": ("configs/sft/shapes_10step_fast.yaml", [], "fd_10step", "shapes_alignment/prompt_match"),
    # tried (seed 0): the whole UNet at learning rate 1e-4; SFT-PG's policy gradient is unclipped and
    # the run diverged (approx_kl 0.09 in epoch 1, >1 from epoch 2; object recall 0.39 -> 0.01)
    "sft_pg_10step_lr1e-4": ("configs/sft/shapes_10step_fast.yaml", ["optimizer.learning_rate=1e-4"], "fd_10step",
                             "shapes_alignment/prompt_match"),
    # the flow-matching Shapes model (Flow-GRPO's SDE sampler) with the ddpo_jpeg settings
    "ddpo_flow_jpeg": ("configs/ddpo/shapes_flow_compressibility_fast.yaml", [], "jpeg_compressibility/jpeg_kb",
                       "shapes_alignment/prompt_match"),
    # REBEL (eta_inverse 100, the setting that did not diverge on the diffusion model) on the flow model,
    # with ddpo_flow_jpeg's sampler
    "rebel_flow_jpeg_eta100": ("configs/rebel/shapes_compressibility_fast.yaml",
                               ["rebel.eta_inverse=100", "model.path=models/shapes-flow",
                                "sampler={kind: flow_sde, num_steps: 20, noise_level: 0.7, guidance_scale: 1.0}"],
                               "jpeg_compressibility/jpeg_kb", "shapes_alignment/prompt_match"),
}


def run(name: str, seed: int, extra: list[str]) -> dict:
    path = RESULTS / f"{name}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    recipe, overrides, _, _ = RUNS[name]
    output_dir = RUNS_DIR / f"{name}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    result = {"name": name, "seed": seed, **train_and_measure(recipe, output_dir, seed, overrides + extra),
              "paired": paired_gains(output_dir)}
    if RUNS[name][2] == "fd_10step":  # SFT-PG's figure is a distance to data, measured outside the run
        result["distances"] = sft_distances(output_dir, seed)
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


# Each reward figure: its section title, curve file, curve label and the training metric plotted.
FIGURES = {
    "jpeg_compressibility/jpeg_kb": ("JPEG compressibility (kB per image; lower is better)", "image_rl.png",
                                     "training JPEG size (kB)", "jpeg_compressibility/jpeg_kb"),
    "shapes_pixel_alignment": ("Per-pixel alignment reward (share of pixels with the prompt's colour at its place; higher is better)",
                               "image_rl_pixel.png", "training pixel-alignment reward", "shapes_pixel_alignment"),
    "shapes_prompt_match": ("Sparse prompt match on two-object prompts (1 when every object is found; higher is better)",
                            "image_rl_two_objects.png", "training prompt match", "reward_mean"),
    "fd_10step": ("SFT-PG: the 10-step sampler's distance to data", "image_rl_sft.png", "training critic reward", "reward_mean"),
}


def _row(name: str, score: str, alignment: str, results: list[dict]) -> str:
    s = [r["summary"] for r in results]
    before, after = [x[f"{score}_before"] for x in s], [x[f"{score}_after"] for x in s]
    stderr = statistics.mean(x[f"{score}_stderr_before"] for x in s)
    gains = [r["paired"][score]["mean"] for r in results]
    paired = statistics.mean(r["paired"][score]["stderr"] for r in results)
    ratio = [r["paired"][score]["mean"] / r["paired"][score]["stderr"] for r in results]
    gap = [100 * (b - a) / (b - JPEG_FLOOR_KB) for b, a in zip(before, after)] if "jpeg" in score else None
    metrics = [r["metrics"] for r in results]
    diversity = [[x.get(f"diversity_{tag}") for x in s] for tag in ("before", "after")]
    diversity = " | ".join(_mean_spread(d) if None not in d else "-" for d in diversity)
    return (f"| {name} | {len(s)} | {_mean_spread(before)} ({stderr:.3f}) | {_mean_spread(after)} | "
            f"{_mean_spread(gains)} ({paired:.3f}) | {_mean_spread(ratio, 1)} | {_mean_spread(gap, 0) if gap else '-'} | "
            f"{_mean_spread([x[f'{alignment}_before'] for x in s])} | {_mean_spread([x[f'{alignment}_after'] for x in s])} | "
            f"{diversity} | {_mean_spread([sum(m['optimizer_steps'] for m in run) for run in metrics], 0)} | "
            f"{_diagnostic(metrics, 'approx_kl', '.1e')} | {_diagnostic(metrics, 'clipfrac', '.3f')} | "
            f"{_mean_spread([run[-1]['samples_seen'] for run in metrics], 0)} | "
            f"{_mean_spread([r['cpu_minutes'] for r in results], 1)} |")


def _sft_rows(name: str, results: list[dict]) -> list[str]:
    """The Frechet distance (Shapes feature net, 512 samples against 512 real images) before and after,
    with the base model's 100-step DDPM sampler measured the same way."""
    distances = [r["distances"] for r in results]
    before = [d["fd_10step_before"] for d in distances]
    after = [d["fd_10step_after"] for d in distances]
    change = [100 * (a - b) / b for b, a in zip(before, after)]
    full = [full_step_reference(0)["fd_100step"]]  # the base model's own figure: one sample set (seed 0)
    metrics = [r["metrics"] for r in results]
    return ["", f"Frechet distance of {name} (feature net; 512 samples vs 512 real images; seeds {[r['seed'] for r in results]}):", "",
            "| sampler | Frechet distance | sliced Wasserstein |", "|---|---|---|",
            f"| base, 10 DDIM steps (eta 1) | {_mean_spread(before, 1)} | {_mean_spread([d['swd_10step_before'] for d in distances])} |",
            f"| SFT-PG fine-tuned, 10 steps | {_mean_spread(after, 1)} | {_mean_spread([d['swd_10step_after'] for d in distances])} |",
            f"| base, 100 DDPM steps (seed 0) | {_mean_spread(full, 1)} | - |", "",
            f"Change of the 10-step distance: {_mean_spread(change, 1)} % (goal: <= -10 %). Optimizer steps "
            f"{_mean_spread([sum(m['optimizer_steps'] for m in run) for run in metrics], 0)}, CPU min "
            f"{_mean_spread([r['cpu_minutes'] for r in results], 1)}."]


def eval_curve(result: dict, score: str) -> list[tuple[int, float]]:
    """(reward queries, evaluation figure) at every evaluation of a run: before, `rollout.eval_every`, after."""
    points = [(0, result["summary"][f"{score}_before"])]
    points += [(m["samples_seen"], m[f"eval_{score}"]) for m in result["metrics"] if f"eval_{score}" in m]
    return points + [(result["metrics"][-1]["samples_seen"], result["summary"][f"{score}_after"])]


def queries_to_reach(challenger: list[dict], reference: list[dict], score: str) -> list[str]:
    """Per seed: the share of the reference run's queries the challenger needed for its evaluation figure
    to reach the reference's final one (higher is better), or 'not reached'; and the ratio of the gains."""
    lines = []
    for mine in challenger:
        theirs = next((r for r in reference if r["seed"] == mine["seed"]), None)
        if theirs is None:
            continue
        target, total = theirs["summary"][f"{score}_after"], theirs["metrics"][-1]["samples_seen"]
        reached = next((q for q, value in eval_curve(mine, score) if value >= target), None)
        share = f"{reached / total:.2f} of its queries ({reached})" if reached is not None else "not reached"
        ratio = mine["paired"][score]["mean"] / theirs["paired"][score]["mean"]
        inside = [f"{r['summary'][f'{score}/inside_before']:.3f} -> {r['summary'][f'{score}/inside_after']:.3f}" for r in (mine, theirs)]
        lines.append(f"| {mine['seed']} | {target:.4f} | {share} | {ratio:.2f} | {inside[0]} | {inside[1]} |")
    return lines


def build_table() -> str:
    lines = ["# RL on the shipped Shapes models: before/after on held-out evaluation prompts (CPU)", "",
             "Made by `benchmarks/image_rl.py`; mean ± std over seeds. `s.e.`: the evaluation's standard error "
             "(64 samples; 128 for the two-object rows); `paired s.e.`: of the per-sample gain (same prompts and "
             "noise before and after). `% of gap`: share of the distance from the base model to the "
             f"content-preserving JPEG floor ({JPEG_FLOOR_KB} kB, `benchmarks/jpeg_floor.py`) that the run closed. "
             "`diversity`: mean pixel distance between samples of one prompt."]
    header = ["| run | seeds | reward before (s.e.) | after | gain (paired s.e.) | gain / paired s.e. | % of gap | "
              "alignment before | after | diversity before | after | opt steps | approx_kl | clipfrac | reward queries | CPU min |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for score, (title, picture, _, _) in FIGURES.items():
        runs = {name: spec for name, spec in RUNS.items() if spec[2] == score and _load(name)}
        if not runs:
            continue
        alignment = next(iter(runs.values()))[3]
        lines += ["", f"## {title}", "", f"Alignment column: `{alignment}`. Curves: `{picture}`.", "", *header]
        if score == "fd_10step":  # the run's own evaluation has no distance; its row shows the alignment metric
            lines[-2] = lines[-2].replace("reward before", "prompt match before")
            for name, (_, _, _, alignment) in runs.items():
                lines.append(_row(name, alignment, alignment, _load(name)))
            for name in runs:
                lines += _sft_rows(name, _load(name))
            continue
        for name, (_, _, _, alignment) in runs.items():
            lines.append(_row(name, score, alignment, _load(name)))
        if score == "shapes_pixel_alignment" and _load("pxpo_pixel") and _load("ddpo_pixel"):
            lines += ["", "PXPO against DDPO on evaluation (the same 64 prompts and noise, evaluated every 2 epochs): the "
                      "queries PXPO needed to reach DDPO's final evaluation reward, and PXPO's gain over DDPO's "
                      "(goals: <= 0.67 and >= 1.5). `shape pixels`: the reward on the pixels inside the prompt's "
                      "shape only (most pixels are background, so the mean can rise while the shape fades).", "",
                      "| seed | DDPO final | PXPO reached it after | PXPO gain / DDPO gain | PXPO shape pixels | DDPO shape pixels |",
                      "|---|---|---|---|---|---|",
                      *queries_to_reach(_load("pxpo_pixel"), _load("ddpo_pixel"), score)]
    lines += ["", "Gain = after - before (JPEG kB: negative is better).", "",
              "## Commands (`seed=S` for S in the seeds; each run's own command line is in its result file)", ""]
    for name, (recipe, overrides, _, _) in RUNS.items():
        if _load(name):
            command = " ".join(["genrl train", recipe, "seed=S", *[f"'{o}'" if " " in o else o for o in overrides]])
            lines.append(f"- {name}: `{command}`")
    return "\n".join(lines) + "\n"


def plot() -> list[Path]:
    """Per reward figure, its training curve against reward queries: mean over seeds with its
    min-max band, one line per run."""
    written = []
    for score, (_, picture, ylabel, key) in FIGURES.items():
        series = {}
        for name, spec in RUNS.items():
            results = _load(name)
            if spec[2] == score and results:
                length = min(len(r["metrics"]) for r in results)
                series[name] = ([m["samples_seen"] for m in results[0]["metrics"][:length]],
                                [[m[key] for m in r["metrics"][:length]] for r in results])
        reference = (JPEG_FLOOR_KB, "content-preserving floor") if "jpeg" in score else None
        path = plot_mean_and_band(series, "reward queries", ylabel, ROOT / "benchmarks" / "results" / picture, reference)
        if path:
            written.append(path)
    return written


def main() -> None:
    benchmark_command_line(__doc__, list(RUNS), run, build_table, plot, ROOT / "benchmarks" / "results" / "image_rl.md")


if __name__ == "__main__":
    sys.exit(main())
