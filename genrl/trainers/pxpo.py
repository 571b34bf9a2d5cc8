"""PXPO's policy loss ("Pixel-wise RL on Diffusion Models: Reinforcement Learning from Rich
Feedback"): a per-pixel reward map weights the per-element log-probabilities of every step.

The policy gradient PXPO follows is  E[ sum_e A_e * grad log pi(x_{t-1}^e | x_t) ]  over the
elements e of a step, where A is the sample's standardised reward map. We write it as DDPO's
PPO-clip objective with one surrogate ratio per element:

    rho      = exp(mean_e log pi_theta^e - log pi_old)          the step's ratio (DDPO's)
    rho_e    = rho * exp(log pi_theta^e - stopgrad(log pi_theta^e))
    loss     = mean_e max(-A_e * rho_e, -A_e * clip(rho_e, 1 - eps, 1 + eps))

rho_e has the value rho and the gradient rho * grad log pi^e, so each element's log-prob is
pushed by its own pixel's advantage, and the importance weight and clipping are DDPO's. With a
constant map (A_e = A) the loss and its gradient are exactly DDPO's, on- and off-policy.
The stored `old` log-prob is the step's mean over elements, as DDPO stores it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate.utils import gather_object

from genrl.trainers.ddpo import DDPO
from genrl.trainers.stat_tracker import PerPromptStatTracker
from genrl.trainers.updates import ppo_update, sample_chain_steps


def pixel_map_to_state(pixel_map: torch.Tensor, state_shape: tuple[int, ...]) -> torch.Tensor:
    """(B, H, W) reward map -> (B, 1, h, w) at the denoised state's resolution, broadcast over
    channels. Latent models: the map is average-pooled by the VAE's downsampling factor, so a
    latent element is credited with the mean reward of the pixels it decodes to."""
    height, width = state_shape[-2:]
    pixel_map = pixel_map.unsqueeze(1).float()
    if pixel_map.shape[-2:] == (height, width):
        return pixel_map
    if pixel_map.shape[-2] % height or pixel_map.shape[-1] % width:
        raise ValueError(f"reward map {tuple(pixel_map.shape[-2:])} is not a multiple of the state size {(height, width)}")
    return F.adaptive_avg_pool2d(pixel_map, (height, width))


def pixel_advantages(pixel_map: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, clip: float,
                     deviation_scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """Per-element advantages: the sample's DDPO advantage plus its map's standardised pattern.

        A_e = clip((mean(m) - mu) / sigma) + (m_e - mean(m)) / s,   then clipped to +-clip

    mu, sigma: the prompt's reward statistics (the scalar reward is the map's mean); s: the RMS of
    the maps' within-sample deviations over the batch (`deviation_scale`; computed from
    `pixel_map` when None). A constant map is exactly DDPO's advantage. Dividing the whole map
    by sigma instead would saturate at +-clip wherever pixels vary more than samples do, and its
    mean would no longer be DDPO's advantage.
    """
    shape = (-1,) + (1,) * (pixel_map.ndim - 1)
    dims = tuple(range(1, pixel_map.ndim))
    sample_mean = pixel_map.mean(dim=dims)
    sample_advantage = ((sample_mean - means) / stds).clamp(-clip, clip)
    deviation = pixel_map - sample_mean.view(shape)
    if deviation_scale is None:
        deviation_scale = deviation.pow(2).mean().sqrt()
    deviation_scale = torch.as_tensor(deviation_scale, dtype=deviation.dtype, device=deviation.device)
    pattern = torch.where(deviation_scale > 0, deviation / deviation_scale.clamp(min=1e-12), torch.zeros_like(deviation))
    return (sample_advantage.view(shape) + pattern).clamp(-clip, clip)


def pxpo_loss(
    element_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantage_map: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """element_log_prob: (B, C, h, w) under current weights; old_log_prob: (B,) the step's mean
    log-prob at sampling; advantage_map: broadcastable to element_log_prob (e.g. (B, 1, h, w))."""
    dims = tuple(range(1, element_log_prob.ndim))
    shape = (-1,) + (1,) * (element_log_prob.ndim - 1)
    log_ratio = element_log_prob.mean(dim=dims) - old_log_prob
    ratio = torch.exp(log_ratio.detach()).view(shape) * torch.exp(element_log_prob - element_log_prob.detach())
    advantage_map = advantage_map.expand_as(element_log_prob)
    unclipped = -advantage_map * ratio
    clipped = -advantage_map * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    info = {
        "policy_loss": loss.detach(),
        "approx_kl": 0.5 * (log_ratio.detach() ** 2).mean(),
        "clipfrac": (torch.abs(torch.exp(log_ratio.detach()) - 1.0) > clip_range).float().mean(),
    }
    return loss, info


class PXPO(DDPO):
    """DDPO with per-element advantages: each sample's DDPO advantage plus its reward map's
    standardised pattern (pooled to the denoised state's resolution), weighting the per-element log-probs."""

    log_prob_reduce = "none"

    def update(self, batch, epoch: int) -> dict:
        all_keys = gather_object(list(batch.group_keys))
        all_rewards = self.run.accelerator.gather(batch.rewards).cpu().numpy()
        means, stds = (self.tracker or PerPromptStatTracker(1, 10**9)).normalizers(all_keys, all_rewards)
        start = self.run.accelerator.process_index * batch.num_units
        local = lambda values: torch.as_tensor(values[start : start + batch.num_units], dtype=torch.float32,  # noqa: E731
                                               device=batch.rewards.device)
        maps = pixel_map_to_state(batch.pixel_maps, tuple(batch.trajectory.sample.shape[1:]))
        # the pattern's scale over every process's maps, so all ranks weight pixels alike
        dims = tuple(range(1, maps.ndim))
        squares = ((maps - maps.mean(dim=dims, keepdim=True)) ** 2).mean(dim=dims)
        deviation_scale = self.run.accelerator.gather(squares).mean().sqrt()
        self.chain_advantages = pixel_advantages(maps, local(means), local(stds), self.config.ppo.adv_clip_max,
                                                 deviation_scale)
        steps = self.steps_to_train(epoch)
        chain_steps = sample_chain_steps(batch.trajectory.batch_size, steps, self.config.ppo.timestep_fraction, self.run.generator)
        return ppo_update(self.run, self, batch.trajectory, chain_steps, pad_step=steps[0])

    def policy_loss(self, log_prob, old_log_prob, advantages, clip_range):
        return pxpo_loss(log_prob, old_log_prob, advantages, clip_range)
