"""What every trainable model shares: a network driven by a diffusers scheduler.

Subclasses set `network` and `scheduler` and call `_attach_denoiser`; the rest of the
trainer-facing interface (`family`, `shift`, `num_train_timesteps`, `device`) follows from them.
Assigning a new `network` or `scheduler` later (a distiller swapping in its student) re-attaches the denoiser, so
sampling never runs a stale network.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from genrl.denoiser import Denoiser
from genrl.flow_denoiser import FlowDenoiser


class ScheduledModel(torch.nn.Module):
    network: torch.nn.Module

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name in ("network", "scheduler") and "_denoiser_clip_sample" in self.__dict__:
            self._attach_denoiser(self._denoiser_clip_sample)

    def _attach_denoiser(self, clip_sample: bool) -> None:
        self._denoiser_clip_sample = clip_sample
        if self.family == "flow":
            self.denoiser = FlowDenoiser(self.network, self.num_train_timesteps)
        else:
            self.denoiser = Denoiser(
                self.network,
                self.scheduler.alphas_cumprod,
                prediction_type=self.scheduler.config.prediction_type,
                clip_sample=clip_sample,
                clip_sample_range=self.scheduler.config.get("clip_sample_range", 1.0),
            )

    @property
    def family(self) -> str:
        """'flow' for a flow-matching (velocity) model, 'diffusion' for a DDPM-style one."""
        return "flow" if isinstance(self.scheduler, FlowMatchEulerDiscreteScheduler) else "diffusion"

    @property
    def shift(self) -> float:
        return float(self.scheduler.config.get("shift", 1.0))

    @property
    def num_train_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device
