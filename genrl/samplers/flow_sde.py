"""Flow-matching sampling with per-step log-probs: Euler ODE, or the SDE with the same marginals.

Reverse-time SDE for x_sigma = (1 - sigma) x0 + sigma eps with velocity u (Flow-GRPO,
"Flow-GRPO: Training Flow Matching Models via Online RL"): with the score
-(x + (1 - sigma) u) / sigma and diffusion g = a * sqrt(sigma / (1 - sigma)),

    mean = x + [u + g^2 / (2 sigma) * (x + (1 - sigma) u)] * dt,     dt = sigma_next - sigma < 0
    std  = g * sqrt(-dt)

a = `noise_level`; a = 0 is the deterministic Euler step of diffusers'
FlowMatchEulerDiscreteScheduler (x + u dt), whose sigma grid (with `shift`) we reuse.
At sigma = 1 the diffusion coefficient is infinite; as Flow-GRPO does, the denominator
uses the next grid sigma there. All arithmetic is float32 (or float64 if x is).
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from genrl.denoiser import broadcast_to_batch
from genrl.samplers.gaussian_chain import GaussianChainSampler


class FlowSDESampler(GaussianChainSampler):
    grid_dtype = torch.float64

    def __init__(self, num_steps: int, noise_level: float = 0.7, shift: float = 1.0, num_train_timesteps: int = 1000):
        grid = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
        grid.set_timesteps(num_steps)
        sigmas = [float(s) for s in grid.sigmas]  # num_steps + 1 values, ending at 0
        self.step_pairs = list(zip(sigmas[:-1], sigmas[1:]))
        self.noise_level = noise_level
        self._sigma_below_one = sigmas[1]

    def network_timestep(self, denoiser, sigma: torch.Tensor) -> torch.Tensor:
        return denoiser.network_timestep(sigma).float()

    def is_stochastic(self, step_index: int) -> bool:
        # The last step lands on sigma = 0, where g = 0: it is the deterministic Euler step.
        return self.noise_level > 0 and self.step_pairs[step_index][1] > 0

    def step_distribution(self, denoiser, model_output, x_t, sigma, sigma_next):
        dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        x, velocity = x_t.to(dtype), model_output.to(dtype)
        sigma, sigma_next = sigma.to(dtype), sigma_next.to(dtype)
        dt = sigma_next - sigma
        denominator = 1 - torch.where(sigma >= 1, torch.full_like(sigma, self._sigma_below_one), sigma)
        g = self.noise_level * (sigma / denominator).sqrt()
        g = torch.where(sigma_next > 0, g, torch.zeros_like(g))  # deterministic final step
        sigma_b, dt_b, g_b = (broadcast_to_batch(v, x) for v in (sigma, dt, g))
        mean = x + (velocity + g_b**2 / (2 * sigma_b) * (x + (1 - sigma_b) * velocity)) * dt_b
        std = g * (-dt).sqrt()
        return mean, std
