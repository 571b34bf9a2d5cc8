"""Rewards a tiny random-init model can learn within a few epochs, plugged in as `toy_rewards:NAME`
the way a user plugs in a reward from their own module."""

import torch

from rewards import RewardOutput


def brightness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Mean pixel value: a plain tensor of scores, as a user's function may return."""
    return images.float().mean(dim=(1, 2, 3))


def brightness_map(images: torch.Tensor, prompts: list[str]) -> RewardOutput:
    """Per-pixel brightness (PXPO's reward map); the score is its mean."""
    pixel_map = images.float().mean(dim=1)
    return RewardOutput(scores=pixel_map.mean(dim=(1, 2)), pixel_map=pixel_map)


def darkness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    return -brightness(images, prompts)


def darkness_map(images: torch.Tensor, prompts: list[str]) -> RewardOutput:
    output = brightness_map(images, prompts)
    return RewardOutput(scores=-output.scores, pixel_map=-output.pixel_map)


def process_rank(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Every sample made by process r scores r: under two processes the ranks' rewards differ entirely,
    so advantages standardised per process would all be 0 and only gathered rewards carry a signal."""
    import os

    return torch.full((len(images),), float(os.environ.get("RANK", "0")))
