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
# First-order scores are a Taylor expansion whose scale can be far from the exact scores' (the MDLM
# classifier's gradient at the mask is tiny), so first order also gets its own gamma, chosen on samples of
# other noise seeds (TUNING_SEED + seed) from this grid, at EXACT_STEPS steps.
FIRST_ORDER_GAMMAS = (3.0, 10.0, 30.0, 100.0, 300.0)
TUNING_SEED = 10_000


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
        tuning = {}
        for gamma in FIRST_ORDER_GAMMAS:
            guidance = DiscreteGuidance("cbg", gamma, models[f"cbg_{name}"], first_order=True)
            tuning[gamma] = _class_hit(models, model, guidance, EXACT_STEPS, SAMPLES_PER_CLASS, TUNING_SEED + seed)[0]
        tuned = max(tuning, key=tuning.get)
        result["first_order_tuning"] = {**result.get("first_order_tuning", {}), name: {f"{g:g}": h for g, h in tuning.items()}}
        for label, gamma, first_order in (("first_order", EXACT_GAMMA, True), ("exact", EXACT_GAMMA, False),
                                          ("first_order_tuned", tuned, True)):
            guidance = DiscreteGuidance("cbg", gamma, models[f"cbg_{name}"], first_order=first_order)
            hit, seconds = _class_hit(models, model, guidance, EXACT_STEPS, EXACT_PER_CLASS, seed)
            result["exact_vs_first_order"][f"{name}/{label}"] = {"class_hit": hit, "seconds_per_sample": seconds, "gamma": gamma}
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
        lines += ["", f"Exact vs first-order D-CBG ({EXACT_STEPS} steps, {EXACT_PER_CLASS} samples per class; gamma {EXACT_GAMMA:g}, "
                  f"and first order at its own gamma, the best of {', '.join(f'{g:g}' for g in FIRST_ORDER_GAMMAS)} on "
                  "samples of other noise seeds):", "",
                  "| model | scores | gamma (per seed) | class hit | seconds per sample | speed-up over exact |", "|---|---|---|---|---|---|"]
        for name in ("mdlm", "udlm"):
            exact = [r["exact_vs_first_order"][f"{name}/exact"] for r in runs]
            for key, label in (("first_order", "first order"), ("first_order_tuned", "first order, tuned gamma"), ("exact", "exact")):
                values = [r["exact_vs_first_order"][f"{name}/{key}"] for r in runs if f"{name}/{key}" in r["exact_vs_first_order"]]
                if not values:
                    continue
                speedup = (statistics.mean(e["seconds_per_sample"] for e in exact)
                           / statistics.mean(v["seconds_per_sample"] for v in values))
                gammas = ", ".join(f"{v.get('gamma', EXACT_GAMMA):g}" for v in values)
                lines.append(f"| {name} | {label} | {gammas} | {_mean_std([v['class_hit'] for v in values])} | "
                             f"{statistics.mean(v['seconds_per_sample'] for v in values):.4f} | "
                             f"{f'{speedup:.0f}x' if key != 'exact' else ''} |")
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
