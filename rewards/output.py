"""What a reward function returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RewardOutput:
    """scores: (B,) one scalar per sample, higher is better.
    pixel_map: optional (B, H, W) per-pixel reward (rich feedback, used by PXPO).
    info: extra per-sample tensors (B,) that are logged but not optimised.
    """

    scores: torch.Tensor
    pixel_map: torch.Tensor | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)
