"""UFC on the frozen Shapes diffusion model: control fidelity on a condition type held out of meta-training.

    .venv/bin/python benchmarks/ufc_shapes.py --run edges --seeds 0 1 2
    .venv/bin/python benchmarks/ufc_shapes.py --table

Adapters (trained beforehand by the commands in ADAPTERS, each `genrl pretrain`): UFC meta-trained on
masks, centre heat maps and boxes, then few-shot trained on 30 edge-map examples; an adapter of the same
size trained from scratch on the same 30 examples; and one trained from scratch, fully supervised, on
fresh scenes (many times the examples; see ADAPTERS for the schedules measured). "none" is the base model alone. Per seed, as `genrl eval
configs/eval/ufc_shapes.yaml` measures it (genrl/evaluation/spatial_control.py): TEST_CONDITIONS edge maps
of fresh test scenes (seed 50000 + s), the empty prompt, DDIM-20 (eta 0) with noise seeded by s, the
support set = the first SHOTS examples of the few-shot pool; fidelity = IoU between the requested edge map
and the one rebuilt from the sample (genrl/guidance/spatial_conditions.py). Results:
benchmarks/results/ufc/, table benchmarks/results/ufc.md, plot benchmarks/results/ufc.png.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from runner import benchmark_command_line

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ufc"
TASK = "edges"
TEST_CONDITIONS, SHOTS, POOL = 32, 4, 30
# The adapters measured so far were trained with shortened schedules (CPU time): meta-training 400 of the
# recipe's 1500 steps, few-shot and from-scratch 150 of 300, supervised 800 steps of 16 fresh scenes
# (12800 examples, about 430x the 30).
ADAPTERS = {  # variant: (adapter directory, the command that trains it)
    "none": (None, ""),
    "ufc_few_shot": ("runs/ufc/few_shot_seed0/model",
                     "genrl pretrain configs/pretrain/ufc_meta_shapes.yaml output_dir=runs/ufc/meta_seed0 max_steps=400 "
                     "checkpoint_every=200 warmup_steps=40 && genrl pretrain configs/pretrain/ufc_few_shot_edges.yaml "
                     "model.init_adapter=runs/ufc/meta_seed0/model output_dir=runs/ufc/few_shot_seed0 max_steps=150"),
    "scratch_30": ("runs/ufc/scratch_seed0/model",
                   "genrl pretrain configs/pretrain/ufc_few_shot_edges.yaml model.mode=scratch output_dir=runs/ufc/scratch_seed0 "
                   "max_steps=150"),
    "supervised": ("runs/ufc/supervised_seed0/model",
                   "genrl pretrain configs/pretrain/ufc_few_shot_edges.yaml model.mode=scratch data.pool_size=null max_steps=800 "
                   "batch_size=16 warmup_steps=50 ema_decay=0.99 checkpoint_every=400 output_dir=runs/ufc/supervised_seed0"),
}


def run(task: str, seed: int, extra: list[str]) -> dict:
    path = RESULTS / f"{task}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from genrl.config import SamplerConfig
    from genrl.evaluation.spatial_control import evaluate_control
    from genrl.guidance.ufc_training import load_adapter
    from genrl.models.loading import load_model

    torch.set_num_threads(1)
    base = load_model(ROOT / "models" / "shapes-diffusion").eval().requires_grad_(False)
    result = {"task": task, "seed": seed, "variants": {}}
    for variant, (directory, command) in ADAPTERS.items():
        adapter = None
        if directory is not None:
            if not (ROOT / directory).is_dir():
                print(f"skipping {variant}: {directory} is missing (train it: {command})", flush=True)
                continue
            adapter, _ = load_adapter(ROOT / directory, base)
        started = time.process_time()
        figures = evaluate_control(base, adapter, task, SamplerConfig(kind="ddim", num_steps=20, eta=0.0), TEST_CONDITIONS, SHOTS,
                                   POOL, 0, seed)
        result["variants"][variant] = {**figures, "cpu_seconds": time.process_time() - started, "adapter": directory,
                                       "command": command}
        print(task, seed, variant, round(figures["iou_mean"], 3), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def _collect() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{TASK}_seed*.json"))]


def build_table() -> str:
    runs = _collect()
    lines = ["# UFC: few-shot spatial control of the frozen Shapes model (CPU)", "",
             f"Made by `benchmarks/ufc_shapes.py`. Held-out condition type: {TASK}. IoU between the requested condition and "
             f"the one rebuilt from the sample, {TEST_CONDITIONS} test conditions per seed (mean ± std over seeds, ± mean "
             "per-evaluation standard error). Adapters trained once (seed 0); seeds vary the test scenes and sampling noise.", "",
             "| variant | seeds | IoU | share of supervised |", "|---|---|---|---|"]
    if runs:
        supervised = [r["variants"]["supervised"]["iou_mean"] for r in runs if "supervised" in r["variants"]]
        for variant in ADAPTERS:
            values = [r["variants"][variant] for r in runs if variant in r["variants"]]
            if not values:
                continue
            means = [v["iou_mean"] for v in values]
            spread = f" ± {statistics.stdev(means):.3f}" if len(means) > 1 else ""
            share = f"{statistics.mean(means) / statistics.mean(supervised):.2f}" if supervised else "-"
            lines.append(f"| {variant} | {len(values)} | {statistics.mean(means):.3f}{spread} "
                         f"(± {statistics.mean(v['iou_stderr'] for v in values):.3f}) | {share} |")
        lines += ["", "## Commands", ""] + [f"- {v}: `{c}`" for v, (_, c) in ADAPTERS.items() if c]
    return "\n".join(lines) + "\n"


def plot() -> Path | None:
    runs = _collect()
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    names = [v for v in ADAPTERS if any(v in r["variants"] for r in runs)]
    means = [statistics.mean(r["variants"][v]["iou_mean"] for r in runs if v in r["variants"]) for v in names]
    axis.bar(names, means)
    axis.set_ylabel(f"IoU of the requested {TASK} (higher is better)")
    axis.set_title("UFC on held-out edge maps (30 examples)")
    figure.tight_layout()
    path = ROOT / "benchmarks" / "results" / "ufc.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main() -> None:
    benchmark_command_line(__doc__, [TASK], run, build_table, plot, ROOT / "benchmarks" / "results" / "ufc.md")


if __name__ == "__main__":
    sys.exit(main())
