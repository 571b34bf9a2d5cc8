"""DPPO's pieces ("Diffusion Policy Policy Optimization", Ren et al.): the env-level critic,
GAE over decisions, the advantage discounted along the denoising chain, and the clip range
that rises along the chain. The policy loss is DDPO's PPO-clip (ddpo.py) with these advantages and clip ranges;
the DPPO class at the end puts them together.

Two MDPs are nested: the env MDP, whose steps are decisions (one executed action chunk, its
rewards summed), and each decision's denoising chain. GAE runs over decisions with a value
network V(observation history); denoising step k of a K-step trained window gets the
decision's advantage times gamma_denoise^(K - 1 - k), so the final, cleanest step gets it in full.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from genrl.errors import ConfigError
from genrl.trainers.ddpo import ddpo_loss
from genrl.trainers.updates import pad_to_common_count, ppo_update


class ObservationValue(nn.Module):
    """V(s): expected discounted return from a (normalised, flattened) observation history."""

    def __init__(self, input_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.Mish(), nn.Linear(hidden, hidden), nn.Mish(),
                                 nn.Linear(hidden, 1))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return self.net(observation).squeeze(-1)


def gae_advantages(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
                   gamma: float, lam: float) -> np.ndarray:
    """Generalised advantage estimates along ONE episode's decisions (arrays of length D).

    delta_d = r_d + gamma * V(s_{d+1}) * (1 - terminated_d) - V(s_d);  A_d = delta_d + gamma * lam * A_{d+1}.
    A time-limit truncation is not a terminal state: its last decision bootstraps from V(s_D).
    """
    deltas = rewards + gamma * next_values * (1.0 - terminated) - values
    advantages = np.zeros_like(deltas)
    running = 0.0
    for d in reversed(range(len(deltas))):
        running = deltas[d] + gamma * lam * running
        advantages[d] = running
    return advantages


def denoising_discount(position: torch.Tensor, num_trained: int, gamma_denoise: float) -> torch.Tensor:
    """gamma_denoise^(K - 1 - k) for trained-step positions k in [0, K)."""
    return gamma_denoise ** (num_trained - 1 - position).float()


def clip_ranges(position: torch.Tensor, num_trained: int, start: float, end: float, rate: float) -> torch.Tensor:
    """PPO clip range per trained-step position: `start` at the first (noisiest) step rising
    exponentially to `end` at the last, as DPPO's reference schedule."""
    if num_trained == 1:
        return torch.full(position.shape, end)
    t = position.float() / (num_trained - 1)
    return start + (end - start) * (torch.exp(rate * t) - 1) / (math.exp(rate) - 1)


class DPPO:
    """Advantages: GAE over each episode's decisions with the value net, standardised over every
    process and clipped, discounted along the chain. Steps: the chain's last `ft_denoising_steps`
    (the loop routes the earlier ones to a frozen copy). Loss: DDPO's PPO-clip with the rising clip.
    The value net is regressed on the GAE returns in its own passes (its optimizer is separate)."""

    log_prob_reduce = "mean"

    def __init__(self, config, run):
        self.config, self.run = config, run
        cfg = config.dppo
        steps = run.trainable_steps
        if cfg.ft_denoising_steps is not None and cfg.ft_denoising_steps > len(steps):
            raise ConfigError(f"dppo.ft_denoising_steps {cfg.ft_denoising_steps} exceeds the sampler's {len(steps)} stochastic steps")
        self.trained = steps if cfg.ft_denoising_steps is None else steps[-cfg.ft_denoising_steps:]
        self.finetuned_steps = cfg.ft_denoising_steps
        value_net = ObservationValue(run.condition_dim, cfg.value_hidden)
        optimizer = torch.optim.AdamW(value_net.parameters(), lr=cfg.value_learning_rate)
        self.value_net, self.value_optimizer = run.accelerator.prepare(value_net, optimizer)
        self.position_of_step = {s: k for k, s in enumerate(self.trained)}

    def steps_to_train(self, epoch: int) -> list[int]:
        return self.trained

    def update(self, batch, epoch: int) -> dict:
        accelerator, cfg, device = self.run.accelerator, self.config.dppo, self.run.accelerator.device
        decisions = batch.decisions
        condition = batch.trajectory.condition["global_cond"].to(device)
        with torch.no_grad():
            values = self.value_net(condition).cpu().numpy().astype(np.float64)
            next_values = self.value_net(decisions.next_condition.to(device)).cpu().numpy().astype(np.float64)
        advantages = np.zeros(len(values))
        for rows in decisions.chains_of_unit:
            advantages[rows] = gae_advantages(decisions.reward[rows], values[rows], next_values[rows],
                                              decisions.terminated[rows], cfg.gamma, cfg.gae_lambda)
        returns = torch.as_tensor(advantages + values, dtype=torch.float32, device=device)
        advantages = torch.as_tensor(advantages, dtype=torch.float32, device=device)
        everything = accelerator.gather(advantages)
        clip = self.config.ppo.adv_clip_max
        self.chain_advantages = ((advantages - everything.mean()) / (everything.std() + 1e-8)).clamp(-clip, clip)
        diagnostics = defaultdict(list)
        diagnostics["value_mean"].append(torch.tensor(values.mean()))
        self._fit_values(condition, returns, diagnostics)
        if epoch < cfg.critic_warmup_epochs:  # while V is untrained its advantages are noise: fit V alone
            return diagnostics
        chain_steps = [torch.tensor(self.trained)] * batch.trajectory.batch_size
        for key, value in ppo_update(self.run, self, batch.trajectory, chain_steps, pad_step=self.trained[0]).items():
            diagnostics[key] += value
        return diagnostics

    def _fit_values(self, condition: torch.Tensor, returns: torch.Tensor, diagnostics) -> None:
        """`ppo.update_epochs` passes of value regression, as many minibatches as the policy update has."""
        accelerator = self.run.accelerator
        per_pass = max(1, self.config.train_batch_size // len(self.trained))
        for _ in range(self.config.ppo.update_epochs):
            order = torch.randperm(len(returns), generator=self.run.generator)
            passes, real = pad_to_common_count(accelerator, list(order.split(per_pass)), order[:1])
            for number, rows in enumerate(passes):
                rows = rows.to(condition.device)
                loss = ((self.value_net(condition[rows]) - returns[rows]) ** 2).mean()
                accelerator.backward(loss * (1.0 if number < real else 0.0))
                self.value_optimizer.step()
                self.value_optimizer.zero_grad()
                if number < real:
                    diagnostics["value_loss"].append(loss.detach())

    def _positions(self, steps: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.position_of_step[int(s)] for s in steps])

    def item_advantages(self, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        discount = denoising_discount(self._positions(steps), len(self.trained), self.config.dppo.gamma_denoise)
        return self.chain_advantages[rows.to(self.chain_advantages.device)] * discount.to(self.chain_advantages.device)

    def clip_range(self, steps: torch.Tensor) -> torch.Tensor:
        cfg = self.config.dppo
        return clip_ranges(self._positions(steps), len(self.trained), cfg.clip_start, cfg.clip_end, cfg.clip_rate).to(
            self.run.accelerator.device)

    def policy_loss(self, log_prob, old_log_prob, advantages, clip_range):
        return ddpo_loss(log_prob, old_log_prob, advantages, clip_range)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
