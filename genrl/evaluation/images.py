"""Sample a model on a list of prompts and score the samples with registered rewards.

Used by `genrl eval`, at the end of pretraining, and for the before/after figures of
every trainer, so "alignment" means the same thing everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from genrl.config import PromptConfig, SamplerConfig
from genrl.samplers import build_sampler
from genrl.shapes import random_prompts
from rewards import compute_configured_reward, compute_reward


def make_prompts(config: PromptConfig, rng: np.random.Generator, count: int) -> list[str]:
    if config.source == "list":
        return [config.prompts[i] for i in rng.integers(0, len(config.prompts), size=count)]
    return random_prompts(rng, count, num_objects=tuple(config.num_objects))


def make_prompt_groups(config: PromptConfig, rng: np.random.Generator, count: int, per_prompt: int) -> list[str]:
    """`count` prompts in runs of `per_prompt` identical ones (pairs for REBEL, groups for diversity);
    the last run is shorter when `per_prompt` does not divide `count`."""
    unique = make_prompts(config, rng, -(-count // per_prompt))
    return [prompt for prompt in unique for _ in range(per_prompt)][:count]


@torch.no_grad()
def sample_trajectory(model, sampler, prompts: list[str], generator: torch.Generator, guidance_scale: float = 1.0):
    """One batch of chains for `prompts`, with the empty prompt as CFG's null condition when guided."""
    guided = guidance_scale != 1.0
    return sampler.sample(
        model.denoiser,
        model.encode_prompts(prompts),
        (len(prompts), *model.sample_shape),
        generator=generator,
        guidance_scale=guidance_scale,
        null_condition=model.null_condition(len(prompts)) if guided else None,
        prompts=prompts,
    )


@torch.no_grad()
def sample_images(model, prompts: list[str], sampler_config: SamplerConfig, seed: int, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
    """Decoded images in [-1, 1] for each prompt; seeded, independent of batch size."""
    sampler = build_sampler(sampler_config, model)
    images = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="sampling", disable=not progress):
        chunk = prompts[start : start + batch_size]
        generator = torch.Generator(model.device).manual_seed(seed + start)
        trajectory = sample_trajectory(model, sampler, chunk, generator, sampler_config.guidance_scale)
        images.append(model.decode(trajectory.sample).cpu())
    return torch.cat(images)


def score_images(images: torch.Tensor, prompts: list[str], reward_names: list[str], reward_config=None,
                 per_sample: dict | None = None) -> dict[str, float]:
    """Mean of each reward and of each reward's logged extras, e.g. `shapes_alignment/prompt_match`,
    with the standard error of each mean (`<name>_stderr`: std / sqrt(n)); with `reward_config`,
    the configured (possibly weighted) reward first, under its label. A dict passed as `per_sample`
    receives each name's per-image scores (for paired before/after comparisons)."""
    outputs = [(name, compute_reward(name, images, prompts)) for name in reward_names]
    if reward_config is not None:
        outputs.insert(0, (reward_config.label, compute_configured_reward(reward_config, images, prompts)))
    summary = {}
    for name, output in outputs:
        for key, values in [(name, output.scores), *[(f"{name}/{k}", v) for k, v in output.info.items()]]:
            values = values.detach().float().cpu()
            summary[key] = values.mean().item()
            summary[f"{key}_stderr"] = (values.std() / len(values) ** 0.5).item() if len(values) > 1 else float("nan")
            if per_sample is not None:
                per_sample[key] = values
    return summary
