"""Load an open_clip CLIP model from local files, once per process.

open_clip (maintained, OpenAI and LAION weights) is used instead of OpenAI's `clip` package,
which no longer imports with current setuptools. Nothing is downloaded: give either
  * `model_name` (an open_clip architecture such as "ViT-L-14") and `weights`, a local
    checkpoint file (e.g. open_clip_pytorch_model.bin or an OpenAI .pt), or
  * `model_name="local-dir:/path/to/folder"` holding open_clip_config.json and the weights.
`weights=None` is refused unless `allow_random_weights=True` (tests of the plumbing only).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from rewards.errors import CheckpointError, ConfigError


@functools.lru_cache(maxsize=4)
def load_clip(model_name: str, weights: str | None, allow_random_weights: bool = False):
    import open_clip

    if model_name.startswith("local-dir:"):
        folder = Path(model_name.split(":", 1)[1])
        if not (folder / "open_clip_config.json").is_file():
            raise CheckpointError(f"CLIP folder {folder} has no open_clip_config.json")
        pretrained = None
    elif weights is None:
        if not allow_random_weights:
            raise ConfigError(
                f"CLIP model {model_name!r} needs local weights: set the reward's `clip_weights` to a checkpoint file"
            )
        pretrained = None
    else:
        if not Path(weights).is_file():
            raise CheckpointError(f"CLIP weights file {weights} does not exist")
        pretrained = str(weights)
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, pretrained_text=False)
    except RuntimeError as error:
        raise CheckpointError(f"could not load CLIP {model_name!r} from {weights}: {str(error).splitlines()[0]}") from None
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, tokenizer


def clip_image_features(model, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> L2-normalised CLIP image embeddings (differentiable)."""
    config = model.visual.preprocess_cfg
    size = config.get("size", model.visual.image_size)
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    mean = torch.tensor(config["mean"], device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], device=images.device).view(1, 3, 1, 1)
    pixels = F.interpolate((images.float() + 1) / 2, size=size, mode="bicubic", align_corners=False)
    return F.normalize(model.encode_image((pixels - mean) / std), dim=-1)


def clip_text_features(model, tokenizer, prompts: list[str], device) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer(prompts).to(device)), dim=-1)
