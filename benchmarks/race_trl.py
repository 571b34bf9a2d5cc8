"""Race: trl 0.23.1's DDPOTrainer against genrl's DDPO on the same tiny Stable Diffusion pipeline.

Workload (issue 11, "Speed against the peer"): a random-init SD-1.x-style pipeline built here
(UNet2DConditionModel with 0.99 M parameters, cross-attention at 8x8, a 2-block VAE, a one-layer
CLIP text model, 32x32 px images = 16x16x4 latents), 16 samples x 20 DDIM steps (eta 1) per
epoch in 2 sampling batches of 8, classifier-free guidance 5 (empty prompt), LoRA rank 4 on the
attention projections, every step trained (2 minibatches of 8 chains, one optimizer step per
minibatch), JPEG-compressibility reward (minus the quality-95 JPEG size in kB), per-prompt
reward standardisation, fp32, 2 threads per process.

trl runs in its own virtual environment (`.venv-trl`, created here when missing: the pinned
torch pair from constraints.txt plus trl==0.23.1 and the project's diffusers / transformers /
peft / accelerate versions). The two trainers run alternately, each in a fresh subprocess
(`--pairs` pairs, trl first in odd pairs, genrl first in even pairs), so slow phases of the shared
machine hit both. Epoch time: trl's `DDPOTrainer.step` (sample + reward + advantages + train);
genrl's `time_sampling + time_reward + time_training` from metrics.jsonl. The first epoch of each
run (warm-up) is left out; a run's time is the median of its other epochs.

Run:   .venv/bin/python benchmarks/race_trl.py [--pairs 7] [--epochs 6] [--genrl-src DIR]
Quick: .venv/bin/python benchmarks/race_trl.py --pairs 1 --epochs 3 --tag quick
Each side at its best within the same budget (one sampling batch of 16; genrl backward passes of
160 items, one per optimizer step, which gives the same gradients as passes of 8):
       .venv/bin/python benchmarks/race_trl.py --sample-batch 16 --genrl-items-per-backward 160 --tag batched
Writes benchmarks/results/race_trl{_tag}.{md,json,png}; the pipeline and every run go to a fresh
directory runs/race_trl/<timestamp>/ (never reused, never deleted).

`--genrl-src DIR` runs genrl from another source tree (e.g. `git archive HEAD | tar -x -C DIR`)
with this checkout's venv: the same race against an earlier version of the code. genrl's side is
driven through its CLI; `genrl_command` is the one place that knows its config keys.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = ROOT / ".venv-trl"
PROMPTS = ["cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer", "cow", "goat"]
SEED = 0

# The shared budget, in one place (both sides read it). train_batch_size is trl's: chains per backward
# pass, all at one denoising step; an optimizer step every gradient_accumulation_steps x num_steps passes.
BUDGET = dict(
    sample_batch_size=8, num_sample_batches=2, num_steps=20, eta=1.0, guidance_scale=5.0,
    train_batch_size=8, gradient_accumulation_steps=1, learning_rate=3e-4, clip_range=1e-4, adv_clip_max=5.0,
    stat_buffer_size=16, stat_min_count=16, lora_rank=4, lora_alpha=4.0, max_grad_norm=1.0,
    genrl_items_per_backward=8,  # genrl's train_batch_size: (chain, step) items per backward pass
)


# --------------------------------------------------------------------------- the pipeline
def build_pipeline(directory: Path) -> Path:
    """The tiny SD pipeline, random weights (seed 0), saved like a real one."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_pipelines import write_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(directory / "_tok")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=32)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
    return directory


def child_env() -> dict:
    """Environment of every timed process (both sides alike): 2 OpenMP threads that sleep when idle.

    On a 2-core machine shared with other work, OpenMP's default spin-waiting makes a 2-thread
    process 1.5-25x slower whenever a third busy process appears (measured: one UNet forward of
    this pipeline at batch 16 took 66-72 ms with OMP_WAIT_POLICY=PASSIVE and 106-1707 ms without,
    in alternating runs under load); passive waiting keeps the race about the trainers."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "OMP_NUM_THREADS": "2",
            "OMP_WAIT_POLICY": "PASSIVE", "PYTHONWARNINGS": "ignore"}


# --------------------------------------------------------------------------- trl's side
def ensure_trl_venv() -> Path:
    """`.venv-trl` with trl==0.23.1 and this project's pins (created only if missing)."""
    python = TRL_VENV / "bin/python"
    check = [str(python), "-c", "import trl, diffusers, peft; assert trl.__version__ == '0.23.1'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
    pins = [line.split("==")[0] for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line]
    wanted = ["torch", "torchvision", "diffusers", "transformers", "peft", "accelerate"]
    assert all(name in pins for name in wanted)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt"), "trl==0.23.1", *wanted],
                   check=True)
    subprocess.run(check, check=True)
    return python


TRL_CHILD = r'''
import io, json, sys, time, random
import numpy as np
import torch
torch.set_num_threads(2)
from PIL import Image
from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

pipeline_dir, epochs, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
budget, prompts = json.loads(sys.argv[5]), json.loads(sys.argv[6])
random.seed(seed)

def jpeg_reward(images, prompts, metadata):
    """Minus the quality-95 JPEG size in kB; images (B, 3, H, W) in [0, 1]."""
    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for image in array:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=95)
        sizes.append(buffer.tell() / 1000)
    return -torch.tensor(sizes), {}

config = DDPOConfig(
    exp_name="race", num_epochs=epochs, seed=seed, log_with=None, mixed_precision="no", save_freq=10**6,
    sample_num_steps=budget["num_steps"], sample_eta=budget["eta"], sample_guidance_scale=budget["guidance_scale"],
    sample_batch_size=budget["sample_batch_size"], sample_num_batches_per_epoch=budget["num_sample_batches"],
    train_batch_size=budget["train_batch_size"], train_gradient_accumulation_steps=budget["gradient_accumulation_steps"],
    train_learning_rate=budget["learning_rate"], train_clip_range=budget["clip_range"],
    train_adv_clip_max=budget["adv_clip_max"], train_max_grad_norm=budget["max_grad_norm"], train_timestep_fraction=1.0,
    train_num_inner_epochs=1, per_prompt_stat_tracking=True,
    per_prompt_stat_tracking_buffer_size=budget["stat_buffer_size"],
    per_prompt_stat_tracking_min_count=budget["stat_min_count"], project_kwargs={"project_dir": out},
)
from accelerate import PartialState
PartialState()  # trl's pipeline logs through accelerate, which needs its state first
pipeline = DefaultDDPOStableDiffusionPipeline(pipeline_dir, use_lora=True)
trainer = DDPOTrainer(config, jpeg_reward, lambda: (random.choice(prompts), {}), pipeline)

# Time the phases by wrapping the trainer's own methods (no change to what they do).
phase = {}
def timed(name, fn):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phase[name] = phase.get(name, 0.0) + time.perf_counter() - started
    return wrapper
trainer._generate_samples = timed("time_sampling", trainer._generate_samples)
trainer.compute_rewards = timed("time_reward", trainer.compute_rewards)
trainer._train_batched_samples = timed("time_training", trainer._train_batched_samples)
rewards = []
original_reward = trainer.reward_fn
def recording_reward(images, prompts, metadata):
    scores, info = original_reward(images, prompts, metadata)
    rewards.append(scores)
    return scores, info
trainer.reward_fn = recording_reward

records, global_step = [], 0
for epoch in range(epochs):
    phase.clear(); rewards.clear()
    started = time.perf_counter()
    global_step = trainer.step(epoch, global_step)
    seconds = time.perf_counter() - started
    epoch_rewards = torch.cat(rewards)
    records.append({"epoch": epoch + 1, "seconds": seconds, "reward_mean": float(epoch_rewards.mean()), **phase})
    print(json.dumps(records[-1]), flush=True)
print("RESULT " + json.dumps(records))
'''


def run_trl(python: Path, pipeline: Path, out: Path, epochs: int, budget: dict = BUDGET) -> list[dict]:
    out.mkdir(parents=True)
    script = out / "trl_child.py"
    script.write_text(TRL_CHILD)
    env = {**child_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([str(python), str(script), str(pipeline), str(epochs), str(SEED), str(out),
                             json.dumps(budget), json.dumps(PROMPTS)], cwd=out, env=env, capture_output=True, text=True)
    (out / "log.txt").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"trl run failed, see {out / 'log.txt'}:\n{result.stderr[-2000:]}")
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# --------------------------------------------------------------------------- genrl's side
def genrl_command(src: Path, pipeline: Path, out: Path, epochs: int, budget: dict = BUDGET) -> tuple[list[str], dict]:
    """The genrl invocation: its CLI with the keys of configs/ddpo/sd15_compressibility.yaml (as of
    commit c5176a1: `rollout.*`, `ppo.*`, `train_batch_size` = (chain, step) items per backward pass).
    The ONLY place that knows genrl's config keys (adapt here when the schema changes).

    Budget as trl's: an optimizer step every 8 chains x 20 steps = 160 items (2 per epoch on both
    sides), in backward passes of `genrl_items_per_backward` items (8 = trl's pass: 8 chains at one step)."""
    b = budget
    items_per_optimizer_step = b["train_batch_size"] * b["gradient_accumulation_steps"] * b["num_steps"]
    if items_per_optimizer_step % b["genrl_items_per_backward"]:
        raise ValueError(f"genrl_items_per_backward must divide {items_per_optimizer_step}")
    passes_per_step = items_per_optimizer_step // b["genrl_items_per_backward"]
    overrides = [
        f"model.path={pipeline}", f"output_dir={out}", "model.resolution=32", "model.decode_chunk_size=16",
        "model.gradient_checkpointing=false", "model.save_merged_model=false", "mixed_precision=no", "log_with=[]",
        f"seed={SEED}", f"num_epochs={epochs}", f"checkpoint_every={10**6}",
        f"sampler.num_steps={b['num_steps']}", f"sampler.eta={b['eta']}", f"sampler.guidance_scale={b['guidance_scale']}",
        f"rollout.batch_size={b['sample_batch_size']}", f"rollout.num_batches={b['num_sample_batches']}",
        "rollout.prompts.source=list", "rollout.prompts.prompts=[" + ",".join(PROMPTS) + "]",
        "rollout.eval_samples=4", "rollout.eval_group_size=1", "rollout.grid_prompts=4",
        f"train_batch_size={b['genrl_items_per_backward']}", f"gradient_accumulation_steps={passes_per_step}",
        f"optimizer.learning_rate={b['learning_rate']}", f"optimizer.max_grad_norm={b['max_grad_norm']}",
        "optimizer.weight_decay=1e-4", f"ppo.clip_range={b['clip_range']}", f"ppo.adv_clip_max={b['adv_clip_max']}",
        "ppo.timestep_fraction=1.0", "ppo.update_epochs=1", "ppo.per_group_advantages=true",
        f"ppo.stat_buffer_size={b['stat_buffer_size']}", f"ppo.stat_min_count={b['stat_min_count']}",
        f"lora.rank={b['lora_rank']}", f"lora.alpha={b['lora_alpha']}",
    ]
    command = [str(ROOT / ".venv/bin/python"), "-c",
               "import sys, torch; torch.set_num_threads(2); from genrl.cli import main; main()",
               "train", str(src / "configs/ddpo/sd15_compressibility.yaml"), *overrides]
    return command, {"PYTHONPATH": str(src)}


def run_genrl(src: Path, pipeline: Path, out: Path, epochs: int, budget: dict = BUDGET) -> list[dict]:
    command, extra_env = genrl_command(src, pipeline, out / "run", epochs, budget)
    out.mkdir(parents=True)
    env = {**child_env(), **extra_env}
    result = subprocess.run(command, cwd=src, env=env, capture_output=True, text=True)
    (out / "log.txt").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"genrl run failed, see {out / 'log.txt'}:\n{result.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "run/metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"epoch": r["epoch"], "seconds": r["time_sampling"] + r["time_reward"] + r["time_training"],
             "reward_mean": r["reward_mean"], **{k: r[k] for k in ("time_sampling", "time_reward", "time_training")}}
            for r in records]


# --------------------------------------------------------------------------- the race
def run_seconds(records: list[dict]) -> float:
    """A run's epoch time: the median over its epochs after the first (warm-up)."""
    return statistics.median(r["seconds"] for r in records[1:])


def phase_medians(records: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in records[1:]) for k in ("time_sampling", "time_reward", "time_training")}


def _panel(draw, box, series, title, ylabel, fmt: str = "{:.2f}") -> None:
    """One line chart in `box` (x0, y0, x1, y1) of a PIL image: series = [(colour, [(x, y), ...]), ...]."""
    x0, y0, x1, y1 = box
    points = [p for _, line in series for p in line]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xmin, xmax = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    pad = 0.05 * ((max(ys) - min(ys)) or 1.0)
    ymin, ymax = min(ys) - pad, max(ys) + pad
    left, bottom = x0 + 60, y1 - 30
    draw.rectangle([left, y0 + 20, x1 - 10, bottom], outline="black")
    draw.text((left, y0 + 3), title, fill="black")
    draw.text((x0 + 2, y0 + 20), ylabel, fill="black")
    to_px = lambda x, y: (left + (x - xmin) / (xmax - xmin) * (x1 - 10 - left),  # noqa: E731
                          bottom - (y - ymin) / (ymax - ymin) * (bottom - y0 - 20))
    for k in range(5):
        value = ymin + k * (ymax - ymin) / 4
        draw.text((x0 + 2, to_px(xmin, value)[1] - 5), fmt.format(value), fill="black")
    for x in sorted(set(xs)):
        draw.text((to_px(x, ymin)[0] - 3, bottom + 5), str(x), fill="black")
    draw.text(((left + x1) // 2 - 15, bottom + 16), "epoch", fill="black")
    for colour, line in series:
        pixels = [to_px(x, y) for x, y in line]
        draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)


def plot(results: dict, path: Path) -> None:
    """Epoch times and reward curves of every run (trl orange, genrl blue), drawn with PIL."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (1100, 420), "white")
    draw = ImageDraw.Draw(image)
    colours = {"trl": (230, 120, 20), "genrl": (30, 100, 200)}
    for key, box, title, fmt in (("seconds", (0, 0, 550, 400), "seconds per epoch, every run (orange trl, blue genrl)", "{:.1f}"),
                                 ("reward_mean", (550, 0, 1100, 400),
                                  "mean reward = -JPEG kB (orange trl, blue genrl; runs of a side coincide)", "{:.4f}")):
        series = [(colours[name], [(r["epoch"], r[key]) for r in pair[name]]) for pair in results["pairs"] for name in colours]
        _panel(draw, box, series, title, "", fmt)
    image.save(path)


def write_results(results: dict, tag: str) -> None:
    name = "race_trl" + (f"_{tag}" if tag else "")
    directory = ROOT / "benchmarks/results"
    (directory / f"{name}.json").write_text(json.dumps(results, indent=1))
    ratios, b = [p["ratio"] for p in results["pairs"]], results["budget"]
    lines = [
        "# Race: trl 0.23.1 DDPOTrainer vs genrl DDPO (tiny SD pipeline, CPU, 2 threads)", "",
        f"Command: `{results['command']}`  ", f"genrl source: `{results['genrl_src']}`; started {results['started']}.", "",
        f"Workload: 16 samples x 20 DDIM steps (eta 1) per epoch in {b['num_sample_batches']} sampling batch(es) of "
        f"{b['sample_batch_size']}, CFG 5, LoRA r4, every step trained, an optimizer step every 160 (chain, step) items "
        f"(2 per epoch), JPEG reward, 32 px (16x16x4 latents), UNet 0.99 M parameters, fp32, 2 OpenMP threads "
        f"(OMP_WAIT_POLICY=PASSIVE) per process. Backward passes: trl {b['train_batch_size']} chains at one step "
        f"(its structure); genrl {b['genrl_items_per_backward']} (chain, step) items.", "",
        f"**trl epoch time / genrl epoch time: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}** "
        f"over {len(ratios)} alternating pairs ({results['epochs']} epochs per run; a run's time is the median of epochs 2..).", "",
        "| pair | first | trl s/epoch | genrl s/epoch | trl/genrl | trl sample / reward / train s | genrl sample / reward / train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(results["pairs"], 1):
        t, g = p["trl_phases"], p["genrl_phases"]
        lines.append(f"| {i} | {p['first']} | {p['trl_seconds']:.2f} | {p['genrl_seconds']:.2f} | {p['ratio']:.2f} | "
                     f"{t['time_sampling']:.2f} / {t['time_reward']:.2f} / {t['time_training']:.2f} | "
                     f"{g['time_sampling']:.2f} / {g['time_reward']:.2f} / {g['time_training']:.2f} |")
    lines += ["", "Mean reward per epoch (pair 1):", "",
              "| epoch | " + " | ".join(str(r["epoch"]) for r in results["pairs"][0]["trl"]) + " |",
              "|---" * (1 + len(results["pairs"][0]["trl"])) + "|"]
    for side in ("trl", "genrl"):
        lines.append(f"| {side} | " + " | ".join(f"{r['reward_mean']:.3f}" for r in results["pairs"][0][side]) + " |")
    lines += ["", f"Plot: `benchmarks/results/{name}.png`. trl's epoch time is `DDPOTrainer.step`; genrl's is "
              "time_sampling + time_reward + time_training from its metrics.jsonl. trl's sampling phase includes "
              "its text encoding and VAE decode; genrl's VAE decode is in its reward phase. The two sides draw "
              "different prompts and noise, so their reward curves agree in level, not sample by sample."]
    (directory / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(results, directory / f"{name}.png")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--genrl-src", type=Path, default=ROOT, help="genrl source tree to race (default: this checkout)")
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. quick)")
    parser.add_argument("--sample-batch", type=int, default=8, choices=(8, 16),
                        help="chains per sampling batch on both sides (16 samples per epoch either way)")
    parser.add_argument("--genrl-items-per-backward", type=int, default=8,
                        help="genrl's train_batch_size ((chain, step) items per backward; 8 = trl's pass); the optimizer "
                             "still steps every 160 items, so the gradients are the same")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up)")
    started = time.strftime("%Y%m%d-%H%M%S")
    work = ROOT / "runs/race_trl" / started
    work.mkdir(parents=True, exist_ok=False)  # a fresh directory; refuse to reuse one
    budget = dict(BUDGET, sample_batch_size=args.sample_batch, num_sample_batches=16 // args.sample_batch,
                  genrl_items_per_backward=args.genrl_items_per_backward)
    python = ensure_trl_venv()
    pipeline = build_pipeline(work / "pipeline")
    results = {"command": "python benchmarks/race_trl.py " + " ".join(sys.argv[1:]), "genrl_src": str(args.genrl_src),
               "started": started, "epochs": args.epochs, "budget": budget, "work_dir": str(work), "pairs": []}
    for pair in range(args.pairs):
        order = ("trl", "genrl") if pair % 2 == 0 else ("genrl", "trl")
        records = {}
        for name in order:
            out = work / f"pair{pair + 1}_{name}"
            records[name] = (run_trl(python, pipeline, out, args.epochs, budget) if name == "trl"
                             else run_genrl(args.genrl_src.resolve(), pipeline, out, args.epochs, budget))
        trl_s, genrl_s = run_seconds(records["trl"]), run_seconds(records["genrl"])
        results["pairs"].append({"first": order[0], "trl": records["trl"], "genrl": records["genrl"], "trl_seconds": trl_s,
                                 "genrl_seconds": genrl_s, "ratio": trl_s / genrl_s,
                                 "trl_phases": phase_medians(records["trl"]), "genrl_phases": phase_medians(records["genrl"])})
        print(f"pair {pair + 1}: trl {trl_s:.2f} s/epoch, genrl {genrl_s:.2f} s/epoch, ratio {trl_s / genrl_s:.2f}", flush=True)
    write_results(results, args.tag)


if __name__ == "__main__":
    main()
