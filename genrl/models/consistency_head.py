"""A consistency *head*: a light student on the frozen trunk of a Diffusion Policy's teacher network.

RL-100 (Lei et al. 2025) serves its robot policy as a one-step consistency model that shares the
diffusion policy's observation encoder. Here the shared part is the teacher's whole temporal UNet
up to its output layers (`TemporalUnet1D.features`): its features of the noisy chunk and its FiLM
condition (timestep embedding + observation history). Only the head trains: two FiLM residual
blocks on [trunk features, noisy chunk] and a 1x1 output convolution, about 9% of the PushT
teacher's parameters. One student call is one trunk pass plus the head, so the latency stays
that of one network call, and the teacher's weights are untouched (the trunk can stay shared
with the multi-step teacher on the robot).

The head's output layer starts at zero: the untrained student's x0 estimate is 0 (the middle of the
normalised action range) and the consistency function starts as its skip term alone.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from genrl.models.temporal_unet import FiLMResidualBlock, TemporalUnet1D, TemporalUnetOutput


class ConsistencyHead(ModelMixin, ConfigMixin):
    """(trunk features (B, C, T), noisy chunk (B, T, A), FiLM condition (B, D)) -> x0 estimate (B, T, A)."""

    @register_to_config
    def __init__(self, feature_channels: int, action_dim: int, cond_dim: int, hidden_channels: int = 64,
                 kernel_size: int = 5, n_groups: int = 8):
        super().__init__()
        self.blocks = nn.ModuleList([
            FiLMResidualBlock(feature_channels + action_dim, hidden_channels, cond_dim, kernel_size, n_groups),
            FiLMResidualBlock(hidden_channels, hidden_channels, cond_dim, kernel_size, n_groups),
        ])
        self.out = nn.Conv1d(hidden_channels, action_dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor, sample: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = torch.cat([features, rearrange(sample, "b t a -> b a t")], dim=1)
        for block in self.blocks:
            x = block(x, cond)
        return rearrange(self.out(x), "b a t -> b t a")

    @classmethod
    def for_trunk(cls, trunk: TemporalUnet1D, hidden_channels: int = 64) -> "ConsistencyHead":
        config = trunk.config
        return cls(feature_channels=config.down_dims[0], action_dim=config.action_dim,
                   cond_dim=config.timestep_embed_dim + config.global_cond_dim, hidden_channels=hidden_channels,
                   kernel_size=config.kernel_size, n_groups=min(config.n_groups, hidden_channels))


class HeadedNetwork(nn.Module):
    """The student's network: frozen trunk + trained head, called like a `TemporalUnet1D`."""

    def __init__(self, trunk: TemporalUnet1D, head: ConsistencyHead):
        super().__init__()
        self.trunk = trunk.requires_grad_(False)
        self.head = head

    @property
    def config(self):
        return self.trunk.config

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor, return_dict: bool = True):
        features, cond = self.trunk.features(sample, timestep, global_cond)
        out = self.head(features, sample, cond)
        return TemporalUnetOutput(sample=out) if return_dict else (out,)
