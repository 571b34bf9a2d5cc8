"""Figures a run writes for people to look at.

`save_before_after_grid`: the same prompts and noise before and after fine-tuning, one row
each, every sample upscaled (nearest neighbour, so pixels stay pixels) to a readable size and
its reward printed under it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

MIN_SAMPLE_SIZE = 96  # pixels per sample on screen, at least
PADDING = 4
FONT_SIZE = 12


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _to_pil(image: torch.Tensor, scale: int) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB image upscaled `scale` times with nearest neighbour."""
    array = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pil = Image.fromarray(array.permute(1, 2, 0).numpy())
    return pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)


def _format_score(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.4g}"


def save_before_after_grid(
    before_images: torch.Tensor,
    after_images: torch.Tensor,
    before_scores: Sequence[float] | torch.Tensor | np.ndarray | None,
    after_scores: Sequence[float] | torch.Tensor | np.ndarray | None,
    path: str | Path,
    scale: int | None = None,
    label: str = "reward",
) -> Path:
    """Write a PNG: a `before` row and an `after` row of samples (images (N, 3, H, W) in [-1, 1],
    the same N prompts and noise in both), each sample's score under it (scores None: none
    printed, e.g. for a run without a reward) and `label` (the reward's name) in the top left.
    `scale` is the integer nearest-neighbour upscaling; by default the smallest that makes a
    sample >= 96 pixels wide."""
    before_images, after_images = before_images.detach(), after_images.detach()
    if before_images.shape != after_images.shape or before_images.dim() != 4:
        raise ValueError(f"before and after images must both be (N, 3, H, W), got {tuple(before_images.shape)} "
                         f"and {tuple(after_images.shape)}")
    count, _, height, width = before_images.shape
    rows = []
    for name, images, scores in (("before", before_images, before_scores), ("after", after_images, after_scores)):
        if scores is not None:
            scores = [float(value) for value in torch.as_tensor(scores, dtype=torch.float64).flatten()]
        if scores is not None and len(scores) != count:
            raise ValueError(f"{len(scores)} {name} scores for {count} samples")
        rows.append((name, images, scores))
    scale = scale or max(1, math.ceil(MIN_SAMPLE_SIZE / min(height, width)))

    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_height = measure.textbbox((0, 0), "Ag-0.9", font=font)[3] + 2
    margin = max(measure.textlength(name, font=font) for name, _, _ in rows) + 2 * PADDING
    cell_width, cell_height = width * scale, height * scale
    header = text_height + PADDING
    row_height = cell_height + text_height + 2 * PADDING
    canvas = Image.new("RGB", (int(margin + count * (cell_width + PADDING) + PADDING), header + 2 * row_height), "white")
    draw = ImageDraw.Draw(canvas)
    if before_scores is not None or after_scores is not None:
        draw.text((PADDING, PADDING // 2), f"{label} under each sample", fill="black", font=font)

    for row, (name, images, scores) in enumerate(rows):
        top = header + row * row_height
        draw.text((PADDING, top + (cell_height - text_height) // 2), name, fill="black", font=font)
        for column, image in enumerate(images):
            left = int(margin + column * (cell_width + PADDING))
            canvas.paste(_to_pil(image, scale), (left, top))
            if scores is None:
                continue
            text = _format_score(scores[column])
            text_left = left + (cell_width - measure.textlength(text, font=font)) / 2
            draw.text((text_left, top + cell_height + PADDING // 2), text, fill="black", font=font)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
