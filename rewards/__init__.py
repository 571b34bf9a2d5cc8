"""Reward functions over batches of final samples, and their registry (rewards/registry.py)."""

from rewards.combine import check_reward_config, compute_configured_reward
from rewards.output import RewardOutput
from rewards.registry import REWARDS, compute_reward, get_reward

__all__ = ["REWARDS", "RewardOutput", "check_reward_config", "compute_configured_reward", "compute_reward", "get_reward"]
