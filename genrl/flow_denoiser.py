"""A flow-matching (rectified-flow) denoiser: the network predicts a velocity.

Convention (SD3 / FLUX, diffusers' FlowMatchEulerDiscreteScheduler):
    x_sigma = (1 - sigma) * x0 + sigma * eps,   u = eps - x0,   network timestep = sigma * T,
so  x0_hat = x - sigma * u  and  eps_hat = x + (1 - sigma) * u.
"""

from __future__ import annotations

import torch

from genrl.denoiser import GuidedNetwork, broadcast_to_batch


class FlowDenoiser(GuidedNetwork):
    def __init__(self, network: torch.nn.Module, num_train_timesteps: int = 1000, clip_sample: bool = False):
        super().__init__(network)
        self.num_train_timesteps = num_train_timesteps
        self.clip_sample = clip_sample

    def network_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.num_train_timesteps

    def predict_x0(self, velocity: torch.Tensor, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        sigma = broadcast_to_batch(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x)
        x0 = x - sigma * velocity
        return x0.clamp(-1, 1) if self.clip_sample else x0
