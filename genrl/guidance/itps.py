"""ITPS ("Inference-Time Policy Steering through Human Interactions", Wang et al. 2024): six ways to
sample a frozen Diffusion Policy's action chunk so that it agrees with a user's input, expressed as a
differentiable `cost(chunk) -> (B,)` on normalised chunks (genrl/guidance/alignment.py builds it).

- unsteered:           the policy's own chain.
- output_perturbation: sample, then move the finished chunk down the cost's gradient (`perturb_steps`
                       steps of size `scale`): cheap, but it can leave the data the policy knows.
- post_hoc_ranking:    sample `num_candidates` chunks and keep the one of lowest cost.
- biased_init:         make the chunk that minimises the cost (gradient descent from zero), noise it to
                       the chain's step at `init_fraction` of the way down and denoise from there, so the
                       policy repairs what the input got wrong.
- guided:              every step's mean is moved against the cost's gradient at the step's clean
                       estimate x0_hat: mean - scale * std^2 * grad cost(x0_hat) (classifier guidance with
                       the gradient taken at x0_hat, so no backward pass through the network).
- stochastic:          guided, plus `mcmc_steps` times per step: re-noise the result back to the step's
                       noise level with the forward kernel q(x_t | x_t-1) and take the guided step again,
                       an MCMC walk on the product of the policy and the steering (the paper's best).

The chain is the policy's own DDPM or DDIM sampler; `scale` = 0 gives each method's unguided version
(guided and stochastic then equal unsteered sampling exactly, which a test checks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genrl.errors import ConfigError
from genrl.samplers.ddim import DDIMSampler
from genrl.samplers.ddpm import DDPMSampler
from genrl.samplers.gaussian_chain import GaussianChainSampler

METHODS = ("unsteered", "output_perturbation", "post_hoc_ranking", "biased_init", "guided", "stochastic")
Cost = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Steering:
    method: str = "stochastic"
    scale: float = 1.0  # guidance strength (guided, stochastic, output_perturbation's step size)
    num_candidates: int = 16  # post_hoc_ranking: chunks sampled per decision
    perturb_steps: int = 10  # output_perturbation / biased_init: gradient steps on the chunk
    init_fraction: float = 0.5  # biased_init: the share of the chain skipped (0 = start from pure noise)
    mcmc_steps: int = 3  # stochastic: extra re-noise/denoise passes per step

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"guidance.method {self.method!r} is not one of {', '.join(METHODS)}")
        if not (self.scale >= 0):  # also catches NaN
            raise ConfigError(f"guidance.scale must be a number >= 0, got {self.scale}")
        if not 0.0 <= self.init_fraction < 1.0:
            raise ConfigError(f"guidance.init_fraction must be in [0, 1), got {self.init_fraction}")


def _cost_gradient(cost: Cost, chunk: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        chunk = chunk.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(cost(chunk).sum(), chunk)
    return gradient


def _descend(cost: Cost, chunk: torch.Tensor, step_size: float, steps: int) -> torch.Tensor:
    for _ in range(steps):
        chunk = chunk - step_size * _cost_gradient(cost, chunk)
    return chunk


def _guided_chain(sampler: GaussianChainSampler, denoiser, condition: dict, x: torch.Tensor, cost: Cost, scale: float,
                  mcmc_steps: int, generator: torch.Generator | None) -> torch.Tensor:
    """The policy's chain from x, each step's mean moved against the cost (if scale > 0), each step
    repeated `mcmc_steps` more times from its own result re-noised to the step's input level."""
    grid = sampler.grid(x.device)
    for index in range(sampler.num_steps):
        t, t_prev = grid[index, 0], grid[index, 1]
        x_t = x
        for attempt in range(mcmc_steps + 1):
            if attempt > 0:  # x_t ~ q(x_t | x_prev): the forward kernel from the last result back to level t
                a_prev = denoiser.alpha_bar(t_prev, x) if t_prev >= 0 else torch.ones((), dtype=x.dtype)
                kept = denoiser.alpha_bar(t, x) / a_prev
                x_t = kept.sqrt() * x + (1 - kept).sqrt() * torch.randn(x.shape, generator=generator, device=x.device)
            output = denoiser.model_output(x_t, sampler.network_timestep(denoiser, t), condition)
            mean, std = sampler.step_distribution(denoiser, output, x_t, t, t_prev)
            std = torch.as_tensor(std, dtype=x.dtype, device=x.device).clamp(min=sampler.min_std)
            if scale > 0:
                x0, _ = denoiser.predict_x0_eps(output, x_t, t)
                # classifier guidance's std^2 scaling, floored so the last, near-deterministic steps still steer
                mean = mean - scale * std.square().clamp(min=1e-4) * _cost_gradient(cost, x0)
            noisy = sampler.min_std > 0 or sampler.is_stochastic(index)
            x = mean + std * torch.randn(x.shape, generator=generator, device=x.device) if noisy else mean
    return x


@torch.no_grad()
def steer(steering: Steering, sampler: GaussianChainSampler, denoiser, condition: dict, shape: tuple, cost: Cost,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """One normalised chunk per condition row, (B, horizon, action_dim), sampled by `steering.method`."""
    if not isinstance(sampler, (DDPMSampler, DDIMSampler)):
        raise ConfigError(f"ITPS steers a diffusion policy's DDPM or DDIM chain; sampler {type(sampler).__name__} is not one "
                          "(use sampler.kind ddpm or ddim)")
    method = steering.method
    if method == "unsteered":
        return sampler.sample(denoiser, condition, shape, generator=generator).sample
    if method == "output_perturbation":
        chunk = sampler.sample(denoiser, condition, shape, generator=generator).sample
        return _descend(cost, chunk, steering.scale, steering.perturb_steps)
    if method == "post_hoc_ranking":
        n = steering.num_candidates
        repeated = {key: value.repeat_interleave(n, dim=0) for key, value in condition.items()}
        candidates = sampler.sample(denoiser, repeated, (shape[0] * n, *shape[1:]), generator=generator).sample
        candidates = candidates.reshape(shape[0], n, *shape[1:])
        costs = torch.stack([cost(candidates[:, i]) for i in range(n)], dim=1)  # the cost scores one chunk per row
        return candidates[torch.arange(shape[0]), costs.argmin(dim=1)]
    if method == "biased_init":
        target = _descend(cost, torch.zeros(shape, device=next(denoiser.parameters()).device), steering.scale, steering.perturb_steps)
        first = int(round(steering.init_fraction * sampler.num_steps))
        if first == 0:
            return sampler.sample(denoiser, condition, shape, generator=generator).sample
        t = sampler.grid()[first, 0]  # the state entering step `first` is at noise level t
        alpha = denoiser.alpha_bar(t, target)
        start = alpha.sqrt() * target + (1 - alpha).sqrt() * torch.randn(shape, generator=generator, device=target.device)
        return sampler.sample(denoiser, condition, shape, generator=generator, initial_noise=start, first_step=first).sample
    x = torch.randn(shape, generator=generator, device=next(denoiser.parameters()).device)
    mcmc = steering.mcmc_steps if method == "stochastic" else 0
    return _guided_chain(sampler, denoiser, condition, x, cost, steering.scale, mcmc, generator)
