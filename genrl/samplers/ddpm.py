"""DDPM ancestral sampling: the posterior q(x_prev | x_t, x0_hat) with a strided grid.

  mean = sqrt(a_prev) * beta / (1 - a_t) * x0_hat + sqrt(alpha) * (1 - a_prev) / (1 - a_t) * x_t
  var  = (1 - a_prev) / (1 - a_t) * beta,   alpha = a_t / a_prev,  beta = 1 - alpha

with the "fixed_small" variance; the final step (t_prev < 0) is deterministic, exactly
as diffusers' DDPMScheduler.step.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from genrl.denoiser import Denoiser, broadcast_to_batch
from genrl.samplers.gaussian_chain import GaussianChainSampler


class DDPMSampler(GaussianChainSampler):
    def __init__(self, num_train_timesteps: int, num_steps: int):
        grid = DDPMScheduler(num_train_timesteps=num_train_timesteps)
        grid.set_timesteps(num_steps)
        timesteps = [int(t) for t in grid.timesteps]
        self.step_pairs = [(t, int(grid.previous_timestep(t))) for t in timesteps]

    @staticmethod
    def _posterior(alphas_cumprod: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor):
        a_t = alphas_cumprod[t]
        a_prev = torch.where(t_prev >= 0, alphas_cumprod[t_prev.clamp(min=0)], torch.ones_like(a_t))
        alpha = a_t / a_prev
        beta = 1 - alpha
        x0_coeff = a_prev.sqrt() * beta / (1 - a_t)
        xt_coeff = alpha.sqrt() * (1 - a_prev) / (1 - a_t)
        variance = ((1 - a_prev) / (1 - a_t) * beta).clamp(min=1e-20)
        std = torch.where(t > 0, variance.sqrt(), torch.zeros_like(variance))
        return x0_coeff, xt_coeff, std

    def is_stochastic(self, step_index: int) -> bool:
        return self.step_pairs[step_index][0] > 0  # diffusers adds no noise at t = 0

    def step_distribution(self, denoiser: Denoiser, model_output, x_t, t, t_prev):
        alphas = denoiser.alphas(x_t)  # float64 for float64 states, else float32 (converted once)
        x0, _ = denoiser.predict_x0_eps(model_output, x_t, t)
        t, t_prev = torch.as_tensor(t, device=alphas.device), torch.as_tensor(t_prev, device=alphas.device)
        x0_coeff, xt_coeff, std = self._posterior(alphas, t, t_prev)
        mean = broadcast_to_batch(x0_coeff, x_t) * x0 + broadcast_to_batch(xt_coeff, x_t) * x_t
        return mean, std
