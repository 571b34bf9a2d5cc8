"""The forward process of discrete diffusion over token sequences with V real values.

Log-linear schedule (MDLM, UDLM): alpha_t = 1 - (1 - eps) t for t in [0, 1], the probability that a token
is still its clean value's "signal" at time t (alpha_0 = 1, alpha_1 = eps ~ 0).

- Masking noise (MDLM): x_t keeps x_0 with probability alpha_t, else it is the mask token (index V).
- Uniform noise (UDLM): x_t keeps x_0 with probability alpha_t, else a value drawn uniformly from the V
  values (which may be x_0 again): q(x_t | x_0) = alpha_t onehot(x_0) + (1 - alpha_t) / V.
"""

from __future__ import annotations

import torch

EPS = 1e-3


def alpha(t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    return 1 - (1 - eps) * t


def alpha_derivative(t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    return torch.full_like(t, -(1 - eps))


def _per_token(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def mask_tokens(x0: torch.Tensor, t: torch.Tensor, mask_index: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Masking noise: (B, L) clean tokens at per-sample times t (B,) -> x_t with masked tokens = mask_index."""
    keep = torch.rand(x0.shape, generator=generator, device=x0.device) < _per_token(alpha(t), x0)
    return torch.where(keep, x0, torch.full_like(x0, mask_index))


def uniform_tokens(x0: torch.Tensor, t: torch.Tensor, vocab_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform noise: each token is replaced, with probability 1 - alpha_t, by a uniformly drawn value."""
    replace = torch.rand(x0.shape, generator=generator, device=x0.device) >= _per_token(alpha(t), x0)
    random = torch.randint(0, vocab_size, x0.shape, generator=generator, device=x0.device)
    return torch.where(replace, random, x0)
