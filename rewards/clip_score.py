"""CLIP score: cosine similarity between a sample's and its prompt's CLIP embeddings.

A learned, hackable judge of prompt alignment (DDPO's and many later papers' reward):
use it beside a verifiable metric when one exists.
"""

from __future__ import annotations

import torch

from rewards.clip_model import clip_image_features, clip_text_features, load_clip
from rewards.output import RewardOutput


def clip_score(images: torch.Tensor, prompts: list[str], clip_model: str = "ViT-L-14", clip_weights: str | None = None,
               allow_random_weights: bool = False) -> RewardOutput:
    model, tokenizer = load_clip(clip_model, clip_weights, allow_random_weights)
    model.to(images.device)
    with torch.no_grad():
        similarity = (clip_image_features(model, images) * clip_text_features(model, tokenizer, prompts, images.device)).sum(-1)
    return RewardOutput(scores=similarity.float().cpu())
