"""Rollouts of an image model: chains sampled for prompts, the decoded images scored by a reward.

One epoch draws `num_batches x batch_size` prompts per process (consecutive ones in groups of
`group_size` share a prompt), samples their chains, decodes the final samples and scores them;
the reward's per-pixel map (PXPO) and the images (SFT-PG's critic) travel with the batch.
B^2-DiffuRL's branching is an option of `collect`: each prompt's chain runs its first
`branch_step` steps once and branches into `group_size` children (b2diffurl.py).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from genrl.errors import ConfigError, RewardError
from genrl.figures import save_before_after_grid
from genrl.evaluation.images import make_prompt_groups, sample_images, sample_trajectory, score_images
from genrl.models.loading import load_model
from genrl.run_dir import save_grid
from genrl.trainers.b2diffurl import sample_branched
from genrl.trainers.batch import RolloutBatch
from genrl.trajectory import Trajectory
from rewards import check_reward_config, compute_configured_reward, compute_reward, get_reward
from rewards.diversity import check_diversity_options, prompt_diversity


class PromptRollout:
    def __init__(self, config, uses_reward: bool = True):
        self.config, self.rollout = config, config.rollout
        self.uses_reward = uses_reward  # SFT-PG's critic replaces the reward
        if uses_reward:
            check_reward_config(self.rollout.reward)  # fail on an unknown reward before any work
        for name in self.rollout.metric_rewards:
            get_reward(name)
        check_diversity_options(self.rollout.diversity_metric, self.rollout.diversity_lpips_weights)
        self.model = load_model(config.model.path, config.model.resolution, config.model.decode_chunk_size)

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Modules that are never trained (VAE, text encoders): they may live in the mixed-precision dtype."""
        return [module for name, module in self.model.named_children() if module is not self.model.network and name != "denoiser"]

    def start(self, accelerator, sampler) -> None:
        self.accelerator, self.sampler, self.device = accelerator, sampler, accelerator.device
        self.model.to(self.device).eval()
        self.eval_prompts = make_prompt_groups(self.rollout.prompts, np.random.default_rng([self.config.seed, 999]),
                                               self.rollout.eval_samples, self.rollout.eval_group_size)

    # ---------------------------------------------------------------- one epoch
    def collect(self, epoch: int, branch_step: int | None = None) -> tuple[RolloutBatch, dict]:
        rollout, accelerator, rank = self.rollout, self.accelerator, self.accelerator.process_index
        parts, rewards, pixel_maps, images_kept, side = [], [], [], [], defaultdict(list)
        timings = defaultdict(float)
        for batch_index in range(rollout.num_batches):
            rng = np.random.default_rng([self.config.seed, rank, epoch, batch_index])
            prompts = make_prompt_groups(rollout.prompts, rng, rollout.batch_size, rollout.group_size)
            generator = torch.Generator(self.device).manual_seed(int(rng.integers(2**62)))
            started = time.perf_counter()
            with accelerator.autocast():
                if branch_step is not None:
                    part = sample_branched(self.model, self.sampler, prompts[:: rollout.group_size], rollout.group_size,
                                           branch_step, generator, self.config.sampler.guidance_scale)
                else:
                    part = sample_trajectory(self.model, self.sampler, prompts, generator, self.config.sampler.guidance_scale)
            timings["time_sampling"] += time.perf_counter() - started
            started = time.perf_counter()
            images = self.model.decode(part.sample)
            if self.uses_reward:
                reward = compute_configured_reward(rollout.reward, images, prompts)
                if self.config.trainer == "pxpo" and reward.pixel_map is None:
                    raise RewardError(f"trainer pxpo needs a reward that returns a per-pixel map; {rollout.reward.label!r} does not")
                for key, values in reward.info.items():
                    side[f"{rollout.reward.label}/{key}"].append(values)
                rewards.append(reward.scores)
                pixel_maps.append(reward.pixel_map)
            else:
                images_kept.append(images.float())
            for metric in rollout.metric_rewards:
                output = compute_reward(metric, images, prompts)
                side[metric].append(output.scores)
                for key, values in output.info.items():
                    side[f"{metric}/{key}"].append(values)
            if rollout.group_size > 1:
                side["diversity"].append(torch.tensor([prompt_diversity(images, prompts, "pixel")]))
            timings["time_reward"] += time.perf_counter() - started
            parts.append(part)
        trajectory = Trajectory.concatenate(parts)
        metrics = {key: accelerator.gather(torch.cat(values).float().to(self.device)).nanmean().item()
                   for key, values in side.items()}
        count = trajectory.batch_size
        batch = RolloutBatch(
            trajectory=trajectory,
            rewards=torch.cat(rewards).to(self.device) if rewards else torch.zeros(count, device=self.device),
            unit_of_chain=torch.arange(count),
            group_keys=list(trajectory.prompts),
            pixel_maps=torch.cat(pixel_maps).to(self.device) if pixel_maps and pixel_maps[0] is not None else None,
            images=torch.cat(images_kept).to(self.device) if images_kept else None,
            metrics=metrics,
            group_size=rollout.group_size,
        )
        return batch, dict(timings)

    # ---------------------------------------------------------------- evaluation and saving
    def evaluate(self, output_dir, tag: str) -> dict:
        """Fixed prompts and noise, scored by the reward and the metric rewards (main process)."""
        rollout = self.rollout
        with self.accelerator.autocast():
            images = sample_images(self.model, self.eval_prompts, self.config.sampler, seed=self.config.seed + 7,
                                   batch_size=rollout.batch_size)
        one_per_prompt = images[:: rollout.eval_group_size][: rollout.grid_prompts]
        save_grid(one_per_prompt, output_dir / "samples" / f"{tag}.png", nrow=rollout.grid_prompts)
        per_sample = {}
        scores = score_images(images, self.eval_prompts, rollout.metric_rewards, rollout.reward if self.uses_reward else None,
                              per_sample=per_sample)
        # Every evaluation uses the same prompts and noise, so these pair sample by sample across tags.
        torch.save(per_sample, output_dir / "samples" / f"{tag}_scores.pt")
        grid_scores = per_sample[rollout.reward.label][:: rollout.eval_group_size][: rollout.grid_prompts] if self.uses_reward else None
        torch.save({"images": one_per_prompt, "scores": grid_scores}, output_dir / "samples" / f"{tag}_images.pt")
        scores["diversity"] = prompt_diversity(images, self.eval_prompts, rollout.diversity_metric,
                                               lpips_weights=rollout.diversity_lpips_weights)
        return scores

    def finish(self, output_dir, before: dict, after: dict) -> dict:
        """The before/after grid: top row before, bottom row after, same prompts and noise, each
        sample's reward under it."""
        samples = output_dir / "samples"
        first, last = torch.load(samples / "before_images.pt"), torch.load(samples / "after_images.pt")
        label = self.rollout.reward.label if self.uses_reward else "reward"
        grid = save_before_after_grid(first["images"], last["images"], first["scores"], last["scores"],
                                      samples / "before_after.png", label=label)
        return {"before_after_grid": str(grid)}

    def save(self, output_dir, network: torch.nn.Module, lora: bool) -> None:
        self.model.save_finetuned(output_dir, network, lora, merged=self.config.model.save_merged_model)

    def check(self, trainer: str) -> None:
        if trainer == "dppo":
            raise ConfigError("trainer dppo needs env episodes (rollout.kind: env); for images use ddpo")

