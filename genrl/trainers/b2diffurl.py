"""B^2-DiffuRL ("Towards Better Alignment: Training Diffusion Models with RL Against Sparse
Rewards"): backward progressive training and branch-based sampling, around DDPO or REBEL.

- Stages: stage i trains only the chain's last `split_step(i)` denoising steps, and that window
  grows from the end of the chain toward its start over the stages:
      split_step(i) = start + floor((end - start + 1) * i / num_stages)
  (the reference runs 20 DDIM steps, 100 stages, start 14, end 20).
- Branches: a prompt's chain runs its first K - split_step steps once (the shared prefix), then
  branches into `branch_factor` children that each finish the chain with their own noise. The
  children differ only in the trained window, so their reward differences credit that window.
- Selection (DDPO loss): rewards are z-scored with per-prompt running statistics; from each
  branch the best child is kept if its z >= positive_threshold, the worst if z <= negative_threshold,
  and only those are trained. With the REBEL loss, each branch's best and worst children form
  the pair (when their rewards differ).
"""

from __future__ import annotations

import numpy as np
import torch

from genrl.trainers.stat_tracker import PerPromptStatTracker, standardized_unit_rewards
from genrl.trainers.updates import ppo_update
from genrl.trajectory import Trajectory


def split_step(stage: int, num_stages: int, start: int, end: int, num_steps: int) -> int:
    """Number of final denoising steps trained at `stage` (clamped to the chain)."""
    stage = min(stage, num_stages - 1)
    return min(num_steps, start + (end - start + 1) * stage // num_stages)


@torch.no_grad()
def sample_branched(
    model, sampler, prompts: list[str], branch_factor: int, branch_step: int,
    generator: torch.Generator, guidance_scale: float = 1.0,
) -> Trajectory:
    """Chains for `prompts`, each branched into `branch_factor` children after `branch_step` steps.

    Returns len(prompts) * branch_factor chains, the children of a prompt consecutive; every
    child's stored prefix (states and log-probs) is the one prefix computed for its prompt.
    """
    guided = guidance_scale != 1.0
    shape = (len(prompts), *model.sample_shape)
    condition = model.encode_prompts(prompts)
    null = model.null_condition(len(prompts)) if guided else None
    prefix = sampler.sample(model.denoiser, condition, shape, generator=generator, guidance_scale=guidance_scale,
                            null_condition=null, prompts=prompts, last_step=branch_step)
    children = prefix.repeat_each(branch_factor)
    continuation = sampler.sample(
        model.denoiser, children.condition, tuple(children.states[:, -1].shape), generator=generator,
        guidance_scale=guidance_scale, null_condition=children.null_condition, initial_noise=children.states[:, -1],
        prompts=children.prompts, first_step=branch_step,
    )
    return children.followed_by(continuation)


# z-scores of binary rewards land exactly on the thresholds (one success in five children: the
# failures' z is -0.5 in exact arithmetic, -0.49999 in float32); a threshold includes its own value.
_THRESHOLD_TOLERANCE = 1e-4


def select_children(z_scores: np.ndarray, branch_factor: int, positive_threshold: float, negative_threshold: float) -> list[int]:
    """Indices of the kept children: per branch, the best if z >= positive, the worst if z <= negative."""
    kept = []
    for branch in range(len(z_scores) // branch_factor):
        scores = z_scores[branch * branch_factor : (branch + 1) * branch_factor]
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[best] >= positive_threshold - _THRESHOLD_TOLERANCE:
            kept.append(branch * branch_factor + best)
        if scores[worst] <= negative_threshold + _THRESHOLD_TOLERANCE and worst != best:
            kept.append(branch * branch_factor + worst)
    return kept


def best_worst_pairs(rewards: np.ndarray, branch_factor: int) -> list[tuple[int, int]]:
    """Per branch, (best, worst) child indices, for branches whose children's rewards differ."""
    pairs = []
    for branch in range(len(rewards) // branch_factor):
        scores = rewards[branch * branch_factor : (branch + 1) * branch_factor]
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        if scores[best] > scores[worst]:
            pairs.append((branch * branch_factor + best, branch * branch_factor + worst))
    return pairs


class B2DiffuRL:
    """Wraps DDPO or REBEL. Epoch i is stage i: the chain branches after K - split_step(i) steps
    (the rollout samples `rollout.group_size` children per prefix) and only the window after the
    branch point is trained. DDPO: per-prompt z-scores, the kept children (select_children) trained
    on the window. REBEL: each branch's best and worst child as a pair."""

    def __init__(self, config, run, inner):
        self.config, self.run, self.inner = config, run, inner
        self.tracker = getattr(inner, "tracker", None) or PerPromptStatTracker(config.ppo.stat_buffer_size,
                                                                               config.ppo.stat_min_count)
        self.log_prob_reduce = getattr(inner, "log_prob_reduce", "mean")

    def window(self, epoch: int) -> int:
        b2 = self.config.b2diffurl
        return split_step(epoch, b2.num_stages or self.config.num_epochs, b2.split_step_start, b2.split_step_end,
                          self.run.num_steps)

    def branch_step(self, epoch: int) -> int:
        return self.run.num_steps - self.window(epoch)

    def steps_to_train(self, epoch: int) -> list[int]:
        return [s for s in self.run.trainable_steps if s >= self.branch_step(epoch)]

    def update(self, batch, epoch: int) -> dict:
        from genrl.trainers.rebel import REBEL, rebel_update  # REBEL imports nothing from here

        steps, group = self.steps_to_train(epoch), batch.group_size
        if isinstance(self.inner, REBEL):
            rewards = self.inner.unit_rewards(batch)
            pairs = best_worst_pairs(rewards.cpu().numpy(), group)
            diagnostics = rebel_update(self.run, batch.trajectory, batch.unit_of_chain, rewards, pairs, steps)
            kept = 2 * len(pairs)
        else:
            z_scores = standardized_unit_rewards(self.run, batch, self.tracker)
            b2 = self.config.b2diffurl
            chosen = select_children(z_scores.cpu().numpy(), group, b2.positive_threshold, b2.negative_threshold)
            clip = self.config.ppo.adv_clip_max
            self.inner.chain_advantages = z_scores.clamp(-clip, clip)
            trained = torch.tensor(steps)
            chosen_set = set(chosen)
            chain_steps = [trained if n in chosen_set else trained[:0] for n in range(batch.trajectory.batch_size)]
            diagnostics = ppo_update(self.run, self.inner, batch.trajectory, chain_steps, pad_step=steps[0])
            kept = len(chosen)
        diagnostics["b2_kept_fraction"] = [torch.tensor(kept / batch.num_units)]
        diagnostics["b2_split_step"] = [torch.tensor(float(self.window(epoch)))]
        return diagnostics

    def state_dict(self) -> dict:
        return {"stat_tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state.get("stat_tracker", {}))
