"""How small can a 32x32 Shapes image get as a quality-95 JPEG? (context for the DDPO figures)

Prints the JPEG size of a flat image (the format's fixed cost: headers, quantisation and
Huffman tables), and of real Shapes-world images by background kind (one object each).

Run:  .venv/bin/python benchmarks/jpeg_floor.py   -> benchmarks/results/jpeg_floor.md
"""

from pathlib import Path

import numpy as np
import torch

from genrl.shapes import generate_batch
from rewards.jpeg import jpeg_size_kb

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    lines = ["# JPEG size floor of 32x32 Shapes images (quality 95, PIL)", "",
             "Command: `.venv/bin/python benchmarks/jpeg_floor.py`", "", "| image | mean kB | n |", "|---|---|---|"]
    flat = jpeg_size_kb(torch.full((1, 3, 32, 32), -0.6)).item()
    lines.append(f"| flat grey (fixed cost of the format) | {flat:.3f} | 1 |")
    images, _, scenes = generate_batch(np.random.default_rng(0), 600, num_objects=(1, 1))
    sizes = jpeg_size_kb(images)
    kinds = np.array([scene.background.kind for scene in scenes])
    for kind in sorted(set(kinds)):
        chosen = torch.from_numpy(kinds == kind)
        lines.append(f"| one shape, {kind} background | {sizes[chosen].mean().item():.3f} | {int(chosen.sum())} |")
    lines.append(f"| one shape, all backgrounds | {sizes.mean().item():.3f} | {len(sizes)} |")
    (ROOT / "benchmarks/results/jpeg_floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
