"""Discrete guidance on the shipped discrete models: does D-CFG / D-CBG make samples of the requested class?

    .venv/bin/python benchmarks/discrete_guidance.py --run shapes --seeds 0 1 2
    .venv/bin/python benchmarks/discrete_guidance.py --run sequences --seeds 0 1 2
    .venv/bin/python benchmarks/discrete_guidance.py --table

For each domain (models/discrete-<domain>-*: an MDLM, a UDLM, a noisy-token classifier for each, and a
clean reader trained apart), each model, each guidance (cfg; cbg with the first-order scores), each gamma
in GAMMAS and each number of sampling steps in STEPS: SAMPLES_PER_CLASS samples of every class, and the
class hit = the share the clean reader assigns to the requested class. Exact vs first-order D-CBG: at
EXACT_GAMMA and EXACT_STEPS steps, EXACT_PER_CLASS samples of every class with each, their class hit and
seconds per sample (one process, 1 torch thread). Results: benchmarks/results/discrete_guidance/,
table benchmarks/results/discrete_guidance.md, plot benchmarks/results/discrete_guidance.png.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from runner import benchmark_command_line

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "discrete_guidance"
DOMAINS = ("shapes", "sequences")
GAMMAS = (0.0, 1.0, 2.0, 3.0, 5.0)
STEPS = (8, 16, 32, 128)
SAMPLES_PER_CLASS = 16
EXACT_GAMMA, EXACT_STEPS, EXACT_PER_CLASS = 3.0, 16, 4


def _models(domain: str) -> dict:
    from genrl.discrete.model import DiscreteModel

    load = lambda name: DiscreteModel.from_pretrained(ROOT / "models" / f"discrete-{domain}-{name}")  # noqa: E731
    return {"mdlm": load("mdlm"), "udlm": load("udlm"), "cbg_mdlm": load("cbg-mdlm"), "cbg_udlm": load("cbg-udlm"),
            "reader": load("reader")}


def _class_hit(models, model, guidance, steps: int, per_class: int, seed: int) -> tuple[float, float]:
    """(share of samples the reader assigns to the requested class, seconds per sample)."""
    import torch

    from genrl.discrete.sampling import classify, sample_tokens

    labels = torch.arange(model.num_classes).repeat_interleave(per_class)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    tokens = sample_tokens(model, labels, steps, generator, guidance)
    seconds = (time.perf_counter() - started) / len(labels)
    return float((classify(models["reader"], tokens) == labels).float().mean()), seconds


def run(domain: str, seed: int, extra: list[str]) -> dict:
    path = RESULTS / f"{domain}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from genrl.discrete.sampling import DiscreteGuidance

    torch.set_num_threads(1)
    models = _models(domain)
    result = {"domain": domain, "seed": seed, "hits": {}, "exact_vs_first_order": {}}
    for name in ("mdlm", "udlm"):
        model = models[name]
        for kind in ("cfg", "cbg"):
            for gamma in GAMMAS:
                for steps in STEPS:
                    guidance = DiscreteGuidance(kind, gamma, models[f"cbg_{name}"] if kind == "cbg" else None, first_order=True)
                    hit, seconds = _class_hit(models, model, guidance, steps, SAMPLES_PER_CLASS, seed)
                    result["hits"][f"{name}/{kind}/{gamma:g}/{steps}"] = {"class_hit": hit, "seconds_per_sample": seconds}
                    print(domain, seed, name, kind, gamma, steps, round(hit, 3), flush=True)
        for first_order in (True, False):
            guidance = DiscreteGuidance("cbg", EXACT_GAMMA, models[f"cbg_{name}"], first_order=first_order)
            hit, seconds = _class_hit(models, model, guidance, EXACT_STEPS, EXACT_PER_CLASS, seed)
            result["exact_vs_first_order"][f"{name}/{'first_order' if first_order else 'exact'}"] = {
                "class_hit": hit, "seconds_per_sample": seconds}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def _collect() -> dict[str, list[dict]]:
    return {d: [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{d}_seed*.json"))] for d in DOMAINS}


def _mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def build_table() -> str:
    lines = ["# Discrete guidance: class hit of guided samples (CPU)", "",
             f"Made by `benchmarks/discrete_guidance.py`. Class hit: the share of {SAMPLES_PER_CLASS} samples per class that a "
             "separately trained clean reader assigns to the requested class (mean ± std over seeds; the binomial standard "
             "error of one evaluation is sqrt(p(1-p)/n) with n = samples per class x classes). cfg: D-CFG; cbg: D-CBG with "
             "first-order scores and the unconditional model. gamma 0 is the unconditional model.", ""]
    for domain, runs in _collect().items():
        if not runs:
            continue
        lines += [f"## {domain} ({len(runs)} seeds)", "", "| model | guidance | steps | " + " | ".join(f"gamma {g:g}" for g in GAMMAS) + " |",
                  "|---|---|---|" + "---|" * len(GAMMAS)]
        for name in ("mdlm", "udlm"):
            for kind in ("cfg", "cbg"):
                for steps in STEPS:
                    cells = [_mean_std([r["hits"][f"{name}/{kind}/{g:g}/{steps}"]["class_hit"] for r in runs]) for g in GAMMAS]
                    lines.append(f"| {name} | {kind} | {steps} | " + " | ".join(cells) + " |")
        lines += ["", f"Exact vs first-order D-CBG (gamma {EXACT_GAMMA:g}, {EXACT_STEPS} steps, {EXACT_PER_CLASS} samples per class):", "",
                  "| model | scores | class hit | seconds per sample | speed-up of first order |", "|---|---|---|---|---|"]
        for name in ("mdlm", "udlm"):
            first = [r["exact_vs_first_order"][f"{name}/first_order"] for r in runs]
            exact = [r["exact_vs_first_order"][f"{name}/exact"] for r in runs]
            speedup = statistics.mean(e["seconds_per_sample"] for e in exact) / statistics.mean(f["seconds_per_sample"] for f in first)
            for label, values in (("first order", first), ("exact", exact)):
                lines.append(f"| {name} | {label} | {_mean_std([v['class_hit'] for v in values])} | "
                             f"{statistics.mean(v['seconds_per_sample'] for v in values):.4f} | "
                             f"{f'{speedup:.0f}x' if label == 'first order' else ''} |")
        lines.append("")
    lines += ["![class hit vs gamma](discrete_guidance.png)", ""]
    return "\n".join(lines) + "\n"


def plot() -> Path | None:
    results = {d: r for d, r in _collect().items() if r}
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    steps = max(STEPS)
    for axis, (domain, runs) in zip(axes[0], results.items()):
        for name in ("mdlm", "udlm"):
            for kind, style in (("cfg", "-"), ("cbg", "--")):
                values = [[r["hits"][f"{name}/{kind}/{g:g}/{steps}"]["class_hit"] for r in runs] for g in GAMMAS]
                axis.errorbar(GAMMAS, [statistics.mean(v) for v in values],
                              yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values], fmt="o" + style, capsize=3,
                              label=f"{name} {kind}")
        axis.set_xlabel("guidance scale gamma")
        axis.set_ylabel(f"class hit ({steps} steps)")
        axis.set_title(domain)
        axis.set_ylim(0, 1.02)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path = ROOT / "benchmarks" / "results" / "discrete_guidance.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main() -> None:
    benchmark_command_line(__doc__, list(DOMAINS), run, build_table, plot, ROOT / "benchmarks" / "results" / "discrete_guidance.md")


if __name__ == "__main__":
    sys.exit(main())
