"""ITPS on the shipped PointMaze-Medium policy: the six steering samplers over the same seeded sketches.

    .venv/bin/python benchmarks/itps_pointmaze.py --tune                  # pick each method's scale on tuning episodes
    .venv/bin/python benchmarks/itps_pointmaze.py --run stochastic --seeds 0 1 2
    .venv/bin/python benchmarks/itps_pointmaze.py --table                 # table + plot from saved results

Every run is one `genrl eval configs/eval/itps_pointmaze_medium.yaml` (the policy's DDPM-100 chain; each
episode's sketch is a seeded detour through another corridor). The scale of each method is chosen on
TUNING_EPISODES episodes whose seeds are disjoint from the evaluation's: among SCALES[method], the one
with the lowest alignment distance whose wall-contact rate stays within 5 points of unsteered sampling
(the smallest scale when none does). Evaluation: EPISODES episodes per seed, seed s resetting episodes
from 100000 + 1000 s, with the sampler's noise seeded by s. Reported per method: success, alignment
distance (symmetric mean nearest distance between the ball's path and the sketch, maze cells), the
share of the sketch the ball came within 0.25 of, and wall contacts (share of steps touching a wall,
and share of episodes with any), mean ± std over seeds with the mean per-evaluation standard error.
Results: benchmarks/results/itps/, table benchmarks/results/itps.md, plot benchmarks/results/itps.png,
rollouts benchmarks/results/itps_rollouts.png.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from runner import benchmark_command_line, run_measured

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "itps"
RUNS_DIR = ROOT / "runs" / "benchmarks" / "itps"
RECIPE = "configs/eval/itps_pointmaze_medium.yaml"
EPISODES = 20
TUNING_EPISODES = 10
TUNING_SEED = 200_000
VIOLATION_MARGIN = 0.05  # 5 points of wall-contact rate
METHODS = ("unsteered", "output_perturbation", "post_hoc_ranking", "biased_init", "guided", "stochastic")
# Each grid brackets its best value on the tuning episodes (extended where the first grid's best sat at an end).
SCALES = {"unsteered": [0.0], "post_hoc_ranking": [0.0], "output_perturbation": [30.0, 100.0, 300.0, 1000.0],
          "biased_init": [100.0, 300.0, 1000.0, 3000.0], "guided": [30.0, 100.0, 300.0, 1000.0],
          "stochastic": [30.0, 100.0, 300.0, 1000.0]}


def _eval(output_dir: Path, method: str, scale: float, episodes: int, episode_seed: int, seed: int) -> dict:
    return run_measured(["eval", RECIPE, f"output_dir={output_dir}", f"seed={seed}", f"guidance.method={method}",
                         f"guidance.scale={scale}", f"rollout.eval.num_episodes={episodes}", f"rollout.eval.num_envs={episodes}",
                         f"rollout.eval.seed={episode_seed}"], output_dir)


def tune() -> dict:
    """Each method's scale, chosen on the tuning episodes (results/itps/tuning.json)."""
    path = RESULTS / "tuning.json"
    tuning = json.loads(path.read_text()) if path.exists() else {}
    for method in METHODS:
        for scale in SCALES[method]:
            key = f"{method}/{scale:g}"
            if key not in tuning:
                output_dir = RUNS_DIR / f"tune_{method}_{scale:g}_{time.strftime('%Y%m%d-%H%M%S')}"
                tuning[key] = _eval(output_dir, method, scale, TUNING_EPISODES, TUNING_SEED, 0)
                RESULTS.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(tuning, indent=1))
    return tuning


def chosen_scale(method: str) -> float:
    tuning = json.loads((RESULTS / "tuning.json").read_text())
    limit = tuning["unsteered/0"]["summary"]["wall_contact_rate_mean"] + VIOLATION_MARGIN
    runs = [(scale, tuning[f"{method}/{scale:g}"]["summary"]) for scale in SCALES[method]]
    allowed = [(s["alignment_distance_mean"], scale) for scale, s in runs if s["wall_contact_rate_mean"] <= limit]
    return min(allowed)[1] if allowed else min(SCALES[method])


def run(method: str, seed: int, extra: list[str]) -> dict:
    path = RESULTS / f"{method}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    if not (RESULTS / "tuning.json").exists():
        sys.exit("run --tune first: each method's scale is chosen on the tuning episodes")
    scale = chosen_scale(method)
    output_dir = RUNS_DIR / f"{method}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    result = {"method": method, "seed": seed, "scale": scale,
              **_eval(output_dir, method, scale, EPISODES, 100_000 + 1000 * seed, seed)}
    result["episodes"] = json.loads((output_dir / "episodes.json").read_text())
    path.write_text(json.dumps(result, indent=1))
    if seed == 0 and method == "stochastic":
        shutil.copy(output_dir / "samples" / "steered_rollouts.png", ROOT / "benchmarks" / "results" / "itps_rollouts.png")
    return result


def _collect() -> dict[str, list[dict]]:
    return {m: [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{m}_seed*.json"))] for m in METHODS}


def _mean_std(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def build_table() -> str:
    results = _collect()
    lines = ["# ITPS: steering the PointMaze-Medium Diffusion Policy toward a user's sketch (CPU)", "",
             f"Made by `benchmarks/itps_pointmaze.py`. {EPISODES} seeded episodes per seed, each with its own detour "
             "sketch (the same sketches for every method); mean ± std over seeds, (± mean per-evaluation standard "
             f"error). Scales chosen on {TUNING_EPISODES} separate tuning episodes (lowest alignment distance with "
             "wall contacts within 5 points of unsteered). Alignment distance: symmetric mean nearest distance between "
             "the ball's path and the sketch, in maze cells (lower is better); sketch covered: share of the sketch the "
             "ball came within 0.25 of; wall contact: share of steps touching a wall.", "",
             "| method | scale | seeds | alignment distance | sketch covered | success | wall contact (steps) | "
             "episodes with a wall hit | CPU min / seed |", "|---|---|---|---|---|---|---|---|---|"]
    for method, runs in results.items():
        if not runs:
            continue
        summaries = [r["summary"] for r in runs]

        def cell(key: str, summaries=summaries) -> str:
            return (_mean_std([x[f"{key}_mean"] for x in summaries])
                    + f" (± {statistics.mean(x[f'{key}_stderr'] for x in summaries):.3f})")

        lines.append(f"| {method} | {runs[0]['scale']:g} | {len(runs)} | {cell('alignment_distance')} | {cell('sketch_covered')} | "
                     f"{cell('success')} | {cell('wall_contact_rate')} | {cell('hit_wall')} | "
                     f"{statistics.mean(r['cpu_minutes'] for r in runs):.1f} |")
    tuning_path = RESULTS / "tuning.json"
    if tuning_path.exists():
        lines += ["", "## Tuning episodes (scale choice)", "", "| method | scale | alignment distance | wall contact | success |",
                  "|---|---|---|---|---|"]
        for key, value in json.loads(tuning_path.read_text()).items():
            s = value["summary"]
            lines.append(f"| {key.split('/')[0]} | {key.split('/')[1]} | {s['alignment_distance_mean']:.3f} | "
                         f"{s['wall_contact_rate_mean']:.3f} | {s['success_mean']:.2f} |")
    lines += ["", "## Commands", ""]
    for method, runs in results.items():
        if runs:
            lines.append(f"- {method} (seed {runs[0]['seed']}): `genrl {runs[0]['command']}`")
    lines += ["", "![steered rollouts](itps_rollouts.png)", ""]
    return "\n".join(lines) + "\n"


def plot() -> Path | None:
    """Alignment distance vs wall-contact rate, one point per method (error bars: std over seeds)."""
    results = {m: r for m, r in _collect().items() if r}
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4.5))
    for method, runs in results.items():
        x = [100 * r["summary"]["wall_contact_rate_mean"] for r in runs]
        y = [r["summary"]["alignment_distance_mean"] for r in runs]
        spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        axis.errorbar(statistics.mean(x), statistics.mean(y), xerr=spread(x), yerr=spread(y), fmt="o", capsize=3, label=method)
    axis.set_xlabel("wall contact (% of steps)")
    axis.set_ylabel("alignment distance to the sketch (cells, lower is better)")
    axis.set_title(f"ITPS on PointMaze-Medium ({EPISODES} episodes x seeds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = ROOT / "benchmarks" / "results" / "itps.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main() -> None:
    benchmark_command_line(__doc__, list(METHODS), run, build_table, plot, ROOT / "benchmarks" / "results" / "itps.md",
                           actions={"--tune": ("choose each method's scale on the tuning episodes", tune)})


if __name__ == "__main__":
    sys.exit(main())
