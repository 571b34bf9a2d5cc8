"""The reward a run optimises, from its `reward:` config: one registered reward, or a
weighted sum of several whose components are each logged (`info[<name>]`)."""

from __future__ import annotations

import torch

from rewards.errors import ConfigError
from rewards.output import RewardOutput
from rewards.registry import compute_reward, get_reward


def check_reward_config(config) -> None:
    if config.components:
        for component in config.components:
            get_reward(component.name)
    elif config.name is None:
        raise ConfigError("reward: give a reward `name` or a list of `components`")
    else:
        get_reward(config.name)


def compute_configured_reward(config, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
    if not config.components:
        return compute_reward(config.name, images, prompts, **config.kwargs)
    total = torch.zeros(images.shape[0])
    info, maps = {}, []
    for component in config.components:
        output = compute_reward(component.name, images, prompts, **component.kwargs)
        total = total + component.weight * output.scores
        info[component.name] = output.scores
        info.update({f"{component.name}/{key}": value for key, value in output.info.items()})
        maps.append(None if output.pixel_map is None else component.weight * output.pixel_map)
    # A combined per-pixel map exists only if every component gives one.
    pixel_map = torch.stack(maps).sum(0) if all(m is not None for m in maps) else None
    return RewardOutput(scores=total, pixel_map=pixel_map, info=info)
