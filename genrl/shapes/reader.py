"""An analytic reader for Shapes-world images: recovers (colour, shape, position) objects.

It needs no training, so it can score diffusion samples as an exact, dense reward.
It is deliberately tolerant: pixels are assigned to the nearest palette colour
within a distance, shapes are told apart by coarse geometry, and positions are
the grid cell of the blob's centroid.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from genrl.shapes.world import COLORS, POSITIONS, parse_caption

_PALETTE_NAMES = list(COLORS)
_PALETTE = np.asarray([COLORS[name] for name in _PALETTE_NAMES], dtype=np.float32)  # (5, 3)

# Backgrounds have a channel spread (max - min) below ~20; palette colours above 180.
# The thresholds sit far from both so noisy or slightly washed-out samples still read.
_MIN_SATURATION = 80.0
_MIN_BRIGHTNESS = 110.0
_MAX_PALETTE_DISTANCE = 120.0  # palette colours are >= ~180 apart, so this never reaches another
_MIN_AREA_AT_32 = 6  # blobs smaller than this (at 32 x 32) are noise, not shapes
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# Shape features.  At the bounding-box corners a square is filled, a circle is empty
# and an upward triangle is filled only at the bottom; a triangle's mass also sits
# low in its box (centroid ~1/6 of the height below the middle, ~0 for the others).
_CORNER_PATCH_FRACTION = 0.15
_CORNER_FILLED = 0.5
_TRIANGLE_CENTROID_OFFSET = 0.08


@dataclass
class DetectedObject:
    color: str
    shape: str
    position: str
    center: tuple[float, float]  # (x, y) in pixels
    area: int


def to_uint8_image(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 (H, W, 3) as is; float (3, H, W) or (H, W, 3) in [-1, 1] (torch or numpy) converted."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy() if image.is_floating_point() else image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected a single image with 3 dimensions, got shape {image.shape}")
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.dtype == np.uint8:
        return image
    return np.clip(np.round((image.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def palette_labels(image: np.ndarray) -> np.ndarray:
    """Per-pixel palette index (H, W) int; -1 where the pixel is background."""
    pixels = image.astype(np.float32)
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    brightness = pixels.max(axis=-1)
    distances = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, 5)
    nearest = distances.argmin(axis=-1)
    is_shape = (
        (saturation >= _MIN_SATURATION)
        & (brightness >= _MIN_BRIGHTNESS)
        & (distances.min(axis=-1) <= _MAX_PALETTE_DISTANCE)
    )
    return np.where(is_shape, nearest, -1)


def classify_shape(blob: np.ndarray) -> str:
    """Name the shape of a bool mask cropped to its bounding box."""
    height, width = blob.shape
    k = max(1, int(min(height, width) * _CORNER_PATCH_FRACTION))
    top = (blob[:k, :k].mean() + blob[:k, -k:].mean()) / 2
    bottom = (blob[-k:, :k].mean() + blob[-k:, -k:].mean()) / 2
    rows = np.nonzero(blob)[0] + 0.5
    centroid_offset = (rows.mean() - height / 2) / height  # > 0: mass sits low
    if top >= _CORNER_FILLED:
        return "square"
    if bottom >= _CORNER_FILLED or centroid_offset >= _TRIANGLE_CENTROID_OFFSET:
        return "triangle"
    return "circle"


def _position_of(center: tuple[float, float], height: int, width: int) -> str:
    col = min(2, max(0, int(center[0] * 3 / width)))
    row = min(2, max(0, int(center[1] * 3 / height)))
    return POSITIONS[row * 3 + col]


def read_objects(image: np.ndarray | torch.Tensor) -> list[DetectedObject]:
    """Detect coloured shapes, listed in POSITIONS order (then left to right)."""
    image = to_uint8_image(image)
    height, width = image.shape[:2]
    min_area = max(2, round(_MIN_AREA_AT_32 * height * width / 32**2))
    labels = palette_labels(image)
    detected: list[DetectedObject] = []
    for color_index, color in enumerate(_PALETTE_NAMES):
        color_mask = labels == color_index
        if not color_mask.any():
            continue
        # Filling holes keeps a few noisy pixels inside a shape from changing its geometry.
        color_mask = ndimage.binary_fill_holes(color_mask)
        components, count = ndimage.label(color_mask, structure=_EIGHT_CONNECTED)
        for component_slice, component_id in zip(ndimage.find_objects(components), range(1, count + 1)):
            blob = components[component_slice] == component_id
            area = int(blob.sum())
            if area < min_area:
                continue
            rows, cols = np.nonzero(blob)
            center = (
                float(cols.mean() + 0.5 + component_slice[1].start),
                float(rows.mean() + 0.5 + component_slice[0].start),
            )
            detected.append(DetectedObject(
                color, classify_shape(blob), _position_of(center, height, width), center, area
            ))
    detected.sort(key=lambda obj: (POSITIONS.index(obj.position), obj.center[0]))
    return detected


def _object_triples(image: np.ndarray | torch.Tensor) -> Counter[tuple[str, str, str]]:
    return Counter((obj.color, obj.shape, obj.position) for obj in read_objects(image))


def prompt_match(image: np.ndarray | torch.Tensor, prompt: str) -> bool:
    """True iff the image shows exactly the prompt's objects: no more, no fewer."""
    return _object_triples(image) == Counter(parse_caption(prompt))


def object_recall(image: np.ndarray | torch.Tensor, prompt: str) -> float:
    """Share of the prompt's objects found (colour, shape and position); extras cost nothing."""
    wanted = Counter(parse_caption(prompt))
    found = _object_triples(image) & wanted
    return sum(found.values()) / sum(wanted.values())
