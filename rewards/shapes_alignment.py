"""Prompt alignment on the Shapes world, read off the image by the analytic reader.

Verifiable (no learned judge to hack): the reader finds each coloured object, its shape
and its grid cell, and compares them with the prompt's objects.
"""

from __future__ import annotations

import torch

from rewards.output import RewardOutput


def shapes_alignment(images: torch.Tensor, prompts: list[str]) -> RewardOutput:
    """Dense score: share of the prompt's objects found; `prompt_match` (exact) in info."""
    from genrl.shapes.reader import object_recall, prompt_match  # imported when called: genrl imports rewards

    images = images.detach().float().cpu()
    recall = torch.tensor([object_recall(image, prompt) for image, prompt in zip(images, prompts)])
    match = torch.tensor([float(prompt_match(image, prompt)) for image, prompt in zip(images, prompts)])
    return RewardOutput(scores=recall, info={"prompt_match": match, "object_recall": recall})


def shapes_prompt_match(images: torch.Tensor, prompts: list[str]) -> RewardOutput:
    """Sparse score: 1 only when the detected objects are exactly the prompt's, else 0."""
    output = shapes_alignment(images, prompts)
    return RewardOutput(scores=output.info["prompt_match"], info=output.info)
