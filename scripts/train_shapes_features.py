"""Train the Shapes feature net (genrl/metrics/shapes_features.py) on freshly rendered scenes.

    python scripts/train_shapes_features.py --output models/shapes-features --steps 1500 --seed 0

Every step draws a new batch from the Shapes world (1-3 objects, random backgrounds), so
the net never sees an image twice; a held-out set from a separate seed stream measures
per-cell colour and shape accuracy, written to <output>/eval.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from genrl.metrics.shapes_features import ShapesFeatureNet, cell_labels
from genrl.shapes.world import POSITIONS, generate_batch

NUM_OBJECTS = (1, 3)


def batch(rng: np.random.Generator, size: int):
    images, _, scenes = generate_batch(rng, size, num_objects=NUM_OBJECTS)
    return images, *cell_labels(scenes)


@torch.no_grad()
def evaluate(net: ShapesFeatureNet, images: torch.Tensor, colors: torch.Tensor, shapes: torch.Tensor) -> dict:
    """Accuracies over all cells, over occupied cells only, per cell, and for whole scenes."""
    was_training = net.training
    net.eval()
    color_logits, shape_logits = zip(*(net(chunk) for chunk in images.split(512)))
    color_ok = torch.cat(color_logits).argmax(-1) == colors
    shape_ok = torch.cat(shape_logits).argmax(-1) == shapes
    occupied = colors > 0
    net.train(was_training)
    return {
        "color_accuracy": color_ok.float().mean().item(),
        "shape_accuracy": shape_ok.float().mean().item(),
        "occupied_color_accuracy": color_ok[occupied].float().mean().item(),
        "occupied_shape_accuracy": shape_ok[occupied].float().mean().item(),
        "scene_accuracy": (color_ok & shape_ok).all(1).float().mean().item(),
        "per_cell_color_accuracy": dict(zip(POSITIONS, color_ok.float().mean(0).tolist())),
        "per_cell_shape_accuracy": dict(zip(POSITIONS, shape_ok.float().mean(0).tolist())),
    }


def train(output: str, steps: int, seed: int, batch_size: int = 128, lr: float = 2e-3, eval_size: int = 2000,
          threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_seed, eval_seed = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(train_seed)
    held_out = batch(np.random.default_rng(eval_seed), eval_size)
    net = ShapesFeatureNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    # Short linear warm-up, then cosine decay to zero.
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
    )
    start = time.time()
    progress = tqdm(range(steps), desc="shapes features", dynamic_ncols=True)
    for step in progress:
        images, colors, shapes = batch(rng, batch_size)
        color_logits, shape_logits = net(images)
        loss = (F.cross_entropy(color_logits.flatten(0, 1), colors.flatten())
                + F.cross_entropy(shape_logits.flatten(0, 1), shapes.flatten()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            progress.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.time() - start
    metrics = evaluate(net, *held_out)
    report = {
        **metrics,
        "held_out_images": eval_size,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "threads": threads,
        "train_seconds": round(seconds, 1),
        "num_objects": list(NUM_OBJECTS),
        "command": "python scripts/train_shapes_features.py " + " ".join(sys.argv[1:]),
    }
    net.save(output)
    with open(f"{output}/eval.json", "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="models/shapes-features")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-size", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    report = train(args.output, args.steps, args.seed, args.batch_size, args.lr, args.eval_size, args.threads)
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("per_cell")}, indent=2))


if __name__ == "__main__":
    main()
