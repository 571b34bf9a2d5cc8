"""UDLM (Schiff et al., "Simple Guidance Mechanisms for Discrete Diffusion Models"): uniform noise, its
continuous-time ELBO and its reverse step.

The model predicts x0 probabilities x_theta over the V values; the reverse step plugs them into the
true posterior: p_theta(x_s = j | x_t = i) is proportional to q(x_t = i | x_s = j) (alpha_s x_theta_j +
(1 - alpha_s) / V), with q(x_t = i | x_s = j) = a delta_ij + (1 - a) / V, a = alpha_t / alpha_s.

Continuous-time ELBO. With xbar = V alpha_t onehot(x0) + (1 - alpha_t) and xbar_theta = V alpha_t x_theta
+ (1 - alpha_t), i the observed token, the KL between the true and the model's reverse step over
[t - dt, t] is dt times

    -alpha'_t / (V alpha_t) * [ V / xbar_theta_i - V / xbar_i + sum_{j != i} (xbar_j / xbar_i) log(xbar_j xbar_theta_i / (xbar_i xbar_theta_j)) ]

(first order in dt; tests/test_discrete.py checks it against the exact KL of a small step). The loss is
its expectation over t ~ U(0, 1), summed over tokens; it is zero when x_theta = onehot(x0).
"""

from __future__ import annotations

import torch

from genrl.discrete.noise import alpha, alpha_derivative


def udlm_posterior(x0_probs: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """p_theta(x_s | x_t) (B, L, V) from x0 probabilities (B, L, V), times t > s (B,)."""
    vocab = x0_probs.shape[-1]
    alpha_t, alpha_s = alpha(t).reshape(-1, 1, 1), alpha(s).reshape(-1, 1, 1)
    kept = alpha_t / alpha_s
    from_s = kept * torch.nn.functional.one_hot(x_t, vocab).to(x0_probs) + (1 - kept) / vocab  # q(x_t = i | x_s = j), over j
    probs = from_s * (alpha_s * x0_probs + (1 - alpha_s) / vocab)
    return probs / probs.sum(dim=-1, keepdim=True)


def udlm_loss(x0_probs: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B,) continuous-time NELBO integrand per sequence (summed over tokens) at times t (B,)."""
    vocab = x0_probs.shape[-1]
    alpha_t = alpha(t).reshape(-1, 1, 1)
    xbar = vocab * alpha_t * torch.nn.functional.one_hot(x0, vocab).to(x0_probs) + (1 - alpha_t)
    xbar_theta = vocab * alpha_t * x0_probs + (1 - alpha_t)
    pick = lambda values: values.gather(-1, x_t.unsqueeze(-1))  # noqa: E731  (value at the observed token i)
    xbar_i, xbar_theta_i = pick(xbar), pick(xbar_theta)
    others = 1.0 - torch.nn.functional.one_hot(x_t, vocab).to(x0_probs)
    log_ratio = torch.log(xbar * xbar_theta_i) - torch.log(xbar_i * xbar_theta)
    bracket = vocab / xbar_theta_i.squeeze(-1) - vocab / xbar_i.squeeze(-1) + (others * xbar / xbar_i * log_ratio).sum(-1)
    weight = -alpha_derivative(t) / (vocab * alpha(t))
    return weight * bracket.sum(dim=1)
