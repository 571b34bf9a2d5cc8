"""The reward registry. To add a reward: write a function `(images, prompts) -> RewardOutput`
(images (B, 3, H, W) in [-1, 1]) and add one line to REWARDS.

A reward in your own module needs no registration: name it `module:function`
(`reward.name: my_pkg.rewards:sharpness`, as gymnasium names environments). Such a
function may return a RewardOutput or just the scores, a (B,) tensor or array.
"""

from __future__ import annotations

import importlib
from typing import Callable

import numpy as np
import torch

from rewards.aesthetic import aesthetic_score
from rewards.clip_score import clip_score
from rewards.errors import ConfigError, RewardError
from rewards.jpeg import jpeg_compressibility, jpeg_incompressibility
from rewards.masked_color import masked_color
from rewards.output import RewardOutput
from rewards.shapes_alignment import shapes_alignment, shapes_prompt_match
from rewards.shapes_pixel_alignment import shapes_pixel_alignment

RewardFn = Callable[..., RewardOutput]

REWARDS: dict[str, RewardFn] = {
    "jpeg_compressibility": jpeg_compressibility,
    "jpeg_incompressibility": jpeg_incompressibility,
    "shapes_alignment": shapes_alignment,
    "shapes_prompt_match": shapes_prompt_match,
    "shapes_pixel_alignment": shapes_pixel_alignment,
    "masked_color": masked_color,
    "clip_score": clip_score,
    "aesthetic_score": aesthetic_score,
}


def get_reward(name: str) -> RewardFn:
    """A registered reward, or `module:function` imported from the user's own module."""
    if ":" in name:
        return _import_reward(name)
    if name not in REWARDS:
        raise ConfigError(f"reward {name!r} is not registered; choose one of {sorted(REWARDS)} or give 'module:function'")
    return REWARDS[name]


def _import_reward(name: str) -> RewardFn:
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"reward {name!r}: expected 'module:function', e.g. 'my_pkg.rewards:sharpness'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Only the named module (or a package above it) missing is a naming mistake; a missing
        # dependency inside the user's module is a bug there and keeps its traceback.
        if error.name is None or not (module_name == error.name or module_name.startswith(error.name + ".")):
            raise
        raise ConfigError(f"reward {name!r}: cannot import module {module_name!r} (no module named {error.name!r})") from None
    function = module
    for part in attribute.split("."):
        if not hasattr(function, part):
            raise ConfigError(f"reward {name!r}: module {module_name!r} has no attribute {attribute!r}")
        function = getattr(function, part)
    if not callable(function):
        raise ConfigError(f"reward {name!r}: {attribute!r} in {module_name!r} is a {type(function).__name__}, not a function")
    return function


def compute_reward(name: str, images: torch.Tensor, prompts: list[str], **kwargs) -> RewardOutput:
    """Call a reward and check what it returned, naming it if it misbehaves. A bare tensor or
    array of scores becomes a RewardOutput."""
    output = get_reward(name)(images, prompts, **kwargs)
    if isinstance(output, (torch.Tensor, np.ndarray, list, tuple)):
        output = RewardOutput(scores=output)
    elif not isinstance(output, RewardOutput):
        raise RewardError(f"reward {name!r} returned {type(output).__name__}, expected RewardOutput or (B,) scores")
    try:
        scores = torch.as_tensor(output.scores, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as error:
        raise RewardError(f"reward {name!r} returned scores that are not numbers: {error}") from None
    if scores.shape != (images.shape[0],):
        raise RewardError(f"reward {name!r} returned scores of shape {tuple(scores.shape)}, expected ({images.shape[0]},)")
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        raise RewardError(f"reward {name!r} returned non-finite values (NaN/inf) for samples {bad[:8]}")
    if output.pixel_map is not None:
        expected = (images.shape[0], *images.shape[-2:])
        if tuple(output.pixel_map.shape) != expected:
            raise RewardError(f"reward {name!r} returned a pixel map of shape {tuple(output.pixel_map.shape)}, expected {expected}")
        if not torch.isfinite(output.pixel_map).all():
            raise RewardError(f"reward {name!r} returned a pixel map with non-finite values")
    output.scores = scores
    return output
