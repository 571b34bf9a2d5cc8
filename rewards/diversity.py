"""Sample diversity per prompt: do samples for the same prompt differ from each other?

RL fine-tuning tends to collapse onto one high-reward image per prompt; the mean distance
between samples that share a prompt tracks that collapse. Only same-prompt pairs count, so
the metric is not inflated by prompts simply asking for different images.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import torch

from rewards.errors import ConfigError

METRICS = ("pixel", "lpips")


def pairwise_pixel_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square difference per pair, in [-1, 1] pixel units: (N, ...) x (N, ...) -> (N,)."""
    diff = a.detach().float() - b.detach().float()
    return diff.pow(2).flatten(1).mean(1).sqrt()


def same_prompt_pairs(prompts: list[str]) -> list[tuple[int, int]]:
    return [(i, j) for i, j in combinations(range(len(prompts)), 2) if prompts[i] == prompts[j]]


def check_diversity_options(metric: str, lpips_weights: str | Path | None = None, lpips_random_backbone: bool = False) -> None:
    """Fail before any sampling on options that cannot work: an unknown metric, LPIPS without a
    backbone (the ImageNet weights cannot be downloaded here), a weights file that is not there."""
    if metric not in METRICS:
        raise ConfigError(f"prompt_diversity: metric {metric!r} is unknown; choose one of {list(METRICS)}")
    if metric != "lpips":
        if lpips_weights is not None or lpips_random_backbone:
            raise ConfigError(f"prompt_diversity: LPIPS weights only apply to metric 'lpips', not {metric!r}")
        return
    if lpips_weights is None and not lpips_random_backbone:
        raise ConfigError("prompt_diversity: metric 'lpips' needs the backbone's weights, a local torchvision AlexNet "
                          "state dict (lpips_weights=...; random_backbone only for tests)")
    if lpips_weights is not None and not Path(lpips_weights).is_file():
        raise ConfigError(f"prompt_diversity: LPIPS backbone weights file {lpips_weights} does not exist")


def prompt_diversity(images: torch.Tensor, prompts: list[str], metric: str = "pixel", *,
                     lpips_weights: str | Path | None = None, lpips_random_backbone: bool = False) -> float:
    """Mean distance over pairs of samples that share a prompt; NaN when no two samples do.

    metric "pixel": pairwise_pixel_distance. "lpips": LPIPS with an AlexNet backbone
    (rewards.lpips_distance) whose weights come from `lpips_weights`, a local torchvision
    state-dict file (e.g. alexnet-owt-7be5be79.pth); `lpips_random_backbone=True` uses a
    random backbone instead, for tests only.
    """
    check_diversity_options(metric, lpips_weights, lpips_random_backbone)
    pairs = same_prompt_pairs(prompts)
    if not pairs:
        return float("nan")
    first, second = (list(index) for index in zip(*pairs))
    if metric == "lpips":
        from rewards.lpips_distance import lpips_distance

        weights = None if lpips_weights is None else str(lpips_weights)
        distances = lpips_distance(images[first].detach().float(), images[second].detach().float(), net="alex",
                                   backbone_weights=weights, random_backbone=lpips_random_backbone)
        return distances.mean().item()
    return pairwise_pixel_distance(images[first], images[second]).mean().item()
