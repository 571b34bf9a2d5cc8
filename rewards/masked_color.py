"""Rich feedback from a user-drawn region: "make this region this colour".

The region comes from the config, either as a box of image fractions or as a mask file,
so a user can ask for a local edit without writing a reward. Pixels outside the region
get no feedback (0 in the map), so a per-pixel objective leaves them alone.

Config mistakes (no region or two, unknown colour, missing file, empty region) raise
ConfigError naming the argument, before any training step is wasted.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rewards.color_likeness import DEFAULT_TAU, color_likeness, to_rgb255
from rewards.errors import ConfigError
from rewards.output import RewardOutput


def resolve_color(color) -> torch.Tensor:
    """A palette name from the Shapes world's COLORS or [r, g, b] in 0..255 -> float (3,)."""
    if isinstance(color, str):
        from genrl.shapes.world import COLORS  # imported when called: genrl imports rewards

        if color not in COLORS:
            raise ConfigError(f"masked_color: color {color!r} is not a palette colour; choose one of {list(COLORS)} or give [r, g, b]")
        return torch.tensor(COLORS[color], dtype=torch.float32)
    try:
        rgb = [float(value) for value in color]
    except (TypeError, ValueError):
        raise ConfigError(f"masked_color: color must be a palette name or [r, g, b] in 0..255, got {color!r}") from None
    if len(rgb) != 3 or not all(0 <= value <= 255 for value in rgb):
        raise ConfigError(f"masked_color: color must be a palette name or [r, g, b] in 0..255, got {color!r}")
    return torch.tensor(rgb, dtype=torch.float32)


def box_mask(box, height: int, width: int) -> torch.Tensor:
    """box = [top, left, bottom, right] as fractions in [0, 1] -> float (H, W) of 0/1."""
    try:
        top, left, bottom, right = (float(value) for value in box)
    except (TypeError, ValueError):
        raise ConfigError(f"masked_color: box must be [top, left, bottom, right] fractions in [0, 1], got {box!r}") from None
    if not (0 <= top <= bottom <= 1 and 0 <= left <= right <= 1):
        raise ConfigError(f"masked_color: box must be [top, left, bottom, right] with 0 <= top <= bottom <= 1 "
                          f"and 0 <= left <= right <= 1, got {box!r}")
    mask = torch.zeros(height, width)
    mask[round(top * height):round(bottom * height), round(left * width):round(right * width)] = 1
    return mask


@functools.lru_cache(maxsize=16)
def _read_mask_file(path: str, mtime: float) -> torch.Tensor:
    """A .png (white = region) or .npy (bool, or float weights in [0, 1]) -> float (h, w)."""
    if path.endswith(".npy"):
        array = np.load(path)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 2:
            raise ConfigError(f"masked_color: mask {path} must be a 2-D array, got shape {array.shape}")
        return torch.from_numpy(np.clip(array.astype(np.float32), 0, 1))
    if path.endswith(".png"):
        gray = np.asarray(Image.open(path).convert("L"))
        return torch.from_numpy((gray >= 128).astype(np.float32))
    raise ConfigError(f"masked_color: mask {path} must be a .png or .npy file")


def file_mask(path, height: int, width: int) -> torch.Tensor:
    """The mask file resized to (H, W) with nearest-neighbour."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"masked_color: mask file {path} does not exist")
    mask = _read_mask_file(str(path), path.stat().st_mtime)
    return F.interpolate(mask[None, None], size=(height, width), mode="nearest-exact")[0, 0]


def masked_color(images: torch.Tensor, prompts: list[str], color="red", box=None, mask=None,
                 tau: float = DEFAULT_TAU) -> RewardOutput:
    """pixel_map = region * s_color (0 outside the region); scores = mean of the map over the region.

    s_color = exp(-||rgb - color||^2 / (2 tau^2)), rgb in 0..255. A float .npy mask acts as
    per-pixel weights: the score is then the weighted mean.
    """
    if (box is None) == (mask is None):
        raise ConfigError("masked_color: give exactly one of box=[top, left, bottom, right] or mask=<path>")
    if not tau > 0:
        raise ConfigError(f"masked_color: tau must be positive, got {tau!r}")
    target = resolve_color(color)
    height, width = images.shape[-2:]
    region = box_mask(box, height, width) if box is not None else file_mask(mask, height, width)
    if region.sum() <= 0:
        argument = f"box {box!r}" if box is not None else f"mask {mask}"
        raise ConfigError(f"masked_color: {argument} selects no pixel at {height}x{width}")
    likeness = color_likeness(to_rgb255(images), target[None], tau)[:, 0]  # (B, H, W)
    pixel_map = likeness * region
    scores = pixel_map.sum((1, 2)) / region.sum()
    return RewardOutput(scores=scores, pixel_map=pixel_map)
