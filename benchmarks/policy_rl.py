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

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "policy_rl"
RUNS_DIR = ROOT / "runs" / "benchmarks" / "policy_rl"

RUNS = {
    # name: (recipe, overrides, the score reported beside success)
    "medium_dppo": ("configs/policy_rl/pointmaze_medium_dppo.yaml", [], None),
    "medium_ddpo": ("configs/policy_rl/pointmaze_medium_ddpo.yaml", [], None),
    "medium_rebel": ("configs/policy_rl/pointmaze_medium_rebel.yaml", [], None),
    "pusht_dppo": ("configs/policy_rl/pusht_dppo.yaml", [], "coverage"),
    # every denoising step trained, for 80 iterations (the recipe: the last 5 steps, 30 iterations)
    "pusht_dppo_all_steps": ("configs/policy_rl/pusht_dppo.yaml", ["dppo.ft_denoising_steps=null", "num_epochs=80"],
                             "coverage"),
}


def run(name: str, seed: int, extra: list[str]) -> dict:
    path = RESULTS / f"{name}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    recipe, overrides, _ = RUNS[name]
    # A new directory per attempt: an interrupted run's directory is kept, never deleted.
    output_dir = RUNS_DIR / f"{name}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    command = [str(ROOT / ".venv" / "bin" / "genrl"), "train", recipe, f"output_dir={output_dir}", f"seed={seed}",
               "log_with=[]", *overrides, *extra]
    print("$", " ".join(command[1:]), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = {
        "name": name, "seed": seed, "command": " ".join(command[1:]).replace(str(ROOT) + "/", ""),
        "wall_minutes": wall / 60, "cpu_minutes": cpu / 60,
        "summary": json.loads((output_dir / "summary.json").read_text()),
        "metrics": [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()],
    }
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
             "(fixed seeds, the training sampler). CPU minutes = user + system time of the training process.", "",
             "| run | seeds | success before | success after | gain (points) | episode length before | after | "
             "coverage before | coverage after | env steps | CPU min | wall min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (_, _, score) in RUNS.items():
        results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{name}_seed*.json"))]
        if not results:
            continue
        s = [r["summary"] for r in results]
        gain = [100 * (x["success_rate_after"] - x["success_rate_before"]) for x in s]
        coverage = ("-", "-") if score is None else (_mean_spread([x[f"{score}_mean_before"] for x in s]),
                                                     _mean_spread([x[f"{score}_mean_after"] for x in s]))
        lines.append(f"| {name} | {len(s)} | {_mean_spread([x['success_rate_before'] for x in s])} | "
                     f"{_mean_spread([x['success_rate_after'] for x in s])} | {_mean_spread(gain, 1)} | "
                     f"{_mean_spread([x['episode_length_mean_before'] for x in s], 1)} | "
                     f"{_mean_spread([x['episode_length_mean_after'] for x in s], 1)} | {coverage[0]} | "
                     f"{coverage[1]} | {_mean_spread([x['env_steps'] for x in s], 0)} | "
                     f"{_mean_spread([r['cpu_minutes'] for r in results], 1)} | {_mean_spread([r['wall_minutes'] for r in results], 1)} |")
    lines += ["", "## Commands", ""]
    for path in sorted(RESULTS.glob("*_seed0.json")):
        lines.append(f"- `genrl {json.loads(path.read_text())['command']}`")
    return "\n".join(lines) + "\n"


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
    (ROOT / "benchmarks" / "results" / "policy_rl.md").write_text(table)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
