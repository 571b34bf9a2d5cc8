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

from collections import defaultdict

import torch

from genrl.trainers.stat_tracker import PerPromptStatTracker, standardized_unit_rewards
from genrl.trainers.updates import pad_to_common_count


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


def rebel_update(run, trajectory, unit_of_chain: torch.Tensor, rewards: torch.Tensor, pairs: list[tuple[int, int]],
                 steps: list[int]) -> dict:
    """REBEL over pairs of units (a unit: one image's chain, or one episode's chains).

    A unit's log-ratio sums its chains' trained steps, each step reduced over its elements by
    `rebel.step_reduction`. Per group of `pairs_per_update` pairs, a gradient-free pass gives the
    residuals; backward passes over (chain, step) chunks then accumulate the exact gradient of the
    squared residuals (rebel.py), and the optimizer steps once per group.
    """
    accelerator, sampler, denoiser, config = run.accelerator, run.sampler, run.denoiser, run.config
    device = accelerator.device
    eta_inverse, reduction = config.rebel.eta_inverse, config.rebel.step_reduction
    num_units = rewards.shape[0]
    steps_tensor, num_trained = torch.tensor(steps), len(steps)
    diagnostics = defaultdict(list)

    def items_of(units: torch.Tensor) -> torch.Tensor:
        chains = torch.flatten(torch.nonzero(torch.isin(unit_of_chain, units)))
        return (chains[:, None] * num_trained + torch.arange(num_trained)).flatten()

    def log_probs(items: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rows, step_index = items // num_trained, steps_tensor[items % num_trained]
        chunk = trajectory.select(rows)
        with torch.set_grad_enabled(grad), accelerator.autocast():
            log_prob, _, _ = sampler.log_prob(denoiser, chunk, step_index, reduce=reduction)
        return log_prob, chunk.stored_log_prob(torch.arange(len(rows)), step_index, reduction).to(device)

    pairs, _ = pad_to_common_count(accelerator, list(pairs), (0, 0))  # a unit paired with itself: zero gradient
    pair_tensor = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    for _ in range(config.ppo.update_epochs):
        for chosen in pair_tensor[torch.randperm(len(pairs), generator=run.generator)].split(config.rebel.pairs_per_update):
            units = torch.unique(chosen.flatten())
            items = items_of(units)
            unit_log_ratio = torch.zeros(num_units, device=device)
            for part in items.split(config.train_batch_size):
                new, old = log_probs(part, grad=False)
                unit_log_ratio.index_add_(0, unit_of_chain[part // num_trained].to(device), new - old)
            first, second = chosen[:, 0].to(device), chosen[:, 1].to(device)
            residuals = rebel_residuals(unit_log_ratio[first], unit_log_ratio[second], rewards[first], rewards[second],
                                        eta_inverse)
            diagnostics["rebel_loss"].append((residuals**2).mean())
            diagnostics["approx_kl"].append(0.5 * (unit_log_ratio[units.to(device)] ** 2).mean())
            # Each unit's log-prob enters its pair's residual with sign +1 (first member) or -1 (second).
            unit_residual = torch.zeros(num_units, device=device)
            unit_residual.index_add_(0, first, residuals)
            unit_residual.index_add_(0, second, -residuals)
            parts, real = pad_to_common_count(accelerator, list(items.split(config.train_batch_size)), items[:1])
            for number, part in enumerate(parts):
                new, _ = log_probs(part, grad=True)
                signed = unit_residual[unit_of_chain[part // num_trained].to(device)] * (1.0 if number < real else 0.0)
                loss = rebel_signed_loss(new, signed, len(chosen), eta_inverse)
                run.stepper.backward(loss, 1, last_in_group=number == len(parts) - 1)
    return diagnostics


class REBEL:
    """Pairs: units 2j and 2j+1 of the batch (two samples of one prompt, two episodes from one initial
    state). Rewards: standardised with the group statistics (ppo.stat_*) when `standardize_rewards`.
    Steps: every trained step of every chain. Update: rebel_update."""

    def __init__(self, config, run):
        self.config, self.run = config, run
        ppo = config.ppo
        self.tracker = PerPromptStatTracker(ppo.stat_buffer_size, ppo.stat_min_count)

    def steps_to_train(self, epoch: int) -> list[int]:
        return self.run.trainable_steps

    def unit_rewards(self, batch) -> torch.Tensor:
        if self.config.rebel.standardize_rewards:
            return standardized_unit_rewards(self.run, batch, self.tracker)
        return batch.rewards

    def update(self, batch, epoch: int) -> dict:
        pairs = [(i, i + 1) for i in range(0, batch.num_units - 1, 2)]
        return rebel_update(self.run, batch.trajectory, batch.unit_of_chain, self.unit_rewards(batch), pairs,
                            self.steps_to_train(epoch))

    def state_dict(self) -> dict:
        return {"stat_tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state.get("stat_tracker", {}))
