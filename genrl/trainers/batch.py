"""What a rollout source hands the loop each epoch: stored chains, rewards and group keys.

A *unit* is what a reward scores: one image (its chain) for prompts, one episode (all the chains
of its decisions) for environments. Advantages are computed per unit and spread to its chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from genrl.trajectory import Trajectory


@dataclass
class EnvDecisions:
    """Per-chain records of env episodes, in the order the policy was called (DPPO's GAE needs them)."""

    reward: np.ndarray  # (N,) reward of the chain's executed chunk
    terminated: np.ndarray  # (N,) float: the episode reached a terminal state in this chunk
    next_condition: torch.Tensor  # (N, cond) the policy condition after the chunk
    chains_of_unit: list[np.ndarray]  # per episode, its chains in time order


@dataclass
class RolloutBatch:
    trajectory: Trajectory  # N chains of this process
    rewards: torch.Tensor  # (U,) one per unit, this process
    unit_of_chain: torch.Tensor  # (N,) long: the unit each chain belongs to
    group_keys: list  # (U,) units with one key are compared with each other (prompt / initial state)
    pixel_maps: torch.Tensor | None = None  # (U, H, W) per-pixel rewards (PXPO)
    images: torch.Tensor | None = None  # (U, 3, H, W) the decoded samples (SFT-PG's critic)
    decisions: EnvDecisions | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the epoch's side metrics, over all processes
    group_size: int = 1  # consecutive units sharing a key (pairs, branches)

    @property
    def num_units(self) -> int:
        return self.rewards.shape[0]
