"""MDLM (Sahoo et al., "Simple and Effective Masked Diffusion Language Models"): masking noise with the
SUBS parameterisation, its continuous-time ELBO and its reverse step.

SUBS: the network's logits over the V+1 tokens are turned into x0 probabilities that never put mass on
the mask (its logit is -inf) and that copy every token that is not masked (a clean token stays clean).
Loss: the continuous-time NELBO, E_t [ -alpha'_t / (1 - alpha_t) * sum over masked tokens of
-log p_theta(x0 | x_t) ]. Reverse step from t to s < t: a masked token is unmasked to value v with
probability (alpha_s - alpha_t) / (1 - alpha_t) * p_theta(v | x_t) and stays masked with probability
(1 - alpha_s) / (1 - alpha_t); an unmasked token never changes.
"""

from __future__ import annotations

import torch

from genrl.discrete.noise import alpha, alpha_derivative


def subs_log_probs(logits: torch.Tensor, x_t: torch.Tensor, mask_index: int) -> torch.Tensor:
    """(B, L, V+1) logits -> log p_theta(x0 | x_t) over the V+1 tokens, with the mask impossible and
    unmasked tokens copied (their distribution is a one-hot on the observed value)."""
    logits = logits.clone()
    logits[..., mask_index] = float("-inf")
    log_probs = logits.log_softmax(dim=-1)
    copied = torch.full_like(log_probs, float("-inf")).scatter(-1, x_t.unsqueeze(-1), 0.0)
    return torch.where((x_t == mask_index).unsqueeze(-1), log_probs, copied)


def mdlm_loss(log_probs: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, mask_index: int) -> torch.Tensor:
    """(B,) NELBO estimate per sequence (summed over tokens) from SUBS log-probs at times t (B,)."""
    masked = (x_t == mask_index).float()
    nll = -log_probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    weight = -alpha_derivative(t) / (1 - alpha(t))
    return weight * (masked * nll.nan_to_num(0.0, posinf=0.0)).sum(dim=1)


def mdlm_posterior(x0_probs: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, mask_index: int) -> torch.Tensor:
    """p_theta(x_s | x_t) (B, L, V+1) from x0 probabilities (B, L, V+1, zero on the mask), times t > s (B,)."""
    alpha_t, alpha_s = alpha(t).reshape(-1, 1, 1), alpha(s).reshape(-1, 1, 1)
    unmask = (alpha_s - alpha_t) / (1 - alpha_t)
    probs = unmask * x0_probs
    probs[..., mask_index] = ((1 - alpha_s) / (1 - alpha_t)).squeeze(-1)
    stay = torch.zeros_like(probs).scatter(-1, x_t.unsqueeze(-1), 1.0)
    return torch.where((x_t == mask_index).unsqueeze(-1), probs, stay)
