"""The 1-D temporal convolutional UNet of Diffusion Policy (Chi et al.), as a diffusers model.

It denoises an action chunk (B, horizon, action_dim): convolutions run along time, the
diffusion timestep and the observation history condition every residual block through FiLM
(a per-channel scale and bias), and the chunk is halved in time at each level but the last.
Being a diffusers `ModelMixin`/`ConfigMixin`, it saves and loads with `save_pretrained` /
`from_pretrained` (safetensors + config.json) like the image networks.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn


class TemporalUnetOutput(BaseOutput):
    sample: torch.Tensor


def _conv_block(in_channels: int, out_channels: int, kernel_size: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.GroupNorm(groups, out_channels),
        nn.Mish(),
    )


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; the condition scales and shifts the first one's output channel-wise."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.first = _conv_block(in_channels, out_channels, kernel_size, groups)
        self.second = _conv_block(out_channels, out_channels, kernel_size, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = rearrange(self.film(cond), "b (two c) -> two b c 1", two=2)
        h = self.first(x) * scale + bias
        return self.second(h) + self.skip(x)


class TemporalUnet1D(ModelMixin, ConfigMixin):
    """Denoiser for action chunks: forward(sample (B, T, A), timestep (B,), global_cond (B, C))."""

    @register_to_config
    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        timestep_embed_dim: int = 64,
    ):
        super().__init__()
        self.time_proj = Timesteps(timestep_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(timestep_embed_dim, timestep_embed_dim, act_fn="mish")
        cond_dim = timestep_embed_dim + global_cond_dim
        block = lambda i, o: FiLMResidualBlock(i, o, cond_dim, kernel_size, n_groups)  # noqa: E731

        channels = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for level, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            last = level == len(down_dims) - 1
            self.down.append(nn.ModuleList([
                block(c_in, c_out), block(c_out, c_out),
                nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1),
            ]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for level, (c_out, c_in) in enumerate(zip(reversed(down_dims[:-1]), reversed(down_dims[1:]))):
            self.up.append(nn.ModuleList([
                block(2 * c_in, c_out), block(c_out, c_out),
                nn.ConvTranspose1d(c_out, c_out, 4, stride=2, padding=1),
            ]))
        self.final = nn.Sequential(_conv_block(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   nn.Conv1d(down_dims[0], action_dim, 1))

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor, return_dict: bool = True
    ) -> TemporalUnetOutput | tuple[torch.Tensor]:
        features, _ = self.features(sample, timestep, global_cond)
        out = rearrange(self.final(features), "b a t -> b t a")
        return TemporalUnetOutput(sample=out) if return_dict else (out,)

    def features(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk: the last up level's features (B, down_dims[0], T) before the output layers, and the
        FiLM condition (B, timestep_embed_dim + global_cond_dim) every block saw. A consistency head
        (genrl/models/consistency_head.py) reads both."""
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        embedding = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        cond = torch.cat([embedding, global_cond.to(sample.dtype)], dim=-1)

        x = rearrange(sample, "b t a -> b a t")
        skips = []
        for first, second, downsample in self.down:
            x = second(first(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, cond)
        # As in Diffusion Policy, each up level joins the skip of the resolution it starts at
        # (the lowest first); the full-resolution skip of the first level is not joined.
        for (first, second, upsample), skip in zip(self.up, reversed(skips)):
            x = second(first(torch.cat([x, skip], dim=1), cond), cond)
            x = upsample(x)
        return x, cond
