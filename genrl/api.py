"""Fine-tuning from Python, the way trl users call a trainer: a config built in code (or loaded from
a recipe), a reward as a plain function, and the run directory back.

    from genrl import fine_tune, load_config
    config = load_config("train", "configs/ddpo/shapes_compressibility.yaml", ["num_epochs=2"])
    run_dir = fine_tune(config, reward=lambda images, prompts: images.mean(dim=(1, 2, 3)))
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from genrl.config import TrainConfig
from genrl.errors import ConfigError


def fine_tune(config: TrainConfig | dict, reward: Callable | None = None) -> Path:
    """Run `genrl train` on `config` (a TrainConfig, or a dict of its keys) and return its output_dir.

    `reward(images, prompts)` takes images in [-1, 1] and returns (B,) scores or a RewardOutput; it
    replaces `rollout.reward`. A function importable by module (not defined in __main__ or a
    notebook) is recorded in config.yaml as `module:name`, so the run can be resumed from the CLI.
    """
    import pydantic

    from genrl.config import _first_error  # the CLI's one-line message for a bad key
    from genrl.trainers import train
    from rewards.registry import REWARDS

    if isinstance(config, dict):
        try:
            config = TrainConfig.model_validate(config)
        except pydantic.ValidationError as error:
            raise ConfigError(_first_error(error)) from None
    if reward is not None:
        if config.rollout.kind != "prompts":
            raise ConfigError("a reward function scores images (rollout.kind: prompts); env rollouts are rewarded by the env")
        module, name = getattr(reward, "__module__", None), getattr(reward, "__qualname__", "reward")
        if _importable(module, name, reward):
            label = f"{module}:{name}"
        else:  # defined in __main__, a notebook or a closure: registered for this process only
            label = "python." + name.replace("<", "").replace(">", "")  # no colon: not an import path
            REWARDS[label] = reward
        config = config.model_copy(update={"rollout": config.rollout.model_copy(
            update={"reward": config.rollout.reward.model_copy(update={"name": label, "components": [], "kwargs": {}})})})
    train(config)
    return Path(config.output_dir)


def _importable(module: str | None, name: str, function: Callable) -> bool:
    """True if `module:name` imports back to this very function."""
    import importlib

    if module in (None, "__main__") or "<" in name:
        return False
    try:
        found = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return False
    return found is function
