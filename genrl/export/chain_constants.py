"""A policy's sampler written out as numbers, so a runtime without torch can run the same chain.

Every sampler a Diffusion Policy or its students use is a chain of steps of one form. With `out` the
network's output at (x, timestep, condition):

    x0   = x0_from_x * x + x0_from_output * out          (the schedule's clean-sample estimate, unclipped)
    x0   = skip_from_x * x + x0_weight * x0              (consistency students only; otherwise 0 and 1)
    x0   = clip(x0, -clip, clip)                         (when the teacher's schedule clips)
    mean = mean_from_x0 * x0 + mean_from_x * x + mean_from_output * out
    x    = mean + std * z,  z ~ N(0, I)                  (z clipped to +-noise_clip when set; no z where std = 0)

`chain_constants` computes those numbers per step from the same functions the PyTorch samplers use
(genrl/samplers/), for DDPM, DDIM (any eta), a consistency student (1-3 calls) and a OneDP student; the
export test checks that a numpy loop over them gives the PyTorch chain's actions.
"""

from __future__ import annotations

import torch

from genrl.errors import ConfigError
from genrl.samplers import ConsistencySampler, DDIMSampler, DDPMSampler, OneDPSampler
from genrl.samplers.consistency import skip_weight


def _x0_and_eps_weights(prediction_type: str, alpha_bar: float) -> tuple[float, float, float, float]:
    """(x0 from x, x0 from out, eps from x, eps from out) of Denoiser.predict_x0_eps before clipping."""
    sqrt_a, sqrt_1ma = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return 1 / sqrt_a, -sqrt_1ma / sqrt_a, 0.0, 1.0
    if prediction_type == "sample":
        return 0.0, 1.0, 1 / sqrt_1ma, -sqrt_a / sqrt_1ma
    if prediction_type == "v_prediction":
        return sqrt_a, -sqrt_1ma, sqrt_1ma, sqrt_a
    raise ConfigError(f"cannot export a policy with prediction_type {prediction_type!r}")


def chain_constants(policy, sampler) -> dict:
    """{"initial_state": "gaussian" | "zeros", "noise_clip": float | None, "steps": [per-step numbers]}."""
    denoiser = policy.denoiser
    alphas = denoiser.alphas(torch.zeros((), dtype=torch.float64)).double()
    clip = float(denoiser.clip_sample_range) if denoiser.clip_sample else None
    steps = []
    for index, (t, t_prev) in enumerate(sampler.step_pairs):
        a_t = float(alphas[t])
        x0_from_x, x0_from_output, eps_from_x, eps_from_output = _x0_and_eps_weights(denoiser.prediction_type, a_t)
        step = {"timestep": int(t), "x0_from_x": x0_from_x, "x0_from_output": x0_from_output, "skip_from_x": 0.0,
                "x0_weight": 1.0, "clip": clip, "mean_from_x0": 0.0, "mean_from_x": 0.0, "mean_from_output": 0.0, "std": 0.0}
        if isinstance(sampler, DDPMSampler):
            x0_coeff, xt_coeff, std = DDPMSampler._posterior(alphas, torch.tensor(t), torch.tensor(t_prev))
            step.update(mean_from_x0=float(x0_coeff), mean_from_x=float(xt_coeff), std=float(std))
        elif isinstance(sampler, DDIMSampler):
            a_prev = float(sampler._alpha_prev(alphas, torch.tensor(t_prev)))
            std = sampler.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
            keep = max(1 - a_prev - std**2, 0.0) ** 0.5
            step.update(mean_from_x0=a_prev**0.5, mean_from_x=keep * eps_from_x, mean_from_output=keep * eps_from_output, std=std)
        elif isinstance(sampler, ConsistencySampler):
            skip = float(skip_weight(torch.tensor(a_t, dtype=torch.float64), alphas[sampler.t_min], sampler.sigma_data))
            a_prev = float(alphas[t_prev]) if t_prev >= 0 else 1.0
            step.update(skip_from_x=skip / max(a_t, 1e-12) ** 0.5, x0_weight=1 - skip, mean_from_x0=a_prev**0.5,
                        std=(1 - a_prev) ** 0.5)
        elif isinstance(sampler, OneDPSampler):
            step.update(mean_from_x0=1.0)
        else:
            raise ConfigError(f"cannot export a {type(sampler).__name__}: export supports ddpm, ddim, consistency and onedp")
        if sampler.min_std > 0:  # DPPO's sampling floor applies to every step, as GaussianChainSampler.step does
            step["std"] = max(step["std"], sampler.min_std)
        steps.append(step)
    deterministic_start = isinstance(sampler, OneDPSampler) and not sampler.stochastic
    return {"initial_state": "zeros" if deterministic_start else "gaussian", "noise_clip": sampler.noise_clip, "steps": steps}
