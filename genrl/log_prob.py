"""Log-density of a denoising step, the quantity every policy-gradient trainer differentiates.

The reduction is a parameter because the methods disagree on it: DDPO averages over the
elements of a step, REBEL sums, and PXPO keeps the per-element map to weight it by a
per-pixel reward. Always computed in float32: under bf16 the squared residuals of tiny-std
steps lose the digits that make on-policy ratios exactly 1.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Reduction = Literal["mean", "sum", "none"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float, reduce: Reduction = "mean", mask: torch.Tensor | None = None,
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """log N(x; mean, std^2 I) per element, reduced over all but the batch dimension.

    `mask` (optional, 0/1, broadcastable to one sample): only the elements it keeps are scored,
    e.g. the executed slice of an action chunk; "mean" is then the mean over the kept elements.
    `clamp` (optional, (low, high)): each element's log-density is clamped before the reduction,
    as DPPO's reference does (-5, 2): an element far in its Gaussian's tail then carries no
    gradient instead of a huge one.
    """
    x, mean = x.float(), mean.float()
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    log_prob = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    if clamp is not None:
        log_prob = log_prob.clamp(min=clamp[0], max=clamp[1])
    if mask is not None:
        mask = mask.to(device=x.device, dtype=torch.float32).expand_as(log_prob[0])
        log_prob = log_prob * mask
    if reduce == "none":
        return log_prob
    dims = tuple(range(1, log_prob.ndim))
    if reduce == "mean":
        return log_prob.mean(dim=dims) if mask is None else log_prob.sum(dim=dims) / mask.sum()
    if reduce == "sum":
        return log_prob.sum(dim=dims)
    raise ValueError(f"reduce must be 'mean', 'sum' or 'none', got {reduce!r}")
