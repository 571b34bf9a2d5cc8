"""Sampling latency of a shipped Diffusion Policy: milliseconds per action chunk at batch 1.

    .venv/bin/python benchmarks/policy_latency.py [--policy models/policy-pusht] [--threads 2] [--repeats 50]

Times the whole policy call the env loop makes (normalise the observation history, run the
chain, un-normalise the executed actions) for DDPM with 100 steps and DDIM with 10 steps,
after warm-up, on this machine's CPU. Results: benchmarks/results/policy_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from genrl.config import SamplerConfig
from genrl.evaluation.episodes import policy_actor
from genrl.policies.diffusion import DiffusionPolicy
from genrl.samplers import build_sampler

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = {"DDPM, 100 steps": SamplerConfig(kind="ddpm", num_steps=100),
            "DDIM, 10 steps": SamplerConfig(kind="ddim", num_steps=10, eta=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+", default=["models/policy-pointmaze-umaze", "models/policy-pointmaze-medium",
                                                          "models/policy-pusht"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for path in args.policies:
        policy = DiffusionPolicy.from_pretrained(ROOT / path).eval()
        observation = np.random.default_rng(0).standard_normal((1, policy.n_obs_steps, policy.obs_dim)).astype(np.float32)
        observation = policy.normalizer.obs.unnormalize(torch.from_numpy(observation)).numpy().astype(np.float32)
        results[path] = {"parameters": sum(p.numel() for p in policy.network.parameters())}
        for name, sampler_config in SAMPLERS.items():
            act = policy_actor(policy, build_sampler(sampler_config, policy), torch.Generator().manual_seed(0))
            for _ in range(5):
                act(observation, np.zeros(1, dtype=int))
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                act(observation, np.zeros(1, dtype=int))
                times.append((time.perf_counter() - started) * 1000)
            results[path][name] = {"ms_mean": statistics.mean(times), "ms_std": statistics.stdev(times),
                                   "ms_median": statistics.median(times)}
            print(path, name, json.dumps(results[path][name]), flush=True)
    lines = ["# Diffusion Policy latency (batch 1, CPU)", "",
             f"`.venv/bin/python benchmarks/policy_latency.py --threads {args.threads} --repeats {args.repeats}`: "
             "one policy call (one action chunk), mean ± std over the repeats, after 5 warm-up calls.", "",
             "| policy | parameters | " + " | ".join(f"{name} (ms)" for name in SAMPLERS) + " | speed-up |",
             "|---|---|" + "---|" * len(SAMPLERS) + "---|"]
    for path, result in results.items():
        cells = [f"{result[name]['ms_mean']:.1f} ± {result[name]['ms_std']:.1f}" for name in SAMPLERS]
        speedup = result["DDPM, 100 steps"]["ms_mean"] / result["DDIM, 10 steps"]["ms_mean"]
        lines.append(f"| {path} | {result['parameters'] / 1e6:.2f} M | " + " | ".join(cells) + f" | {speedup:.1f}x |")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "policy_latency.json").write_text(json.dumps({"threads": args.threads, "results": results}, indent=1))
    (out / "policy_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
