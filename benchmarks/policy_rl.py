"""RL fine-tuning of the shipped Diffusion Policies: success / coverage before and after, env
steps and CPU minutes, several seeds.

    .venv/bin/python benchmarks/policy_rl.py --run medium_dppo --seeds 0 1 2
    .venv/bin/python benchmarks/policy_rl.py --run pusht_dppo --seeds 0 1 2
    .venv/bin/python benchmarks/policy_rl.py --table        # rebuild the table from saved results

Each run is a real `genrl train` in its own process; its CPU time is the process's user + system
time (resource.getrusage of the child), wall time alongside. Before/after are the run's own
evaluations (`eval.num_episodes` fixed-seed episodes with the sampler the policy is trained
with). Finished runs are skipped; each run writes a new directory
runs/benchmarks/policy_rl/<name>_seed<S>_<date-time>/, so an interrupted one is kept and started
again in a fresh directory. Per-run results: benchmarks/results/policy_rl/, the table:
benchmarks/results/policy_rl.md.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from curves import plot_mean_and_band
from runner import benchmark_command_line, train_and_measure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "policy_rl"
RUNS_DIR = ROOT / "runs" / "benchmarks" / "policy_rl"

RUNS = {
    # name: (recipe, overrides, the score reported beside success)
    "medium_dppo": ("configs/policy_rl/pointmaze_medium_dppo.yaml", [], None),
    "medium_ddpo": ("configs/policy_rl/pointmaze_medium_ddpo.yaml", [], None),
    "medium_rebel": ("configs/policy_rl/pointmaze_medium_rebel.yaml", [], None),
    # the recipe of issue 12: scoring floor, executed-slice log-probs, coverage gain from reset + success
    # bonus, 64 episodes per iteration in minibatches of 2500 items, lr 1e-5; the last 5 steps of
    # DDIM-10 trained, evaluated with DDPM-100 and with the training chain
    "pusht_dppo": ("configs/policy_rl/pusht_dppo.yaml", [], "coverage"),
    # the same, training the last 10 steps of a 20-step DDPM chain and evaluating on that chain
    "pusht_dppo_ddpm20": ("configs/policy_rl/pusht_dppo.yaml",
                          ["sampler={kind: ddpm, num_steps: 20, min_std: 0.0, min_logprob_std: 0.1, noise_clip: 3.0}",
                           "dppo.ft_denoising_steps=10", "rollout.eval.sampler=null"], "coverage"),
    # evaluated on the chain it fine-tunes (DDIM-10, eta 1; 300 episodes, 10x cheaper than DDPM-100),
    # learning rate 3e-5 (between 1e-5, which moved that chain +7 points, and 1e-4, which collapsed),
    # 30 iterations, DPPO's per-element log-prob clamp
    "pusht_dppo_chain_eval": ("configs/policy_rl/pusht_dppo.yaml",
                              ["rollout.eval.sampler=null", "rollout.eval.num_episodes=300", "optimizer.learning_rate=3e-5",
                               "num_epochs=30", "sampler.logprob_clamp=[-5, 2]", "checkpoint_every=15"], "coverage"),
    # a weak behaviour-cloning start with headroom (40 of 300 demonstrations), same settings
    "medium_weak_dppo": ("configs/policy_rl/pointmaze_medium_weak_dppo.yaml", [], None),
    # episode-level trainers on PushT at pusht_dppo's env steps, sampler, reward and evaluation
    "pusht_ddpo": ("configs/policy_rl/pusht_ddpo.yaml", [], "coverage"),
    "pusht_rebel": ("configs/policy_rl/pusht_rebel.yaml", [], "coverage"),
    # pusht_rebel moved the policy far at once (approx_kl 2.4 in its first iteration, 0.57 -> 0.01 success):
    # 1/eta = 100 asks for log-ratios 100x smaller to fit the same standardised rewards (as rebel_jpeg_eta100)
    "pusht_rebel_eta100": ("configs/policy_rl/pusht_rebel.yaml", ["rebel.eta_inverse=100"], "coverage"),
}
# Rows measured with earlier recipes (results kept; the code they ran is in git history): the recipe
# before issue 12 (no scoring floor, whole-chunk log-probs, coverage counted from 0, 32 episodes per
# iteration in minibatches of 512, lr 1e-5, evaluated with the training sampler), and the same with
# every denoising step trained for 80 iterations.
HISTORY = {"pusht_dppo_before_issue12": "coverage", "pusht_dppo_all_steps": "coverage"}


def run(name: str, seed: int, extra: list[str]) -> dict:
    path = RESULTS / f"{name}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    recipe, overrides, _ = RUNS[name]
    # A new directory per attempt: an interrupted run's directory is kept, never deleted.
    output_dir = RUNS_DIR / f"{name}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    result = {"name": name, "seed": seed, **train_and_measure(recipe, output_dir, seed, overrides + extra)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def _mean_spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def build_table() -> str:
    lines = ["# RL fine-tuning of the shipped Diffusion Policies (CPU)", "",
             "Made by `benchmarks/policy_rl.py`; mean ± std over seeds. Before/after: the run's own evaluation "
             "(fixed seeds). CPU minutes = user + system time of the training process.", "",
             "Success is under the evaluation sampler (`rollout.eval.sampler`, the training sampler when unset) "
             "with its binomial standard error; `train-sampler success` is the same episodes under the training "
             "sampler when the two differ. `opt steps`, `approx_kl`, `clipfrac`: per run, summed / averaged over "
             "its iterations (they show that updates happened).", "",
             "| run | seeds | success before (± s.e.) | success after | gain (points) | train-sampler success before | after | "
             "episode length before | after | coverage before | coverage after | opt steps | approx_kl | clipfrac | "
             "env steps | CPU min | wall min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(name, score) for name, (_, _, score) in RUNS.items()] + list(HISTORY.items())
    for name, score in rows:
        results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{name}_seed*.json"))]
        if not results:
            continue
        s = [r["summary"] for r in results]
        gain = [100 * (x["success_rate_after"] - x["success_rate_before"]) for x in s]
        coverage = ("-", "-") if score is None else (_mean_spread([x[f"{score}_mean_before"] for x in s]),
                                                     _mean_spread([x[f"{score}_mean_after"] for x in s]))
        stderr = [x.get("success_rate_stderr_before") for x in s]
        stderr = "" if None in stderr else f" (± {statistics.mean(stderr):.3f})"
        train_sampler = [(x.get("train_sampler_success_rate_before"), x.get("train_sampler_success_rate_after")) for x in s]
        train_sampler = ("-", "-") if None in train_sampler[0] else (_mean_spread([b for b, _ in train_sampler]),
                                                                    _mean_spread([a for _, a in train_sampler]))
        metrics = [r["metrics"] for r in results]
        logged = all("optimizer_steps" in m for run in metrics for m in run)
        steps = _mean_spread([sum(m["optimizer_steps"] for m in run) for run in metrics], 0) if logged else "-"
        kl = [statistics.mean([m["approx_kl"] for m in run if "approx_kl" in m] or [float("nan")]) for run in metrics]
        clipfrac = [statistics.mean([m["clipfrac"] for m in run if "clipfrac" in m] or [float("nan")]) for run in metrics]
        lines.append(f"| {name} | {len(s)} | {_mean_spread([x['success_rate_before'] for x in s])}{stderr} | "
                     f"{_mean_spread([x['success_rate_after'] for x in s])} | {_mean_spread(gain, 1)} | "
                     f"{train_sampler[0]} | {train_sampler[1]} | "
                     f"{_mean_spread([x['episode_length_mean_before'] for x in s], 1)} | "
                     f"{_mean_spread([x['episode_length_mean_after'] for x in s], 1)} | {coverage[0]} | "
                     f"{coverage[1]} | {steps} | {statistics.mean(kl):.1e} | {statistics.mean(clipfrac):.3f} | "
                     f"{_mean_spread([x['env_steps'] for x in s], 0)} | "
                     f"{_mean_spread([r['cpu_minutes'] for r in results], 1)} | {_mean_spread([r['wall_minutes'] for r in results], 1)} |")
    lines += ["", "Curves: `policy_rl.png` (training success against env steps).", "",
              "## Commands (`seed=S` for S in the seeds; each run's own command line is in its result file; "
              "the history rows ran earlier code)", ""]
    for name, (recipe, overrides, _) in RUNS.items():
        if list(RESULTS.glob(f"{name}_seed*.json")):
            command = " ".join(["genrl train", recipe, "seed=S", *[f"'{o}'" if " " in o else o for o in overrides]])
            lines.append(f"- {name}: `{command}`")
    for name in HISTORY:
        for path in sorted(RESULTS.glob(f"{name}_seed0.json")):
            lines.append(f"- {name}: `genrl {json.loads(path.read_text())['command']}`")
    return "\n".join(lines) + "\n"


def plot() -> Path | None:
    """Training success rate against env steps: mean over seeds with its min-max band, one line per run."""
    import numpy as np

    series = {}
    for name in RUNS:
        results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{name}_seed*.json"))]
        if results:
            length = min(len(r["metrics"]) for r in results)
            series[name] = (np.cumsum([m["env_steps"] for m in results[0]["metrics"][:length]]),
                            [[m["success_rate"] for m in r["metrics"][:length]] for r in results])
    return plot_mean_and_band(series, "env steps", "training success rate (training sampler)",
                              ROOT / "benchmarks" / "results" / "policy_rl.png")


def main() -> None:
    benchmark_command_line(__doc__, list(RUNS), run, build_table, plot, ROOT / "benchmarks" / "results" / "policy_rl.md")


if __name__ == "__main__":
    sys.exit(main())
