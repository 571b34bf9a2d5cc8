"""Per-dimension normalisation of observations and actions, saved WITH the policy.

Diffusion Policy clips its denoised samples to [-1, 1], so actions are min-max scaled to
that range ("limits"); observations use the same by default, or mean/std ("gaussian").
A policy that runs with statistics other than the ones it was trained with fails silently
(the robot moves, just wrongly), which is why the statistics live in the policy's own
directory (`normalizer.json`) and loading refuses a policy without them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from genrl.errors import CheckpointError

Mode = Literal["limits", "gaussian"]
NORMALIZER_FILE = "normalizer.json"
_MIN_RANGE = 1e-4  # a dimension that never varies is shifted to 0, not blown up


class FieldNormalizer:
    """x_normalised = (x - offset) / scale, per dimension."""

    def __init__(self, offset: np.ndarray, scale: np.ndarray, mode: Mode):
        self.offset = np.asarray(offset, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.mode = mode

    @classmethod
    def fit(cls, data: np.ndarray, mode: Mode) -> "FieldNormalizer":
        data = np.asarray(data, dtype=np.float64).reshape(-1, data.shape[-1])
        if mode == "limits":
            low, high = data.min(axis=0), data.max(axis=0)
            offset, scale = (high + low) / 2, np.maximum((high - low) / 2, _MIN_RANGE)
        else:
            offset, scale = data.mean(axis=0), np.maximum(data.std(axis=0), _MIN_RANGE)
        return cls(offset, scale, mode)

    @property
    def dim(self) -> int:
        return self.offset.shape[0]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        offset, scale = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in (self.offset, self.scale))
        return (x - offset) / scale

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        offset, scale = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in (self.offset, self.scale))
        return x * scale + offset

    def to_dict(self) -> dict:
        return {"mode": self.mode, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "FieldNormalizer":
        return cls(np.array(data["offset"]), np.array(data["scale"]), data["mode"])


class Normalizer:
    """The observation and action normalisers of one policy."""

    def __init__(self, obs: FieldNormalizer, action: FieldNormalizer):
        self.obs, self.action = obs, action

    @classmethod
    def fit(cls, observations: np.ndarray, actions: np.ndarray, obs_mode: Mode = "limits") -> "Normalizer":
        return cls(FieldNormalizer.fit(observations, obs_mode), FieldNormalizer.fit(actions, "limits"))

    def save(self, directory: str | Path) -> None:
        data = {"obs": self.obs.to_dict(), "action": self.action.to_dict()}
        (Path(directory) / NORMALIZER_FILE).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> "Normalizer":
        path = Path(directory) / NORMALIZER_FILE
        if not path.is_file():
            raise CheckpointError(
                f"policy {directory} has no {NORMALIZER_FILE}: without the training data's normalisation statistics "
                "its actions would be silently wrong"
            )
        try:
            data = json.loads(path.read_text())
            return cls(FieldNormalizer.from_dict(data["obs"]), FieldNormalizer.from_dict(data["action"]))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{path} is corrupt: {error}") from None
