"""Per-prompt reward normalisation, DDPO's advantage estimator.

Each prompt keeps a deque of its most recent rewards; a sample's advantage is its reward
standardised by its own prompt's statistics, so easy and hard prompts contribute equally.
Until a prompt has `min_count` rewards, the batch's statistics stand in.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from accelerate.utils import gather_object


class PerPromptStatTracker:
    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.history: dict[str, deque] = {}

    def update(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        """Record the rewards and return them standardised per prompt."""
        rewards = np.asarray(rewards, dtype=np.float64)
        means, stds = self.normalizers(prompts, rewards)
        return (rewards - means) / stds

    def normalizers(self, prompts: list[str], rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record the rewards; return each sample's (mean, std) to standardise by. PXPO uses
        them to standardise a whole per-pixel reward map with its sample's statistics."""
        rewards = np.asarray(rewards, dtype=np.float64)
        means, stds = np.empty_like(rewards), np.empty_like(rewards)
        batch_mean, batch_std = rewards.mean(), rewards.std() + 1e-6
        for prompt in set(prompts):
            mask = np.array([p == prompt for p in prompts])
            history = self.history.setdefault(prompt, deque(maxlen=self.buffer_size))
            history.extend(rewards[mask].tolist())
            if len(history) < self.min_count:
                means[mask], stds[mask] = batch_mean, batch_std
            else:
                means[mask], stds[mask] = np.mean(history), np.std(history) + 1e-6
        return means, stds

    def state_dict(self) -> dict:
        return {prompt: list(values) for prompt, values in self.history.items()}

    def load_state_dict(self, state: dict) -> None:
        self.history = {prompt: deque(values, maxlen=self.buffer_size) for prompt, values in state.items()}


def standardized_unit_rewards(run, batch, tracker: PerPromptStatTracker | None) -> torch.Tensor:
    """(U,) this process's unit rewards standardised over every process's: within their group key
    by the tracker's running statistics, or by the whole batch's mean and std when tracker is None."""
    accelerator = run.accelerator
    all_rewards = accelerator.gather(batch.rewards).cpu().numpy()
    if tracker is not None:
        standardized = tracker.update(gather_object(list(batch.group_keys)), all_rewards)
    else:
        standardized = (all_rewards - all_rewards.mean()) / (all_rewards.std() + 1e-6)
    start = accelerator.process_index * batch.num_units  # every process holds the same number of units
    return torch.as_tensor(standardized[start : start + batch.num_units], dtype=torch.float32, device=accelerator.device)
