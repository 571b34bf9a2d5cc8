"""Spatial conditions derived exactly from Shapes scenes, for UFC's control adapters, and the reader that
rebuilds a condition from a generated image (the control-fidelity metric).

Every condition is a (H, W) float map in [0, 1] made from the scene's instance masks:
- "mask": the union of the objects' masks;
- "edges": the masks' boundary pixels (a mask minus its erosion);
- "centres": a Gaussian bump (sigma 1.5 px at 32 px) at each object's centroid;
- "boxes": the outline of each object's bounding box.
`read_masks` finds the objects of a generated image the way the Shapes reader does (pixels whose channel
spread is large, split into connected components), so the same condition can be rebuilt from a sample and
compared with the one requested (`condition_iou`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from genrl.errors import ConfigError
from genrl.shapes.world import random_scene, render, to_tensor

CONDITION_TYPES = ("mask", "edges", "centres", "boxes")
_OBJECT_SPREAD = 90.0  # channel max - min above this is an object pixel (backgrounds < ~20, palette > 180)


def condition_map(kind: str, masks: np.ndarray) -> np.ndarray:
    """(H, W) float32 condition of type `kind` from bool instance masks (n, H, W)."""
    if kind not in CONDITION_TYPES:
        raise ConfigError(f"condition type {kind!r} is not one of {', '.join(CONDITION_TYPES)}")
    size = masks.shape[-1]
    out = np.zeros((size, size), dtype=np.float32)
    for mask in masks:
        if not mask.any():
            continue
        if kind == "mask":
            out = np.maximum(out, mask)
        elif kind == "edges":
            out = np.maximum(out, mask & ~ndimage.binary_erosion(mask))
        elif kind == "centres":
            y, x = np.argwhere(mask).mean(axis=0)
            sigma = 1.5 * size / 32
            yy, xx = np.mgrid[:size, :size]
            out = np.maximum(out, np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)))
        else:
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
            out[top, left : right + 1] = out[bottom, left : right + 1] = 1.0
            out[top : bottom + 1, left] = out[top : bottom + 1, right] = 1.0
    return out.astype(np.float32)


def scene_examples(rng: np.random.Generator, count: int, kind: str, image_size: int = 32,
                   num_objects: tuple[int, int] = (1, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 3, H, W) in [-1, 1], conditions (B, 1, H, W)) of fresh random scenes."""
    images, conditions = [], []
    for _ in range(count):
        image, masks = render(random_scene(rng, num_objects, image_size))
        images.append(to_tensor(image))
        conditions.append(torch.from_numpy(condition_map(kind, masks))[None])
    return torch.stack(images), torch.stack(conditions)


def read_masks(image: torch.Tensor) -> np.ndarray:
    """Instance masks (n, H, W) of the objects in a (3, H, W) image in [-1, 1]."""
    pixels = (image.detach().cpu().float().permute(1, 2, 0).numpy() + 1.0) * 127.5
    objects = (pixels.max(axis=2) - pixels.min(axis=2)) > _OBJECT_SPREAD
    labels, count = ndimage.label(objects)
    return np.stack([labels == i for i in range(1, count + 1)]) if count else np.zeros((0, *objects.shape), dtype=bool)


def condition_iou(kind: str, requested: np.ndarray, image: torch.Tensor) -> float:
    """IoU between the requested condition and the one rebuilt from `image` (maps thresholded at 0.5; edge
    and box outlines dilated by one pixel first, so a one-pixel shift is not a total miss)."""
    rebuilt = condition_map(kind, read_masks(image))
    a, b = requested > 0.5, rebuilt > 0.5
    if kind in ("edges", "boxes"):
        a, b = ndimage.binary_dilation(a), ndimage.binary_dilation(b)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
