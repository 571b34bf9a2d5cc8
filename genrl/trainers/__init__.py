"""RL trainers for denoising policies. `train(config)` runs the one named by `config.trainer`
(genrl/trainers/registry.py) in the one loop (genrl/trainers/loop.py)."""

from genrl.trainers.loop import train
from genrl.trainers.registry import TRAINERS

__all__ = ["TRAINERS", "train"]
