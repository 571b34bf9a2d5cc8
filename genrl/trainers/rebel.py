"""REBEL's loss ("REBEL: Reinforcement Learning via Regressing Relative Rewards").

Two samples y, y' of the same prompt form a pair. With the chain's log-prob summed over its
trained denoising steps (each step's log-prob is the mean over elements, DDPO's convention),

    loss = mean over pairs [ (1/eta) * ((log pi_theta(y) - log pi_old(y)) - (log pi_theta(y') - log pi_old(y')))
                             - (r(y) - r(y')) ]^2

No clipping and no value network: the regression itself keeps the update small.

Memory: the residual needs every step's log-prob, but holding the graph of ~20 network calls
is what we avoid. `rebel_residuals` computes the residual without gradients; the gradient of
the squared residual is then 2 * residual * d(residual)/d(theta), which is a sum over steps,
so `rebel_step_loss` back-propagates one step at a time (`rebel_signed_loss`: any chunk of
terms, as the policy trainer uses for episodes of many chains). The total gradient is exact.
"""

from __future__ import annotations

import torch


def rebel_loss(
    log_ratio_first: torch.Tensor, log_ratio_second: torch.Tensor,
    reward_first: torch.Tensor, reward_second: torch.Tensor, eta_inverse: float = 1.0,
) -> torch.Tensor:
    """The loss itself: log_ratio_* are (P,) chain log-ratios (summed over steps) of the pair members."""
    residual = eta_inverse * (log_ratio_first - log_ratio_second) - (reward_first - reward_second)
    return (residual**2).mean()


def rebel_residuals(
    log_ratio_first: torch.Tensor, log_ratio_second: torch.Tensor,
    reward_first: torch.Tensor, reward_second: torch.Tensor, eta_inverse: float = 1.0,
) -> torch.Tensor:
    """(P,) residuals of the regression, from log-ratios computed without gradients."""
    return eta_inverse * (log_ratio_first - log_ratio_second) - (reward_first - reward_second)


def rebel_signed_loss(log_prob: torch.Tensor, signed_residuals: torch.Tensor, num_pairs: int, eta_inverse: float = 1.0) -> torch.Tensor:
    """A share of the loss gradient for any set of log-prob terms: each term (a step of a chain, of
    any pair member) carries its pair's residual, signed + for the pair's first member and - for
    the second. Summed over every term of every pair, the gradients equal `rebel_loss`'s:
    d/dtheta mean_p r_p^2 = sum_terms (2/P) * eta_inverse * (+-r_p) * d log pi(term).
    Its value is not the loss (log that from the residuals)."""
    return (2.0 * eta_inverse / num_pairs * signed_residuals.detach() * log_prob).sum()


def rebel_step_loss(
    step_log_prob_first: torch.Tensor, step_log_prob_second: torch.Tensor,
    residuals: torch.Tensor, eta_inverse: float = 1.0,
) -> torch.Tensor:
    """One denoising step of every pair: summed over all trained steps, the gradients of these
    equal the gradient of `rebel_loss`."""
    return rebel_signed_loss(torch.cat([step_log_prob_first, step_log_prob_second]), torch.cat([residuals, -residuals]),
                             residuals.numel(), eta_inverse)
