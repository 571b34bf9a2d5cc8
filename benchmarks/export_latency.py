"""Exported runtime (numpy + onnxruntime) vs the PyTorch policy: latency per action chunk and actions per second.

    .venv/bin/python benchmarks/export_latency.py            # run on a quiet machine (it times on 2 threads)

Rows: the PointMaze-Medium teacher at DDPM-100 and DDIM-10, and its one-call students distilled by
benchmarks/distill_policies.py (seed 0; the model path recorded in benchmarks/results/distill_policies/).
Each row is exported with `genrl export` into runs/benchmarks/export/<row>, then timed in this one process:
batch 1, torch and onnxruntime each on 2 threads, from an observation history to the executed actions of one
chunk, median and p95 over CALLS calls after 20 warm-up calls. Actions per second = executed actions per
chunk / mean chunk time (the compute budget of a control loop that samples a chunk whenever its queue empties).
Results: benchmarks/results/export_latency.json and .md.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "runs" / "benchmarks" / "export"
CALLS = 200
TEACHER = "models/policy-pointmaze-medium"
ROWS = {  # row: (model directory or the distill_policies result naming it, sampler)
    "teacher DDPM-100": (TEACHER, {"kind": "ddpm", "num_steps": 100}),
    "teacher DDIM-10": (TEACHER, {"kind": "ddim", "num_steps": 10, "eta": 0.0}),
    "consistency, 1 call": ("medium_consistency", {"kind": "consistency", "num_steps": 1}),
    "consistency head, 1 call": ("medium_consistency_head", {"kind": "consistency", "num_steps": 1}),
    "OneDP-S, 1 call": ("medium_onedp_s", {"kind": "onedp", "num_steps": 1}),
    "OneDP-D, 1 call": ("medium_onedp_d", {"kind": "onedp", "num_steps": 1}),
}


def _model(source: str) -> Path | None:
    if source.startswith("models/"):
        return ROOT / source
    record = RESULTS / "distill_policies" / f"{source}_seed0.json"
    if not record.exists():
        return None
    path = Path(json.loads(record.read_text())["distill"]["summary"]["model"])
    return path if path.is_dir() else None


def _timed(function) -> dict:
    times = []
    for call in range(20 + CALLS):
        started = time.perf_counter()
        function()
        if call >= 20:
            times.append(1000 * (time.perf_counter() - started))
    times.sort()
    return {"median_ms": statistics.median(times), "p95_ms": times[int(0.95 * len(times)) - 1], "mean_ms": statistics.mean(times)}


def main() -> None:
    import numpy as np
    import torch

    from genrl.config import SamplerConfig
    from genrl.export.runtime import PolicyRuntime
    from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from genrl.samplers import build_sampler

    torch.set_num_threads(2)
    results = {}
    for row, (source, sampler_settings) in ROWS.items():
        model = _model(source)
        if model is None:
            print(f"skipping {row}: no model (run benchmarks/distill_policies.py --run {source} --seeds 0 first)", flush=True)
            continue
        out = RUNS / row.replace(",", "").replace(" ", "_")
        if not (out / "manifest.json").exists():
            sampler_text = "{" + ", ".join(f"{k}: {v}" for k, v in sampler_settings.items()) + "}"
            subprocess.run([sys.executable, "-m", "genrl", "export", "configs/export/policy_pusht.yaml", f"model.path={model}",
                            f"output_dir={out}", f"sampler={sampler_text}"], cwd=ROOT, check=True, capture_output=True)
        policy = DiffusionPolicy.from_pretrained(model).eval()
        sampler = build_sampler(SamplerConfig(**sampler_settings), policy)
        history = np.random.default_rng(0).uniform(-1, 1, (1, policy.n_obs_steps, policy.obs_dim)).astype(np.float32)
        generator = torch.Generator().manual_seed(0)

        def pytorch_chunk():
            with torch.no_grad():
                condition = policy.condition(torch.from_numpy(history))
                states = sampler.sample(policy.denoiser, condition, (1, *policy.sample_shape), generator=generator).states
                return policy.executed_actions(states[:, -1]).numpy()

        runtime = PolicyRuntime(out, seed=0, threads=2)
        timings = {"pytorch": _timed(pytorch_chunk), "exported": _timed(lambda: runtime.predict_chunk(history))}
        for timing in timings.values():
            timing["actions_per_second"] = policy.n_action_steps * 1000 / timing["mean_ms"]
        timings["speedup"] = timings["exported"]["actions_per_second"] / timings["pytorch"]["actions_per_second"]
        timings["export_dir"] = str(out.relative_to(ROOT))
        results[row] = timings
        print(row, json.dumps({k: v for k, v in timings.items() if k != "export_dir"}), flush=True)
    (RESULTS / "export_latency.json").write_text(json.dumps(results, indent=1))
    lines = ["# Exported runtime vs PyTorch: latency per action chunk (PointMaze-Medium, CPU)", "",
             "Made by `.venv/bin/python benchmarks/export_latency.py`. Batch 1, 2 threads each (torch / onnxruntime), from an "
             f"observation history to one chunk's executed actions, {CALLS} calls after 20 warm-up calls, one process. "
             "Actions per second = executed actions per chunk / mean chunk time.", "",
             "| policy, sampler | PyTorch median ms | p95 | exported median ms | p95 | PyTorch actions/s | exported actions/s | "
             "exported / PyTorch |", "|---|---|---|---|---|---|---|---|"]
    for row, t in results.items():
        lines.append(f"| {row} | {t['pytorch']['median_ms']:.2f} | {t['pytorch']['p95_ms']:.2f} | {t['exported']['median_ms']:.2f} | "
                     f"{t['exported']['p95_ms']:.2f} | {t['pytorch']['actions_per_second']:.0f} | "
                     f"{t['exported']['actions_per_second']:.0f} | {t['speedup']:.1f}x |")
    (RESULTS / "export_latency.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
