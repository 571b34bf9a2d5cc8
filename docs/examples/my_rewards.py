"""A user's own reward, used as `rollout.reward.name=my_rewards:redness` (this folder on PYTHONPATH)."""

import torch


def redness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Images in [-1, 1], (B, 3, H, W): how much redder than green and blue, one score per image."""
    red, green, blue = images.unbind(dim=1)
    return (red - (green + blue) / 2).mean(dim=(1, 2))
