"""Consistency distillation (Song et al. 2023, "Consistency Models"; for actions, Consistency Policy).

The student's consistency function f (genrl/samplers/consistency.py) must give the same x0 for
every point of one probability-flow ODE trajectory of the teacher. One training step:

    pick adjacent grid times t_lo < t_hi (the grid runs from t_min, where f is the identity, up to T-1)
    x_hi   = sqrt(a_bar_hi) x0 + sqrt(1 - a_bar_hi) eps          (x0 from the data)
    x_lo   = one deterministic DDIM step of the TEACHER from x_hi to t_lo   (no gradient)
    loss   = || f_student(x_hi, t_hi) - f_target(x_lo, t_lo) ||^2        (target: no gradient)

The target network is an exponential moving average of the student (decay 0.95 in the paper's
distillation runs); at the bottom pair the target is the boundary x_lo / sqrt(a_bar_t_min),
which anchors the whole chain of consistencies to the data. The teacher's ODE must be
deterministic: DDIM with eta 0 is the first-order solver of the probability-flow ODE of any
DDPM-style (eps, v or sample prediction) model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrl.denoiser import broadcast_to_batch
from genrl.samplers.consistency import SIGMA_DATA, consistency_x0


def distillation_grid(num_train_timesteps: int, num_intervals: int) -> torch.Tensor:
    """Ascending timesteps t_min = 0 < ... < T-1: `num_intervals` steps of the teacher's ODE, evenly spaced."""
    if not 1 <= num_intervals < num_train_timesteps:
        raise ValueError(f"num_intervals must be in [1, {num_train_timesteps - 1}], got {num_intervals}")
    return torch.linspace(0, num_train_timesteps - 1, num_intervals + 1).round().long()


def teacher_ode_step(teacher_denoiser, x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, condition: dict,
                     guidance_scale: float = 1.0, null_condition: dict | None = None) -> torch.Tensor:
    """Deterministic DDIM step x_t -> x_{t_prev} (per-sample t, t_prev) under the teacher."""
    output = teacher_denoiser.model_output(x_t, t, condition, guidance_scale, null_condition)
    x0, eps = teacher_denoiser.predict_x0_eps(output, x_t, t)
    alpha_prev = teacher_denoiser.alpha_bar(t_prev, x_t)
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


def consistency_distillation_loss(
    student_denoiser, target_denoiser, teacher_denoiser, clean: torch.Tensor, condition: dict, grid: torch.Tensor,
    generator: torch.Generator, sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """The mean squared consistency residual over a batch of clean samples (one random grid interval each)."""
    device = clean.device
    interval = torch.randint(0, len(grid) - 1, (clean.shape[0],), generator=generator, device=device)
    grid = grid.to(device)
    t_hi, t_lo = grid[interval + 1], grid[interval]
    noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    alpha_hi = broadcast_to_batch(student_denoiser.alphas(clean)[t_hi], clean)
    x_hi = alpha_hi.sqrt() * clean + (1 - alpha_hi).sqrt() * noise
    t_min = int(grid[0])
    with torch.no_grad():
        x_lo = teacher_ode_step(teacher_denoiser, x_hi, t_hi, t_lo, condition)
        target = consistency_x0(target_denoiser, target_denoiser.model_output(x_lo, t_lo, condition), x_lo, t_lo, t_min,
                                sigma_data)
    prediction = consistency_x0(student_denoiser, student_denoiser.model_output(x_hi, t_hi, condition), x_hi, t_hi, t_min,
                                sigma_data)
    return F.mse_loss(prediction.float(), target.float())
