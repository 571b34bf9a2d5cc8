"""RL trainers for denoising policies. `train(config)` runs the one named by `config.trainer`."""

from genrl.trainers.online_rl import train

__all__ = ["train"]
