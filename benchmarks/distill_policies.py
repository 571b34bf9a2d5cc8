"""Few-step students of the shipped Diffusion Policies: success rate and latency against the teacher.

    .venv/bin/python benchmarks/distill_policies.py --run pusht_consistency --seeds 0 1 2   # distil + evaluate
    .venv/bin/python benchmarks/distill_policies.py --run pusht_teacher --seeds 0           # the teacher's rows
    .venv/bin/python benchmarks/distill_policies.py --latency    # every saved row's model, in one process
    .venv/bin/python benchmarks/distill_policies.py --table      # table + plot from saved results

A student row is one real `genrl distill` run (its end-of-run evaluation skipped) followed by one
`genrl eval` per sampler over `EPISODES` seeded episodes (the same seeds for every row); a teacher
row only evaluates. CPU minutes are the child processes' user + system time. Latency is measured
apart (`--latency`), all rows in one process with 2 torch threads, batch 1: the time from an
observation history to the executed actions of one chunk (normalise, sample, un-normalise),
median and p95 over `LATENCY_CALLS` calls after 20 warm-up calls, and the bare network call
beside it. Results: benchmarks/results/distill_policies/, table benchmarks/results/distill_policies.md,
plot benchmarks/results/distill_policies.png (success vs latency, log scale).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from runner import benchmark_command_line, run_measured

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "distill_policies"
RUNS_DIR = ROOT / "runs" / "benchmarks" / "distill_policies"
EPISODES = 200
LATENCY_CALLS = 200

ENVS = {  # env: (teacher, evaluation recipe, teacher pretraining steps)
    "pusht": ("models/policy-pusht", "configs/eval/policy_pusht.yaml", 20000),
    "medium": ("models/policy-pointmaze-medium", "configs/eval/policy_pointmaze_medium.yaml", 10000),
}
DDPM_100 = {"kind": "ddpm", "num_steps": 100}
DDIM_10 = {"kind": "ddim", "num_steps": 10, "eta": 0.0}
DDIM_10_ETA1 = {"kind": "ddim", "num_steps": 10, "eta": 1.0}


def consistency(steps: int) -> dict:
    return {"kind": "consistency", "num_steps": steps}


ROWS = {}  # name: (env, distillation recipe or None for the teacher, its overrides, {label: sampler})
for env in ENVS:
    ROWS[f"{env}_teacher"] = (env, None, [], {"DDPM-100": DDPM_100, "DDIM-10": DDIM_10, "DDIM-10 eta 1": DDIM_10_ETA1})
    ROWS[f"{env}_consistency"] = (env, f"configs/distill/consistency_{'pointmaze_medium' if env == 'medium' else env}.yaml", [],
                                  {f"{k} call{'s' if k > 1 else ''}": consistency(k) for k in (1, 2, 3)})
    ROWS[f"{env}_consistency_head"] = (env, f"configs/distill/consistency_{'pointmaze_medium' if env == 'medium' else env}.yaml",
                                       ["method.student=head"], {f"{k} call{'s' if k > 1 else ''}": consistency(k) for k in (1, 2, 3)})
    for variant in ("s", "d"):
        ROWS[f"{env}_onedp_{variant}"] = (env, f"configs/distill/onedp_{variant}_{'pointmaze_medium' if env == 'medium' else env}.yaml",
                                          [], {"1 call": {"kind": "onedp", "num_steps": 1}})


def _override(sampler: dict) -> str:
    return "sampler={" + ", ".join(f"{key}: {value}" for key, value in sampler.items()) + "}"


def run(name: str, seed: int, extra: list[str]) -> dict:
    path = RESULTS / f"{name}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    env, recipe, overrides, samplers = ROWS[name]
    teacher, eval_recipe, _ = ENVS[env]
    output_dir = RUNS_DIR / f"{name}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    result = {"name": name, "seed": seed, "env": env}
    model = teacher
    if recipe is not None:
        distill = run_measured(["distill", recipe, f"output_dir={output_dir}", f"seed={seed}", "eval.skip=true",
                                *overrides, *extra], output_dir)
        result["distill"] = {**distill, "metrics": [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]}
        model = str(output_dir / "model")
    result["model"] = model
    result["evaluations"] = {}
    for label, sampler in samplers.items():
        eval_dir = output_dir / f"eval_{label.replace(' ', '_')}"
        measured = run_measured(["eval", eval_recipe, f"model.path={model}", f"output_dir={eval_dir}", _override(sampler),
                                 f"rollout.eval.num_episodes={EPISODES}", "rollout.eval.num_envs=50", "rollout.eval.num_videos=1"],
                                eval_dir)
        result["evaluations"][label] = {"sampler": sampler, **measured}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def measure_latency() -> dict:
    """Per (row, sampler): ms from an observation history to one chunk's executed actions, batch 1, 2 threads."""
    import torch

    from genrl.config import SamplerConfig
    from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from genrl.samplers import build_sampler

    torch.set_num_threads(2)
    latency = {}
    for name, (env, recipe, _, samplers) in ROWS.items():
        path = RESULTS / f"{name}_seed0.json"
        if recipe is not None and not path.exists():
            continue  # a student is timed once distilled; a teacher always
        model = json.loads(path.read_text())["model"] if recipe is not None else ENVS[env][0]
        result = {"name": name}
        policy = DiffusionPolicy.from_pretrained(ROOT / model).eval()
        history = torch.randn(1, policy.n_obs_steps, policy.obs_dim)
        generator = torch.Generator().manual_seed(0)
        for label, sampler_settings in samplers.items():
            sampler = build_sampler(SamplerConfig(**sampler_settings), policy)

            def chunk():
                with torch.no_grad():
                    condition = policy.condition(history)
                    states = sampler.sample(policy.denoiser, condition, (1, *policy.sample_shape), generator=generator).states
                    return policy.executed_actions(states[:, -1])

            times = []
            for call in range(20 + LATENCY_CALLS):
                started = time.perf_counter()
                chunk()
                if call >= 20:
                    times.append(1000 * (time.perf_counter() - started))
            times.sort()
            latency[f"{result['name']}/{label}"] = {"median_ms": statistics.median(times),
                                                   "p95_ms": times[int(0.95 * len(times)) - 1], "calls": len(times)}
            print(result["name"], label, latency[f"{result['name']}/{label}"], flush=True)
        with torch.no_grad():  # the bare network call, for the floor a one-call student can reach
            condition = policy.condition(history)
            x, t = torch.randn(1, *policy.sample_shape), torch.full((1,), 50)
            times = []
            for call in range(20 + LATENCY_CALLS):
                started = time.perf_counter()
                policy.network(x, t, **condition)
                if call >= 20:
                    times.append(1000 * (time.perf_counter() - started))
        latency[f"{result['name']}/network call"] = {"median_ms": statistics.median(times),
                                                     "p95_ms": sorted(times)[int(0.95 * len(times)) - 1], "calls": len(times)}
    (RESULTS / "latency.json").write_text(json.dumps(latency, indent=1))
    return latency


def _mean_spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _collect() -> list[tuple]:
    """(env, row, label, [eval summaries over seeds], [distill results]) for every saved row."""
    rows = []
    for name, (env, recipe, _, samplers) in ROWS.items():
        results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{name}_seed*.json"))]
        for label in samplers:
            summaries = [r["evaluations"][label]["summary"] for r in results if label in r["evaluations"]]
            if summaries:
                rows.append((env, name, label, summaries, [r.get("distill") for r in results]))
    return rows


def build_table() -> str:
    latency_path = RESULTS / "latency.json"
    latency = json.loads(latency_path.read_text()) if latency_path.exists() else {}
    lines = ["# Few-step students of the shipped Diffusion Policies (CPU)", "",
             f"Made by `benchmarks/distill_policies.py`. Success over {EPISODES} seeded evaluation episodes per seed "
             "(the same episode seeds for every row), mean ± std over distillation seeds, with the binomial standard "
             "error of one evaluation. Latency: batch 1, 2 torch threads, one process for all rows, ms from an "
             "observation history to one chunk's executed actions (median / p95 over "
             f"{LATENCY_CALLS} calls; seed-0 models). Distillation steps are against the teacher's pretraining steps.", ""]
    for env, (teacher, _, pretrain_steps) in ENVS.items():
        rows = [row for row in _collect() if row[0] == env]
        if not rows:
            continue
        network = latency.get(f"{env}_teacher/network call")
        lines += [f"## {env} (teacher {teacher})", "",
                  "| row | sampler | seeds | success (± s.e.) | coverage / length | latency median ms | p95 ms | "
                  "x faster than DDPM-100 | distill steps (% of teacher's) | distill CPU min |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        reference = latency.get(f"{env}_teacher/DDPM-100", {}).get("median_ms")
        for _, name, label, summaries, distills in rows:
            success = _mean_spread([s["success_rate"] for s in summaries])
            stderr = statistics.mean(s["success_rate_stderr"] for s in summaries)
            extra = _mean_spread([s["coverage_mean"] for s in summaries]) if "coverage_mean" in summaries[0] else \
                _mean_spread([s["episode_length_mean"] for s in summaries], 1)
            timing = latency.get(f"{name}/{label}")
            median = f"{timing['median_ms']:.2f}" if timing else "-"
            p95 = f"{timing['p95_ms']:.2f}" if timing else "-"
            speedup = f"{reference / timing['median_ms']:.0f}" if timing and reference else "-"
            if distills[0] is not None:
                steps = distills[0]["steps"]
                share = f" ({100 * steps / pretrain_steps:.0f}%)" if pretrain_steps else ""
                cost = (f"{steps}{share}", _mean_spread([d["cpu_minutes"] for d in distills], 1))
            else:
                cost = ("-", "-")
            lines.append(f"| {name} | {label} | {len(summaries)} | {success} (± {stderr:.3f}) | {extra} | {median} | {p95} | "
                         f"{speedup} | {cost[0]} | {cost[1]} |")
        if network:
            lines.append(f"\nBare network call: {network['median_ms']:.2f} ms median, {network['p95_ms']:.2f} ms p95.")
        lines.append("")
    lines += ["## Commands", ""]
    for name, (env, recipe, overrides, samplers) in ROWS.items():
        if list(RESULTS.glob(f"{name}_seed*.json")):
            first = json.loads(sorted(RESULTS.glob(f"{name}_seed*.json"))[0].read_text())
            commands = ([first["distill"]["command"]] if "distill" in first else []) + \
                [e["command"] for e in first["evaluations"].values()]
            lines.append(f"- {name} (seed {first['seed']}): " + "; ".join(f"`genrl {c}`" for c in commands))
    return "\n".join(lines) + "\n"


def plot() -> Path | None:
    """Success vs latency (log scale), one point per (row, sampler), error bars over seeds."""
    latency_path = RESULTS / "latency.json"
    rows = _collect()
    if not rows or not latency_path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = json.loads(latency_path.read_text())
    envs = sorted({row[0] for row in rows})
    figure, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4.5), squeeze=False)
    for axis, env in zip(axes[0], envs):
        for _, name, label, summaries, _ in (row for row in rows if row[0] == env):
            timing = latency.get(f"{name}/{label}")
            if timing is None:
                continue
            values = [s["success_rate"] for s in summaries]
            spread = statistics.stdev(values) if len(values) > 1 else summaries[0]["success_rate_stderr"]
            axis.errorbar(timing["median_ms"], statistics.mean(values), yerr=spread, fmt="o", capsize=3,
                          label=f"{name.removeprefix(env + '_')} {label}")
        axis.set_xscale("log")
        axis.set_xlabel("ms per action chunk (batch 1, 2 threads, median)")
        axis.set_ylabel(f"success rate ({EPISODES} episodes)")
        axis.set_title(env)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = ROOT / "benchmarks" / "results" / "distill_policies.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main() -> None:
    benchmark_command_line(__doc__, list(ROWS), run, build_table, plot, ROOT / "benchmarks" / "results" / "distill_policies.md",
                           actions={"--latency": ("time every row's seed-0 model (run it on a quiet machine)", measure_latency)})


if __name__ == "__main__":
    sys.exit(main())
