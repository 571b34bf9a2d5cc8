"""Shortcut Fine-Tuning, SFT-PG ("Optimizing DDPM Sampling with Shortcut Fine-Tuning").

Goal: a FEW-step sampler whose samples match the DATA distribution. The distance minimised is
an integral probability metric, here the Wasserstein-1 distance in its dual form,

    W(data, model) = max_{f 1-Lipschitz}  E_data f(x) - E_model f(x0),

with the critic f kept near 1-Lipschitz by a gradient penalty (WGAN-GP). The sampler's chain is
a policy whose "reward" is f(x0); its policy gradient, with a learned baseline V(x_t, t) fitted
to f(x0) to reduce variance, is

    loss = -mean_t[ (f(x0) - V(x_t, t)) * ratio_t ],   ratio_t = pi_theta(x_{t-1}|x_t) / pi_old(x_{t-1}|x_t)

whose gradient on-policy is -(f(x0) - V) * grad log pi, the paper's estimator. Each epoch alternates
critic updates, baseline regression, then policy updates (the SFTPG class below).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from genrl.trainers.updates import ppo_update, sample_chain_steps


def critic_loss(critic, real: torch.Tensor, fake: torch.Tensor, gradient_penalty: float, generator: torch.Generator | None = None):
    """WGAN-GP critic loss (minimised): E f(fake) - E f(real) + lambda * E (||grad f(x_hat)|| - 1)^2,
    x_hat uniformly between paired real and fake images. Returns (loss, the IPM estimate)."""
    real_scores, fake_scores = critic(real), critic(fake)
    distance = real_scores.mean() - fake_scores.mean()
    loss = -distance
    if gradient_penalty > 0:
        mix = torch.rand(real.shape[0], 1, 1, 1, generator=generator, device=real.device)
        between = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(between).sum(), between, create_graph=True)
        penalty = ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
        loss = loss + gradient_penalty * penalty
    return loss, distance.detach()


def value_loss(value_net, states: torch.Tensor, progress: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Regression of V(x_t, t) onto the critic score f(x0) of the chain's final sample."""
    return torch.mean((value_net(states, progress) - targets) ** 2)


def sft_pg_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Policy-gradient loss for one step of each sample; advantages are f(x0) - V(x_t, t)."""
    ratio = torch.exp(log_prob - old_log_prob)
    loss = -(advantages * ratio).mean()
    return loss, {"policy_loss": loss.detach(), "approx_kl": 0.5 * ((log_prob - old_log_prob) ** 2).mean().detach()}


class SFTPG:
    """Each epoch: critic updates against real data (the critic's score f(x0) is the reward), the
    baseline V(x_t, t) regressed on f(x0), then policy-gradient passes with per-step advantages
    f(x0) - V(x_t, t) on a random `ppo.timestep_fraction` of each chain's steps (no clipping)."""

    log_prob_reduce = "mean"

    def __init__(self, config, run):
        from genrl.data.real_images import RealImages
        from genrl.models.critics import ImageCritic, StateValue

        self.config, self.run = config, run
        cfg = config.sft_pg
        self.real_images = RealImages(cfg.real_data, config.rollout.prompts.num_objects)
        critic = ImageCritic(width=cfg.critic_width)
        value_net = StateValue(run.sample_shape[0], width=cfg.critic_width)
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=cfg.critic_learning_rate, betas=(0.5, 0.9))
        value_optimizer = torch.optim.Adam(value_net.parameters(), lr=cfg.value_learning_rate)
        self.critic, self.value_net, self.critic_optimizer, self.value_optimizer = run.accelerator.prepare(
            critic, value_net, critic_optimizer, value_optimizer)

    def steps_to_train(self, epoch: int) -> list[int]:
        return self.run.trainable_steps

    def update(self, batch, epoch: int) -> dict:
        accelerator, cfg, device = self.run.accelerator, self.config.sft_pg, self.run.accelerator.device
        diagnostics = defaultdict(list)
        # 1. The critic: a few WGAN-GP steps on fresh real images vs this epoch's samples.
        fakes = batch.images
        rng = np.random.default_rng([self.config.seed, accelerator.process_index, epoch, 77])
        self.critic.train()
        for _ in range(cfg.critic_steps + (cfg.critic_warmup_steps if epoch == 0 else 0)):
            real = self.real_images.sample(cfg.critic_batch_size, rng, fakes.shape[-1]).to(device)
            fake = fakes[torch.from_numpy(rng.integers(0, len(fakes), size=cfg.critic_batch_size)).to(device)]
            loss, _ = critic_loss(self.critic, real, fake, cfg.gradient_penalty)
            accelerator.backward(loss)
            self.critic_optimizer.step()
            self.critic_optimizer.zero_grad()
        self.critic.eval()
        with torch.no_grad():
            scores = self.critic(fakes)
            real_scores = self.critic(self.real_images.sample(len(fakes), rng, fakes.shape[-1]).to(device))
        diagnostics["critic_distance"].append(real_scores.mean() - scores.mean())
        diagnostics["critic_score_mean"].append(scores.mean())
        # 2. The baseline, then per-step advantages.
        steps = self.steps_to_train(epoch)
        self.advantages = self._advantages(batch.trajectory, scores, steps, diagnostics)
        # 3. The policy.
        chain_steps = sample_chain_steps(batch.trajectory.batch_size, steps, self.config.ppo.timestep_fraction,
                                         self.run.generator)
        for key, values in ppo_update(self.run, self, batch.trajectory, chain_steps, pad_step=steps[0]).items():
            diagnostics[key] += values
        return diagnostics

    def _advantages(self, trajectory, scores, steps, diagnostics) -> torch.Tensor:
        """(N, K) advantages f(x0) - V(x_t, t) for the trained steps (zero elsewhere), after fitting V."""
        device, num_steps = self.run.accelerator.device, trajectory.num_steps
        states = trajectory.states.to(device).float()
        steps_tensor = torch.tensor(steps)
        batch_size = self.config.train_batch_size
        self.value_net.train()
        for _ in range(self.config.sft_pg.value_steps):
            rows = torch.randint(0, len(states), (batch_size,), generator=self.run.generator)
            step = steps_tensor[torch.randint(0, len(steps), (batch_size,), generator=self.run.generator)]
            loss = value_loss(self.value_net, states[rows, step], (step.float() / num_steps).to(device), scores[rows.to(device)])
            self.run.accelerator.backward(loss)
            self.value_optimizer.step()
            self.value_optimizer.zero_grad()
            diagnostics["value_loss"].append(loss.detach())
        self.value_net.eval()
        advantages = torch.zeros(len(states), num_steps, device=device)
        with torch.no_grad():
            for s in steps:
                advantages[:, s] = scores - self.value_net(states[:, s], torch.full((len(states),), s / num_steps, device=device))
        if self.config.sft_pg.normalize_advantages:
            advantages[:, steps] = advantages[:, steps] / (advantages[:, steps].std() + 1e-6)
        return advantages

    def item_advantages(self, rows: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return self.advantages[rows.to(self.advantages.device), steps.to(self.advantages.device)]

    def clip_range(self, steps: torch.Tensor) -> None:
        return None  # SFT-PG's policy gradient is not clipped

    def policy_loss(self, log_prob, old_log_prob, advantages, clip_range):
        return sft_pg_loss(log_prob, old_log_prob, advantages)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
