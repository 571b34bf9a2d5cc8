"""A small CNN trained on the Shapes world, whose penultimate features embed Shapes images.

A Frechet distance needs a feature space in which "looks like real data" is measurable;
ImageNet Inception features know nothing about 32x32 coloured shapes on grey textures. This
net is trained to say, for each of the 9 grid cells, which colour and which shape sit there
(or that the cell is empty), so its 64-d features encode exactly the content that defines
the Shapes distribution. Train it with `python scripts/train_shapes_features.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from genrl.errors import CheckpointError, ConfigError
from genrl.shapes.world import COLORS, POSITIONS, SHAPES, Scene

NUM_CELLS = len(POSITIONS)
NUM_COLOR_CLASSES = 1 + len(COLORS)  # 0 = empty cell
NUM_SHAPE_CLASSES = 1 + len(SHAPES)
INPUT_SIZE = 32
DEFAULT_PATH = "models/shapes-features"


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


class ShapesFeatureNet(nn.Module):
    """32x32 images in [-1, 1] -> 64-d features -> ReLU -> per-cell colour and shape logits.

    The features are taken before the ReLU: after it some units are always 0, which makes
    the feature covariance singular (bad for a Frechet distance).
    """

    def __init__(self, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim}
        w = width
        self.trunk = nn.Sequential(
            *_conv(3, w), *_conv(w, 2 * w, stride=2),  # 16x16
            *_conv(2 * w, 2 * w), *_conv(2 * w, 2 * w, stride=2),  # 8x8
            *_conv(2 * w, w),
            # Flattening keeps where things are (pooling to a 3x3 grid trained several times slower).
            nn.Flatten(),
            nn.Linear(w * 8 * 8, 4 * w), nn.ReLU(),
            nn.Linear(4 * w, feature_dim),
        )
        self.color_head = nn.Linear(feature_dim, NUM_CELLS * NUM_COLOR_CLASSES)
        self.shape_head = nn.Linear(feature_dim, NUM_CELLS * NUM_SHAPE_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, feature_dim); other sizes are resized to 32x32 first."""
        if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour logits (B, 9, 6) and shape logits (B, 9, 4); class 0 is "empty"."""
        features = F.relu(self.features(images))
        return (
            self.color_head(features).view(-1, NUM_CELLS, NUM_COLOR_CLASSES),
            self.shape_head(features).view(-1, NUM_CELLS, NUM_SHAPE_CLASSES),
        )

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")


def cell_labels(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell targets from the world's scenes: colour classes (B, 9) and shape classes (B, 9)."""
    colors = torch.zeros(len(scenes), NUM_CELLS, dtype=torch.long)
    shapes = torch.zeros(len(scenes), NUM_CELLS, dtype=torch.long)
    color_names = list(COLORS)
    for row, scene in enumerate(scenes):
        for obj in scene.objects:
            cell = POSITIONS.index(obj.position)
            colors[row, cell] = 1 + color_names.index(obj.color)
            shapes[row, cell] = 1 + SHAPES.index(obj.shape)
    return colors, shapes


def load_shapes_features(path: str | Path = DEFAULT_PATH, device: str | torch.device = "cpu") -> ShapesFeatureNet:
    """The trained feature net from a directory with config.json and model.safetensors (eval mode, frozen)."""
    directory = Path(path)
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise ConfigError(f"no Shapes feature net at {directory} (needs config.json and model.safetensors; "
                          "train one with `python scripts/train_shapes_features.py`)")
    try:
        net = ShapesFeatureNet(**json.loads((directory / "config.json").read_text()))
        net.load_state_dict(load_file(directory / "model.safetensors"))
    except (ValueError, TypeError, RuntimeError, OSError) as error:
        raise CheckpointError(f"Shapes feature net at {directory} is corrupt: {error}") from None
    return net.to(device).eval().requires_grad_(False)
