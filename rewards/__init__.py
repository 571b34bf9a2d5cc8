"""Reward functions over batches of final samples, and their registry (rewards/registry.py)."""

from rewards.output import RewardOutput
from rewards.registry import REWARDS, compute_reward, get_reward

__all__ = ["REWARDS", "RewardOutput", "compute_reward", "get_reward"]
