"""DDIM with eta (Song et al. 2021), the sampler DDPO trains through.

  sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
  mean    = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - sigma_t^2) * eps_hat

eta = 0 is deterministic and equals diffusers' DDIMScheduler.step; eta = 1 is what DDPO
uses. The timestep grid is diffusers' own ("leading" spacing), taken from DDIMScheduler.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from genrl.denoiser import Denoiser, broadcast_to_batch
from genrl.samplers.gaussian_chain import GaussianChainSampler


class DDIMSampler(GaussianChainSampler):
    def __init__(
        self, num_train_timesteps: int, num_steps: int, eta: float = 1.0, final_alpha_one: bool = False, steps_offset: int = 1
    ):
        # steps_offset=1 (SD's setting) ends the grid at t=1, not t=0: from t=0 to a_bar[0]
        # the step would be the identity with zero variance.
        grid = DDIMScheduler(num_train_timesteps=num_train_timesteps, steps_offset=steps_offset)
        grid.set_timesteps(num_steps)
        stride = num_train_timesteps // num_steps
        self.step_pairs = [(int(t), int(t) - stride) for t in grid.timesteps]
        self.eta = eta
        # With final_alpha_one=False the last step lands on a_bar[0] < 1 and keeps a
        # non-zero variance, so every step has a log-prob (SD's scheduler config does the same).
        self.final_alpha_one = final_alpha_one

    def _alpha_prev(self, alphas_cumprod: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
        final = torch.ones_like(alphas_cumprod[0]) if self.final_alpha_one else alphas_cumprod[0]
        return torch.where(t_prev >= 0, alphas_cumprod[t_prev.clamp(min=0)], final)

    def is_stochastic(self, step_index: int) -> bool:
        t, t_prev = self.step_pairs[step_index]
        # The final step has zero variance if it lands on a_bar = 1, or on a_bar[0] from t = 0.
        return self.eta > 0 and (t_prev >= 0 or (not self.final_alpha_one and t > 0))

    def step_distribution(self, denoiser: Denoiser, model_output, x_t, t, t_prev):
        x0, eps = denoiser.predict_x0_eps(model_output, x_t, t)
        alphas = denoiser.alphas(x_t)  # float64 for float64 states, else float32 (converted once)
        t = torch.as_tensor(t, device=alphas.device)
        a_t = alphas[t]
        a_prev = self._alpha_prev(alphas, torch.as_tensor(t_prev, device=alphas.device))
        std = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        a_prev, std_b = broadcast_to_batch(a_prev, x_t), broadcast_to_batch(std, x_t)
        mean = a_prev.sqrt() * x0 + (1 - a_prev - std_b**2).sqrt() * eps
        return mean, std
