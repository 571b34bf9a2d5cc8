"""LAION-style aesthetic score: a small MLP on normalised CLIP image embeddings.

The head has the layer layout of LAION's "improved aesthetic predictor" (and DDPO's
aesthetic reward), so its published state dict (`layers.0.weight`, ... for CLIP ViT-L/14,
input 768) loads as is. Weights come from a local file; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rewards.clip_model import clip_image_features, load_clip
from rewards.errors import CheckpointError
from rewards.output import RewardOutput


class AestheticHead(nn.Module):
    def __init__(self, embed_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


_HEADS: dict = {}


def load_aesthetic_head(path: str | None, embed_dim: int, allow_random_weights: bool = False) -> AestheticHead:
    key = (path, embed_dim)
    if key not in _HEADS:
        head = AestheticHead(embed_dim)
        if path is None:
            if not allow_random_weights:
                raise CheckpointError("the aesthetic reward needs `head_weights`: a local file with the MLP's state dict")
        elif not Path(path).is_file():
            raise CheckpointError(f"aesthetic head weights file {path} does not exist")
        else:
            try:
                head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except (RuntimeError, KeyError) as error:
                raise CheckpointError(f"aesthetic head weights {path} do not fit: {str(error).splitlines()[0]}") from None
        _HEADS[key] = head.eval().requires_grad_(False)
    return _HEADS[key]


def aesthetic_score(images: torch.Tensor, prompts: list[str], clip_model: str = "ViT-L-14", clip_weights: str | None = None,
                    head_weights: str | None = None, allow_random_weights: bool = False) -> RewardOutput:
    model, _ = load_clip(clip_model, clip_weights, allow_random_weights)
    model.to(images.device)
    with torch.no_grad():
        features = clip_image_features(model, images)
        head = load_aesthetic_head(head_weights, features.shape[-1], allow_random_weights).to(images.device)
        scores = head(features.float())
    return RewardOutput(scores=scores.cpu())
