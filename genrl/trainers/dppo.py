"""DPPO's pieces ("Diffusion Policy Policy Optimization", Ren et al.): the env-level critic,
GAE over decisions, the advantage discounted along the denoising chain, and the clip range
that rises along the chain. The policy loss itself is DDPO's PPO-clip (ddpo.py), called per
(chain, denoising step) with these advantages and clip ranges.

Two MDPs are nested: the env MDP, whose steps are decisions (one executed action chunk, its
rewards summed), and each decision's denoising chain. GAE runs over decisions with a value
network V(observation history); denoising step k of a K-step trained window gets the
decision's advantage times gamma_denoise^(K - 1 - k), so the final, cleanest step gets it in full.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class ObservationValue(nn.Module):
    """V(s): expected discounted return from a (normalised, flattened) observation history."""

    def __init__(self, input_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.Mish(), nn.Linear(hidden, hidden), nn.Mish(),
                                 nn.Linear(hidden, 1))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.net(observation).squeeze(-1)


def gae_advantages(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
                   gamma: float, lam: float) -> np.ndarray:
    """Generalised advantage estimates along ONE episode's decisions (arrays of length D).

    delta_d = r_d + gamma * V(s_{d+1}) * (1 - terminated_d) - V(s_d);  A_d = delta_d + gamma * lam * A_{d+1}.
    A time-limit truncation is not a terminal state: its last decision bootstraps from V(s_D).
    """
    deltas = rewards + gamma * next_values * (1.0 - terminated) - values
    advantages = np.zeros_like(deltas)
    running = 0.0
    for d in reversed(range(len(deltas))):
        running = deltas[d] + gamma * lam * running
        advantages[d] = running
    return advantages


def denoising_discount(position: torch.Tensor, num_trained: int, gamma_denoise: float) -> torch.Tensor:
    """gamma_denoise^(K - 1 - k) for trained-step positions k in [0, K)."""
    return gamma_denoise ** (num_trained - 1 - position).float()


def clip_ranges(position: torch.Tensor, num_trained: int, start: float, end: float, rate: float) -> torch.Tensor:
    """PPO clip range per trained-step position: `start` at the first (noisiest) step rising
    exponentially to `end` at the last, as DPPO's reference schedule."""
    if num_trained == 1:
        return torch.full(position.shape, end)
    t = position.float() / (num_trained - 1)
    return start + (end - start) * (torch.exp(rate * t) - 1) / (math.exp(rate) - 1)
