"""Few-step sampling of a consistency student, and the consistency function it samples with.

A consistency function maps any point x_t of a probability-flow ODE trajectory to the
trajectory's origin x0 (Song et al. 2023). For a DDPM-style (variance-preserving) model we write
it in the scaled view x~ = x_t / sqrt(a_bar_t) = x0 + sigma_t * eps, sigma_t = sqrt((1 - a_bar_t) / a_bar_t):

    f(x_t, t) = c_skip(t) * x~ + (1 - c_skip(t)) * x0_hat(x_t, t)
    c_skip(t) = sigma_data^2 / ((sigma_t - sigma_min)^2 + sigma_data^2)

where x0_hat is the network's clean-sample prediction (the distiller's students predict x0
directly: see distill/consistency.py) and sigma_min is sigma at the grid's smallest timestep
t_min. At t_min, c_skip = 1 and f(x, t_min) = x~ exactly: the boundary condition holds by
construction, whatever the weights. The second weight is 1 - c_skip rather than the EDM c_out so
that at high noise f is x0_hat itself (the network's output is an x0 estimate, not EDM's scaled one).

Sampling with k steps (Song et al.'s multistep sampler): x0 = f(x, t_0) from pure noise, then
for each later t_j re-noise x0 to t_j and map back, x0 = f(sqrt(a_bar) x0 + sqrt(1 - a_bar) z, t_j).
As a Gaussian chain that is: mean sqrt(a_bar_{t_j}) f(x, t_{j-1}), std sqrt(1 - a_bar_{t_j}), and a
deterministic last step to f itself, so the student runs through the same `Trajectory`,
`genrl eval` and evaluation code as every other sampler.
"""

from __future__ import annotations

import torch

from genrl.denoiser import Denoiser, broadcast_to_batch
from genrl.samplers.gaussian_chain import GaussianChainSampler

SIGMA_DATA = 0.5  # data scale the skip weight assumes (actions and images are scaled to [-1, 1])


def scaled_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma of the scaled view x~ = x_t / sqrt(a_bar) = x0 + sigma * eps."""
    return ((1 - alpha_bar) / alpha_bar.clamp(min=1e-12)).sqrt()


def skip_weight(alpha_bar: torch.Tensor, alpha_bar_min_t: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """c_skip(t): 1 at t_min (alpha_bar_min_t = a_bar at t_min), falling towards 0 as the noise grows."""
    gap = scaled_sigma(alpha_bar) - scaled_sigma(alpha_bar_min_t)
    return sigma_data**2 / (gap**2 + sigma_data**2)


def consistency_x0(
    denoiser: Denoiser, model_output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor, t_min: int,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """f(x_t, t) from the network's raw output at (x_t, t); t may be per-sample. Unclipped, so that the
    student's loss has a gradient everywhere (the sampler clips f as the teacher's schedule says)."""
    x0_hat, _ = denoiser.predict_x0_eps(model_output, x_t, t, clip=False)
    alpha_bar = denoiser.alpha_bar(t, x_t)
    c_skip = skip_weight(alpha_bar, denoiser.alphas(x_t)[t_min], sigma_data)
    # c_skip * x_t / sqrt(a_bar), written so that a_bar -> 0 (pure noise) gives 0, not 0 * inf
    scaled = x_t * (c_skip / alpha_bar.clamp(min=1e-12).sqrt())
    return scaled + (1 - c_skip) * x0_hat


def sampling_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Where a k-step sampler evaluates f: the top of the schedule, then evenly down the time axis
    (2 steps: T-1 and T/2; 3 steps: T-1, 2T/3, T/3)."""
    top = num_train_timesteps - 1
    return [round(top * (1 - j / num_steps)) for j in range(num_steps)]


class ConsistencySampler(GaussianChainSampler):
    """k-step sampling of a consistency student (k = `num_steps`, usually 1-3). `t_min` and
    `sigma_data` are the student's own (saved with it by the distiller)."""

    def __init__(self, num_train_timesteps: int, num_steps: int, t_min: int = 0, sigma_data: float = SIGMA_DATA):
        if num_steps < 1:
            raise ValueError(f"a consistency sampler needs at least 1 step, got {num_steps}")
        starts = sampling_timesteps(num_train_timesteps, num_steps)
        self.step_pairs = list(zip(starts, starts[1:] + [-1]))
        self.t_min, self.sigma_data = int(t_min), float(sigma_data)

    def is_stochastic(self, step_index: int) -> bool:
        return self.step_pairs[step_index][1] >= 0  # every step re-noises but the last

    def step_distribution(self, denoiser: Denoiser, model_output, x_t, t, t_prev):
        x0 = consistency_x0(denoiser, model_output, x_t, t, self.t_min, self.sigma_data)
        if denoiser.clip_sample:  # as the teacher's sampler clips its x0 estimates (actions and pixels live in [-1, 1])
            x0 = x0.clamp(-denoiser.clip_sample_range, denoiser.clip_sample_range)
        alphas = denoiser.alphas(x_t)
        t_prev = torch.as_tensor(t_prev, device=alphas.device)
        alpha_prev = torch.where(t_prev >= 0, alphas[t_prev.clamp(min=0)], torch.ones_like(alphas[0]))
        std = (1 - alpha_prev).sqrt()
        return broadcast_to_batch(alpha_prev.sqrt(), x_t) * x0, std
