"""DDPO's policy loss (Black et al., "Training Diffusion Models with Reinforcement Learning").

Each denoising step is one action of a Gaussian policy. For a batch of stored steps:

    ratio    = exp(log pi_theta(x_{t-1} | x_t) - log pi_old(x_{t-1} | x_t))
    loss     = mean( max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) )

with A the sample's (per-prompt standardised, clipped) advantage; the clip range is tiny
(1e-4 in the reference) because the ratios of ~20 steps compound. An optional KL penalty
to the frozen reference policy, per step, in the closed form for two Gaussians with the
same std (as in Flow-GRPO): ||mu_theta - mu_ref||^2 / (2 s_t^2), averaged over elements.
"""

from __future__ import annotations

import torch


def ddpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    mean: torch.Tensor | None = None,
    reference_mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip loss for one step of each sample in the batch; returns (loss, diagnostics)."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    policy_loss = torch.maximum(unclipped, clipped).mean()
    info = {
        "policy_loss": policy_loss.detach(),
        # Schulman's low-variance estimator of KL(old || new), as DDPO logs it.
        "approx_kl": 0.5 * ((log_prob - old_log_prob) ** 2).mean().detach(),
        "clipfrac": (torch.abs(ratio - 1.0) > clip_range).float().mean().detach(),
    }
    loss = policy_loss
    if kl_coef > 0:
        dims = tuple(range(1, mean.ndim))
        kl = (((mean.float() - reference_mean.float()) ** 2) / (2 * std.float() ** 2)).mean(dim=dims).mean()
        loss = loss + kl_coef * kl
        info["kl_to_reference"] = kl.detach()
    return loss, info
