"""DDPO (Black et al., "Training Diffusion Models with Reinforcement Learning").

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

from genrl.trainers.stat_tracker import PerPromptStatTracker, standardized_unit_rewards
from genrl.trainers.updates import ppo_update, sample_chain_steps


def ddpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float | torch.Tensor,
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
    return policy_loss, info


def kl_to_reference(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL between the current and the reference step Gaussians (same std), averaged over elements and batch."""
    dims = tuple(range(1, mean.ndim))
    return (((mean.float() - reference_mean.float()) ** 2) / (2 * std.float() ** 2)).mean(dim=dims).mean()


class DDPO:
    """Advantages: each unit's reward standardised within its group key (per prompt / initial state,
    with running statistics) or over the batch, clipped to +-adv_clip_max, given to every trained
    step of its chains. Steps: a random `timestep_fraction` of the chain's steps per chain. Loss: ddpo_loss."""

    log_prob_reduce = "mean"

    def __init__(self, config, run):
        self.config, self.run = config, run
        ppo = config.ppo
        self.tracker = PerPromptStatTracker(ppo.stat_buffer_size, ppo.stat_min_count) if ppo.per_group_advantages else None

    def steps_to_train(self, epoch: int) -> list[int]:
        return self.run.trainable_steps

    def unit_advantages(self, batch) -> torch.Tensor:
        clip = self.config.ppo.adv_clip_max
        return standardized_unit_rewards(self.run, batch, self.tracker).clamp(-clip, clip)

    def update(self, batch, epoch: int) -> dict:
        advantages = self.unit_advantages(batch)
        self.chain_advantages = advantages[batch.unit_of_chain.to(advantages.device)]
        steps = self.steps_to_train(epoch)
        chain_steps = sample_chain_steps(batch.trajectory.batch_size, steps, self.config.ppo.timestep_fraction, self.run.generator)
        diagnostics = ppo_update(self.run, self, batch.trajectory, chain_steps, pad_step=steps[0])
        # how much signal the update had: 0 when every reward of the (gathered) batch was the same
        diagnostics["advantage_abs_mean"] = [advantages.abs().mean()]
        return diagnostics

    def item_advantages(self, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return self.chain_advantages[rows.to(self.chain_advantages.device)]

    def clip_range(self, steps: torch.Tensor) -> float:
        return self.config.ppo.clip_range

    def policy_loss(self, log_prob, old_log_prob, advantages, clip_range):
        return ddpo_loss(log_prob, old_log_prob, advantages, clip_range)

    def state_dict(self) -> dict:
        return {"stat_tracker": self.tracker.state_dict() if self.tracker else {}}

    def load_state_dict(self, state: dict) -> None:
        if self.tracker is not None:
            self.tracker.load_state_dict(state.get("stat_tracker", {}))
