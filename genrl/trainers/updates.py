"""The PPO-style parameter update every policy-gradient trainer shares (REBEL's own is in rebel.py).

An *item* is one denoising step of one stored chain. The update cuts items into backward passes
of `train_batch_size` items and step the optimizer every `gradient_accumulation_steps` passes.
What differs between algorithms -- the advantage of an item (per chain, per step or per element),
its clip range, the loss -- comes from the algorithm object (ddpo.py, pxpo.py, dppo.py, sft_pg.py).

Under DDP every process must run the same number of backward passes, and only a group's last pass
may synchronise gradients; processes with fewer items pad with passes whose loss weight is 0.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext

import torch



class GradientSteps:
    """Accumulates backward passes and steps the optimizer once per group of passes."""

    def __init__(self, accelerator, network, optimizer, trainable, max_grad_norm, ema=None):
        self.accelerator, self.network, self.optimizer = accelerator, network, optimizer
        self.trainable, self.max_grad_norm, self.ema = trainable, max_grad_norm, ema
        self.optimizer_steps = 0

    def backward(self, loss: torch.Tensor, passes_in_group: int, last_in_group: bool) -> None:
        with nullcontext() if last_in_group else self.accelerator.no_sync(self.network):
            self.accelerator.backward(loss / passes_in_group)
        if last_in_group:
            self.accelerator.clip_grad_norm_(self.trainable, self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.optimizer_steps += 1
            if self.ema is not None:
                self.ema.step(self.trainable)


def pad_to_common_count(accelerator, rows: list, pad_row) -> tuple[list, int]:
    """Pad this process's list to the largest count over processes; returns (rows, number of real rows)."""
    count = len(rows)
    largest = int(accelerator.gather(torch.tensor([count], device=accelerator.device)).max())
    return rows + [pad_row] * (largest - count), count


def _groups(passes: list, size: int) -> list[list]:
    return [passes[i : i + size] for i in range(0, len(passes), size)]


def ppo_update(run, algorithm, trajectory, chain_steps: list[torch.Tensor], pad_step: int) -> dict:
    """`ppo.update_epochs` shuffled passes over the items (chain n, step s), s in chain_steps[n].

    The algorithm supplies `log_prob_reduce` ("mean", or "none" for per-element advantages),
    `item_advantages(rows, steps)`, `clip_range(steps)` and `policy_loss(...)`. Returns the
    diagnostics of the real (unpadded) passes.
    """
    accelerator, sampler, denoiser, config = run.accelerator, run.sampler, run.denoiser, run.config
    device = accelerator.device
    rows_all = torch.cat([torch.full((len(s),), n, dtype=torch.long) for n, s in enumerate(chain_steps)])
    steps_all = torch.cat([torch.as_tensor(s, dtype=torch.long) for s in chain_steps])
    padding = (torch.zeros(1, dtype=torch.long), torch.full((1,), pad_step, dtype=torch.long))
    diagnostics = defaultdict(list)
    for _ in range(config.ppo.update_epochs):
        order = torch.randperm(len(rows_all), generator=run.generator)
        # (split() of an empty tensor gives one empty chunk: a process that trains nothing has no pass)
        passes = [(rows_all[items], steps_all[items]) for items in order.split(config.train_batch_size) if len(items)]
        passes, real = pad_to_common_count(accelerator, passes, padding)
        for group in _groups(list(enumerate(passes)), config.gradient_accumulation_steps):
            for position, (number, (rows, step_index)) in enumerate(group):
                chunk = trajectory.select(rows)
                old_log_prob = chunk.log_probs[torch.arange(len(rows)), step_index].to(device)
                with accelerator.autocast():
                    log_prob, mean, std = sampler.log_prob(denoiser, chunk, step_index, reduce=algorithm.log_prob_reduce)
                advantages = algorithm.item_advantages(rows, step_index)
                loss, info = algorithm.policy_loss(log_prob, old_log_prob, advantages, algorithm.clip_range(step_index))
                if config.ppo.kl_coef > 0:
                    kl = run.kl_to_reference(chunk, step_index, mean, std)
                    loss = loss + config.ppo.kl_coef * kl
                    info["kl_to_reference"] = kl.detach()
                weight = 1.0 if number < real else 0.0  # padding passes keep DDP's passes paired, and learn nothing
                run.stepper.backward(loss * weight, len(group), last_in_group=position == len(group) - 1)
                if weight:
                    for key, value in info.items():
                        diagnostics[key].append(value)
    return diagnostics


def sample_chain_steps(num_chains: int, steps: list[int], fraction: float, generator) -> list[torch.Tensor]:
    """For each chain, a random `fraction` of `steps` (at least one), drawn independently (DDPO's timestep_fraction)."""
    count = max(1, int(round(fraction * len(steps))))
    steps = torch.tensor(steps, dtype=torch.long)
    return [steps[torch.randperm(len(steps), generator=generator)[:count]] for _ in range(num_chains)]
