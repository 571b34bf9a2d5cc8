"""What `genrl pretrain` learns from: one interface, two sources.

A source's `sample(rng, device)` returns one batch: the clean samples the loss noises and the
condition the network sees (keyword arguments of its forward; `input_ids` are turned into
cross-attention states by the trained text encoder). The loop draws every batch with a
generator seeded per (seed, rank, step), so a resumed run sees the batches an uninterrupted
one would. `describe()` adds the source's size to the run's summary.
"""

from __future__ import annotations

import numpy as np
import torch

from genrl.config import DemonstrationData, PretrainConfig, ShapesData
from genrl.data.demonstrations import Demonstrations, load_demonstrations, window_indices
from genrl.models.text_encoder import WordTokenizer
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.shapes import generate_batch


class ShapesBatches:
    """Shapes scenes rendered on the fly (never the same image twice) with their captions; a caption
    becomes "" with probability `condition_dropout`, which trains the null prompt of classifier-free guidance."""

    def __init__(self, config: ShapesData, tokenizer: WordTokenizer, batch_size: int):
        self.config, self.tokenizer, self.batch_size = config, tokenizer, batch_size

    def sample(self, rng: np.random.Generator, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, captions, _ = generate_batch(rng, self.batch_size, tuple(self.config.num_objects), self.config.image_size)
        captions = [caption if rng.random() >= self.config.condition_dropout else "" for caption in captions]
        return images.to(device), {"input_ids": self.tokenizer(captions).to(device)}

    def describe(self) -> dict:
        return {}


class DemonstrationWindows:
    """Windows of `horizon` steps of the demonstrations, as Diffusion Policy samples them: the whole
    normalised action chunk is the sample, the first `n_obs_steps` normalised observations (flattened)
    the FiLM condition. The datasets are small, so everything lives on the device, normalised once."""

    def __init__(self, demos: Demonstrations, policy: DiffusionPolicy, batch_size: int, device):
        self.demos, self.batch_size, self.n_obs_steps = demos, batch_size, policy.n_obs_steps
        self.obs = policy.normalizer.obs.normalize(torch.from_numpy(demos.obs)).float().to(device)
        self.actions = policy.normalizer.action.normalize(torch.from_numpy(demos.action)).float().to(device)
        windows = window_indices(demos.episode_bounds(), policy.horizon, policy.n_obs_steps, policy.n_action_steps)
        self.windows = torch.from_numpy(windows).to(device)

    def sample(self, rng: np.random.Generator, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = self.windows[torch.from_numpy(rng.integers(0, len(self.windows), self.batch_size)).to(device)]
        return self.actions[rows], {"global_cond": self.obs[rows[:, : self.n_obs_steps]].flatten(1)}

    def describe(self) -> dict:
        return {"num_windows": len(self.windows), "dataset_episodes": self.demos.num_episodes}


def load_data(config: PretrainConfig) -> Demonstrations | None:
    """The dataset on disk, if the source has one (read before anything is written, so a bad path fails first)."""
    if not isinstance(config.data, DemonstrationData):
        return None
    demos = load_demonstrations(config.data.path)
    return demos if config.data.max_episodes is None else demos.first_episodes(config.data.max_episodes)


def make_batches(config: PretrainConfig, model, demos: Demonstrations | None, device) -> ShapesBatches | DemonstrationWindows:
    if isinstance(config.data, DemonstrationData):
        return DemonstrationWindows(demos, model, config.batch_size, device)
    return ShapesBatches(config.data, model.tokenizer, config.batch_size)
