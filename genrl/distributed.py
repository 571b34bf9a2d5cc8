"""A check that multi-process training keeps every rank's weights identical.

DDP all-reduces gradients, so after every optimizer step each rank should hold bit-identical weights;
a rank that skipped a backward pass, stepped on its own or loaded another checkpoint drifts silently.
Runs under several processes log `weights_rank_spread`: the spread over ranks of a checksum of the
trained weights, 0.0 while they agree.
"""

from __future__ import annotations

import torch


def weight_spread_across_ranks(accelerator, parameters) -> float:
    """max - min over processes of sum_i (i + 1) * sum(parameter_i), in float64 (a collective: every
    process must call it at the same point)."""
    checksum = torch.zeros((), dtype=torch.float64)
    for index, parameter in enumerate(parameters):
        checksum += (index + 1) * parameter.detach().double().sum().cpu()
    gathered = accelerator.gather(checksum.reshape(1).to(accelerator.device))
    return float(gathered.max() - gathered.min())
