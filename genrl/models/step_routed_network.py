"""Two copies of a denoiser network, one per part of the chain (DPPO's partial fine-tuning).

DPPO fine-tunes only the last `ft_denoising_steps` steps of the chain: the early, noisy steps
keep the frozen base network and the late ones use the fine-tuned copy. Routing by network
timestep (not by step index) keeps the split meaningful for any sampler grid: timesteps
at or below `switch_timestep` go to the fine-tuned network.
"""

from __future__ import annotations

import torch
from torch import nn

from genrl.models.temporal_unet import TemporalUnetOutput


class StepRoutedNetwork(nn.Module):
    def __init__(self, base: nn.Module, finetuned: nn.Module, switch_timestep: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.finetuned = finetuned
        self.switch_timestep = int(switch_timestep)

    @property
    def config(self):
        return self.base.config

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, return_dict: bool = True, **condition):
        timestep = torch.as_tensor(timestep, device=sample.device).expand(sample.shape[0])
        late = timestep <= self.switch_timestep
        if late.all():
            output = self.finetuned(sample, timestep, return_dict=False, **condition)[0]
        elif not late.any():
            output = self.base(sample, timestep, return_dict=False, **condition)[0]
        else:  # a batch mixing both parts of the chain: each sample from its own network
            fine = self.finetuned(sample, timestep, return_dict=False, **condition)[0]
            frozen = self.base(sample, timestep, return_dict=False, **condition)[0]
            output = torch.where(late.view(-1, *([1] * (sample.ndim - 1))), fine, frozen)
        return TemporalUnetOutput(sample=output) if return_dict else (output,)
