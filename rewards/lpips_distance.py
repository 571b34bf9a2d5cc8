"""LPIPS perceptual distance (the `lpips` package), for diversity metrics and distillation losses.

The package ships its calibrated linear layers; the backbone's ImageNet weights normally
come from torchvision's download, which is unavailable offline: pass `backbone_weights`, a
local torchvision state-dict file for the backbone, or `random_backbone=True` (tests only).
"""

from __future__ import annotations

import functools
from itertools import combinations
from pathlib import Path

import torch

from rewards.errors import CheckpointError


@functools.lru_cache(maxsize=2)
def load_lpips(net: str = "alex", backbone_weights: str | None = None, random_backbone: bool = False):
    import lpips

    if backbone_weights is None and not random_backbone:
        raise CheckpointError("LPIPS needs `backbone_weights` (a local torchvision state dict) or random_backbone=True")
    model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    if backbone_weights is not None:
        if not Path(backbone_weights).is_file():
            raise CheckpointError(f"LPIPS backbone weights file {backbone_weights} does not exist")
        state = torch.load(backbone_weights, map_location="cpu", weights_only=True)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        # lpips splits the torchvision `features` stack into slices that keep the original indices.
        for slice_module in (getattr(model.net, f"slice{i}") for i in range(1, 6) if hasattr(model.net, f"slice{i}")):
            own = {name: features[name] for name in slice_module.state_dict() if name in features}
            slice_module.load_state_dict(own, strict=True)
    return model.eval().requires_grad_(False)


def lpips_distance(a: torch.Tensor, b: torch.Tensor, **loader_kwargs) -> torch.Tensor:
    """Per-pair LPIPS between image batches in [-1, 1], shape (B,)."""
    model = load_lpips(**loader_kwargs).to(a.device)
    return model(a, b).flatten()


def mean_pairwise_lpips(images: torch.Tensor, groups: list[str], **loader_kwargs) -> float:
    """Diversity: mean LPIPS over pairs of samples that share a prompt (NaN if no pair)."""
    pairs = [(i, j) for i, j in combinations(range(len(groups)), 2) if groups[i] == groups[j]]
    if not pairs:
        return float("nan")
    first, second = zip(*pairs)
    return lpips_distance(images[list(first)], images[list(second)], **loader_kwargs).mean().item()
