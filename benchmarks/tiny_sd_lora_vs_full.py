"""Benchmark: DDPO epoch time and peak memory on a tiny Stable-Diffusion-style pipeline,
LoRA (rank 4 on attention) vs full fine-tuning of the UNet.

The pipeline is built from configs with random weights (tests/tiny_pipelines.py), at 32x32
pixels (16x16x4 latents; its VAE downsamples 2x), so the figures measure the trainer's own overheads on CPU, not
Stable Diffusion's cost. Each variant runs in a fresh process so peak RSS is its own.

Run:  .venv/bin/python benchmarks/tiny_sd_lora_vs_full.py
Writes benchmarks/results/tiny_sd_lora_vs_full.{json,md}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(2)
from genrl.config import load_config
from genrl.trainers import train
from genrl.run_dir import read_metrics
pipeline, out, lora = sys.argv[1], sys.argv[2], sys.argv[3]
config = load_config("train", "configs/ddpo/sd15_compressibility.yaml", [
    f"model.path={pipeline}", f"output_dir={out}", f"lora.enabled={lora}", "model.resolution=32",
    "model.gradient_checkpointing=false", "model.save_merged_model=false", "mixed_precision=no",
    "rollout.batch_size=8", "rollout.num_batches=2", "train_batch_size=4", "gradient_accumulation_steps=2",
    "sampler.num_steps=10", "rollout.eval_samples=8", "num_epochs=%d", "log_with=[]", "rollout.prompts.prompts=[cat,dog,fish,bird]"])
train(config)
records = read_metrics(f"{out}/metrics.jsonl")[1:]  # epoch 1 includes one-time warm-up
epoch = [r["time_sampling"] + r["time_reward"] + r["time_training"] for r in records]
print(json.dumps({"seconds_per_epoch": sum(epoch) / len(epoch), "time_training": sum(r["time_training"] for r in records) / len(records),
                  "time_sampling": sum(r["time_sampling"] for r in records) / len(records),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""" % EPOCHS


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_pipelines import build_tiny_sd

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = build_tiny_sd(Path(tmp) / "sd", sample_size=16)
        for name, lora in (("lora", "true"), ("full", "false")):
            output = subprocess.run([sys.executable, "-c", CHILD, str(pipeline), f"{tmp}/{name}", lora], cwd=ROOT,
                                    capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
            results[name] = json.loads(output.stdout.strip().splitlines()[-1])
    results["command"] = ".venv/bin/python benchmarks/tiny_sd_lora_vs_full.py"
    (ROOT / "benchmarks/results/tiny_sd_lora_vs_full.json").write_text(json.dumps(results, indent=1))
    lines = ["# DDPO on a tiny SD pipeline: LoRA vs full fine-tuning (CPU, 2 threads)", "",
             f"Command: `{results['command']}`; 16 samples x 10 DDIM steps per epoch, 32x32 px, mean of epochs 2-{EPOCHS}.", "",
             "| variant | s / epoch | sampling s | training s | peak RSS MiB |", "|---|---|---|---|---|"]
    for name in ("lora", "full"):
        r = results[name]
        lines.append(f"| {name} | {r['seconds_per_epoch']:.2f} | {r['time_sampling']:.2f} | {r['time_training']:.2f} | {r['peak_rss_mib']:.0f} |")
    (ROOT / "benchmarks/results/tiny_sd_lora_vs_full.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
