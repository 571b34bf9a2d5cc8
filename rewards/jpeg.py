"""JPEG (in)compressibility, DDPO's first tasks: the size of the image as a quality-95 JPEG.

The size is a crude but verifiable proxy for visual simplicity; DDPO reports it in kB and
optimises minus the size (compressibility) or plus the size (incompressibility).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from rewards.output import RewardOutput


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).cpu().numpy()


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    sizes = []
    for image in to_uint8(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes)


def jpeg_compressibility(images: torch.Tensor, prompts: list[str], quality: int = 95) -> RewardOutput:
    size = jpeg_size_kb(images, quality)
    return RewardOutput(scores=-size, info={"jpeg_kb": size})


def jpeg_incompressibility(images: torch.Tensor, prompts: list[str], quality: int = 95) -> RewardOutput:
    size = jpeg_size_kb(images, quality)
    return RewardOutput(scores=size, info={"jpeg_kb": size})
