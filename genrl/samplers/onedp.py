"""One-call sampling of a OneDP student (distill/onedp.py).

The student is a copy of its teacher's network trained to map noise to an action chunk in one call:
called at the fixed timestep k_init on x = z, its output read in the teacher's parameterisation gives
the x0 estimate, which is the action chunk (clipped to the action range when the teacher's schedule
clips). OneDP-S draws z ~ N(0, I); OneDP-D always uses z = 0, so its actions are a deterministic
function of the observation (whatever noise or generator the caller passes).

As a Gaussian chain this is a single deterministic step from (k_init) to the end, so the student runs
through the same `Trajectory`, `genrl eval` and evaluation code as every other sampler. There is no
principled second call (the generator is trained only at k_init, from z), so `num_steps` is 1.
"""

from __future__ import annotations

import torch

from genrl.denoiser import Denoiser
from genrl.samplers.gaussian_chain import GaussianChainSampler


class OneDPSampler(GaussianChainSampler):
    """`k_init` and `stochastic` are the student's own (saved with it by the distiller)."""

    def __init__(self, k_init: int, stochastic: bool):
        self.step_pairs = [(int(k_init), -1)]
        self.stochastic = bool(stochastic)

    def is_stochastic(self, step_index: int) -> bool:
        return False  # the one step is deterministic given z; OneDP-S's randomness is z itself

    def step_distribution(self, denoiser: Denoiser, model_output, x_t, t, t_prev):
        action, _ = denoiser.predict_x0_eps(model_output, x_t, t)  # clipped as the teacher's schedule says
        return action, torch.zeros((), device=action.device, dtype=action.dtype)

    @torch.no_grad()
    def sample(self, denoiser: Denoiser, condition: dict, shape: tuple, generator: torch.Generator | None = None,
               guidance_scale: float = 1.0, null_condition: dict | None = None, initial_noise: torch.Tensor | None = None,
               **kwargs):
        if not self.stochastic:  # OneDP-D: the generator's input is always z = 0
            initial_noise = torch.zeros(shape, device=next(denoiser.parameters()).device)
        return super().sample(denoiser, condition, shape, generator, guidance_scale, null_condition, initial_noise, **kwargs)
