"""Per-pixel prompt alignment on the Shapes world: rich feedback for pixel-level RL (PXPO).

`shapes_alignment` says *whether* the prompt's objects were drawn; this map says *where*
the image disagrees with the prompt, so a per-pixel objective can push on those pixels.

Definition. For each prompt object (colour, shape, position) the canonical target is the
shape drawn at its grid cell's centre with half-size 4.25 px at 32 px (the middle of the
world's size range), all geometry scaled by H / 32. With the colour likeness
s_c(pixel) = exp(-||rgb - c||^2 / (2 tau^2)) (rgb in 0..255, tau = 60, c a palette colour):

- inside an object's target mask, r = s_{target colour} (the pixel should be that colour);
- outside every target mask, r = 1 - max_c s_c (the pixel should look like no palette
  colour, i.e. be background).

scores = mean of r over the image; info["inside"] / info["outside"] = mean of r over the
target pixels / the other pixels. A shape drawn slightly off the canonical target (the
world jitters positions and sizes) loses a little on its rim, so even the world's own
images score a bit below 1.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from rewards.color_likeness import DEFAULT_TAU, color_likeness, to_rgb255
from rewards.errors import ConfigError
from rewards.output import RewardOutput

TARGET_HALF_SIZE_AT_32 = 4.25


@functools.cache
def palette() -> tuple[list[str], torch.Tensor]:
    """The Shapes world's colour names and their RGB values, float (5, 3) in 0..255."""
    from genrl.shapes.world import COLORS  # imported when called: genrl imports rewards

    return list(COLORS), torch.tensor(list(COLORS.values()), dtype=torch.float32)


def target_mask(color: str, shape: str, position: str, image_size: int) -> np.ndarray:
    """The canonical target of one prompt object: bool (H, W)."""
    from genrl.shapes.world import ShapeObject, cell_center, shape_mask

    obj = ShapeObject(
        color, shape, position,
        center=cell_center(position, image_size),
        size=TARGET_HALF_SIZE_AT_32 * image_size / 32,
    )
    return shape_mask(obj, image_size)


@functools.lru_cache(maxsize=4096)
def target_colors(prompt: str, image_size: int) -> torch.Tensor:
    """Per pixel, the palette index the prompt asks for there, or -1 (background): int (H, W)."""
    from genrl.shapes.world import parse_caption

    try:
        objects = parse_caption(prompt)
    except ValueError as error:
        raise ConfigError(f"shapes_pixel_alignment: prompt {prompt!r} is not a Shapes caption: {error}") from None
    wanted = np.full((image_size, image_size), -1, dtype=np.int64)
    for color, shape, position in objects:
        wanted[target_mask(color, shape, position, image_size)] = palette()[0].index(color)
    return torch.from_numpy(wanted)


def shapes_pixel_alignment(images: torch.Tensor, prompts: list[str]) -> RewardOutput:
    """Map in [0, 1] (B, H, W) of how well each pixel agrees with the prompt's colour and region."""
    height, width = images.shape[-2:]
    if height != width:
        raise ConfigError(f"shapes_pixel_alignment needs square images, got {height}x{width}")
    likeness = color_likeness(to_rgb255(images), palette()[1], DEFAULT_TAU)  # (B, 5, H, W)
    wanted = torch.stack([target_colors(prompt, height) for prompt in prompts])  # (B, H, W)
    inside = wanted >= 0
    on_target = likeness.gather(1, wanted.clamp(min=0)[:, None])[:, 0]
    background = 1 - likeness.amax(1)
    pixel_map = torch.where(inside, on_target, background)
    inside_f = inside.float()
    outside_f = 1 - inside_f
    info = {
        "inside": (pixel_map * inside_f).sum((1, 2)) / inside_f.sum((1, 2)).clamp(min=1),
        "outside": (pixel_map * outside_f).sum((1, 2)) / outside_f.sum((1, 2)).clamp(min=1),
    }
    return RewardOutput(scores=pixel_map.mean((1, 2)), pixel_map=pixel_map, info=info)
