"""Training UFC adapters with `genrl pretrain` (the shared `fit` loop), and their save/load.

Each batch is an episode of ONE condition type: a support set of `shots` (condition, image) pairs and
`batch_size` query pairs. The loss is the frozen UNet's denoising loss on the query images with the
adapter's residuals, every image of the episode (queries and supports) noised to one timestep, the
prompt empty (all spatial information must come from the adapter).

- Meta-training (`model.mode: meta`): the condition types in `data.tasks`, fresh scenes every episode,
  every adapter parameter trained.
- Few-shot (`model.mode: few_shot`): the meta-trained adapter (`model.init_adapter`) gains the new
  `data.tasks[0]`; support and query pairs are drawn from a fixed pool of `data.pool_size` examples (e.g.
  30), and only the new task's biases and the matching module train.
- Fine-tune (`model.mode: fine_tune`): like few-shot, but every adapter parameter trains; with fresh scenes
  (no pool) it is the fully supervised upper bound that starts from the meta-trained encoder.
- From scratch (`model.mode: scratch`): a fresh adapter of the same size trained like few-shot but with
  every parameter free: the baseline that few-shot must beat. With a large pool (or none: fresh scenes)
  the same mode is the fully supervised adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from genrl.errors import CheckpointError, ConfigError
from genrl.guidance.spatial_conditions import CONDITION_TYPES, scene_examples
from genrl.guidance.ufc import UFCAdapter
from genrl.models.loading import load_model

ADAPTER_CONFIG = "ufc_adapter.json"


class UFCEpisodes:
    """`sample(rng, device)` -> (query images, condition) with the episode's task, query conditions and support set."""

    def __init__(self, tasks: list[str], shots: int, batch_size: int, image_size: int, pool_size: int | None, pool_seed: int):
        unknown = [task for task in tasks if task not in CONDITION_TYPES]
        if unknown:
            raise ConfigError(f"data.tasks {unknown} are not condition types ({', '.join(CONDITION_TYPES)})")
        self.tasks, self.shots, self.batch_size, self.image_size = list(tasks), shots, batch_size, image_size
        self.pool = None
        if pool_size is not None:  # a fixed set of examples: the few-shot data
            if pool_size < shots + 1:
                raise ConfigError(f"data.pool_size {pool_size} must exceed data.shots {shots} (a query beside the support set)")
            self.pool = {task: scene_examples(np.random.default_rng([pool_seed, i]), pool_size, task, image_size)
                         for i, task in enumerate(self.tasks)}

    def sample(self, rng: np.random.Generator, device):
        task = self.tasks[int(rng.integers(len(self.tasks)))]
        if self.pool is None:
            images, conditions = scene_examples(rng, self.shots + self.batch_size, task, self.image_size)
        else:
            pool_images, pool_conditions = self.pool[task]
            pick = torch.from_numpy(rng.choice(len(pool_images), self.shots + self.batch_size,
                                               replace=len(pool_images) < self.shots + self.batch_size))
            images, conditions = pool_images[pick], pool_conditions[pick]
        support, query = slice(0, self.shots), slice(self.shots, None)
        condition = {"task": task, "query": conditions[query].to(device), "support_conditions": conditions[support].to(device),
                     "support_images": images[support].to(device)}
        return images[query].to(device), condition

    def describe(self) -> dict:
        return {"tasks": self.tasks, "shots": self.shots, "pool_size": None if self.pool is None else len(next(iter(self.pool.values()))[0])}


class AdapterTraining(torch.nn.Module):
    """The trained module `fit` sees: the adapter in front of the frozen UNet (not a parameter of this module)."""

    def __init__(self, adapter: UFCAdapter, base):
        super().__init__()
        self.adapter = adapter
        self.__dict__["base"] = base  # frozen, kept out of parameters(), the optimizer and the EMA

    def forward(self, noisy, timesteps, task, query, support_conditions, noisy_support_images, text):
        down, mid = self.adapter(query, support_conditions, noisy_support_images, timesteps, text, task)
        output = self.base.network(noisy, timesteps, encoder_hidden_states=text, down_block_additional_residuals=down,
                                   mid_block_additional_residual=mid).sample
        return SimpleNamespace(sample=output)  # diffusers' convention: the prediction is `.sample`


class AdapterModel(torch.nn.Module):
    """What `fit` trains and copies: `network` is the AdapterTraining module."""

    def __init__(self, adapter: UFCAdapter, base, base_path: str):
        super().__init__()
        self.network = AdapterTraining(adapter, base)
        self.base_path = base_path

    def save_pretrained(self, directory) -> None:
        save_adapter(self.network.adapter, directory, self.base_path)


def save_adapter(adapter: UFCAdapter, directory, base_path: str) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}, directory / "adapter.safetensors")
    config = {"tasks": list(adapter.task_bias), "match_channels": adapter.query[0].out_channels, "base_model": base_path}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=1))


def load_adapter(directory, base=None) -> tuple[UFCAdapter, object]:
    """(adapter, frozen base model) from a directory written by `save_adapter` (the base loaded from its
    recorded path unless given)."""
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file() or not (directory / "adapter.safetensors").is_file():
        raise CheckpointError(f"{directory} is not a UFC adapter directory (needs {ADAPTER_CONFIG} and adapter.safetensors)")
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    base = base or load_model(config["base_model"]).eval().requires_grad_(False)
    adapter = UFCAdapter(base.network, config["tasks"], config["match_channels"])
    adapter.load_state_dict(load_file(directory / "adapter.safetensors"))
    return adapter, base


def build_adapter_model(config) -> AdapterModel:
    spec, data = config.model, config.data
    if spec.mode in ("few_shot", "fine_tune"):
        if not spec.init_adapter:
            raise ConfigError(f"model.mode {spec.mode} needs model.init_adapter (a meta-trained adapter directory)")
        if len(data.tasks) != 1:
            raise ConfigError(f"{spec.mode} training learns one new condition type; data.tasks has {len(data.tasks)}")
        adapter, base = load_adapter(spec.init_adapter)
        base_path = json.loads((Path(spec.init_adapter) / ADAPTER_CONFIG).read_text())["base_model"]
        adapter.add_task(data.tasks[0])
        adapter.requires_grad_(False)
        for parameter in adapter.trainable(data.tasks[0], few_shot=spec.mode == "few_shot"):
            parameter.requires_grad_(True)
    else:
        base_path = spec.base_model
        base = load_model(base_path).eval().requires_grad_(False)
        adapter = UFCAdapter(base.network, list(data.tasks), spec.match_channels)
    return AdapterModel(adapter, base, base_path)


def adapter_loss(model: AdapterModel):
    base = model.network.base
    scheduler = base.scheduler

    def step_loss(trained, clean, condition, generator):
        t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=generator, device=clean.device)
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
        support = condition["support_images"]
        support_noise = torch.randn(support.shape, generator=generator, device=clean.device)
        timesteps = t.expand(len(clean))
        text = base.null_condition(len(clean))["encoder_hidden_states"]
        output = trained.module if hasattr(trained, "module") else trained
        prediction = output.network(scheduler.add_noise(clean, noise, timesteps), timesteps, condition["task"], condition["query"],
                                    condition["support_conditions"],
                                    scheduler.add_noise(support, support_noise, t.expand(len(support))), text).sample
        return F.mse_loss(prediction.float(), noise.float())

    return step_loss


def pretrain_ufc(config) -> dict:
    """`genrl pretrain` with `data.kind: ufc_episodes`: the adapter to output_dir/model."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from genrl.pretraining.loop import fit
    from genrl.run_dir import prepare_output_dir

    accelerator = Accelerator(log_with="tensorboard", project_dir=config.output_dir)
    set_seed(config.seed)
    data = config.data
    batches = UFCEpisodes(data.tasks, data.shots, config.batch_size, data.image_size, data.pool_size, data.pool_seed)
    model = build_adapter_model(config)
    if model.network.base.network.config.sample_size != data.image_size:
        raise ConfigError(f"data.image_size {data.image_size} differs from the base model's {model.network.base.network.config.sample_size}")
    if model.network.base.scheduler.config.prediction_type != "epsilon":
        raise ConfigError("UFC training regresses the noise: the base model must predict epsilon")
    output_dir = prepare_output_dir(config, accelerator)
    final, log = fit(config, accelerator, model, batches, adapter_loss(model), output_dir, "pretrain")
    summary = {}
    if accelerator.is_main_process:
        final.save_pretrained(output_dir / "model")
        summary = {"model": str(output_dir / "model"), "mode": config.model.mode, **batches.describe()}
        (output_dir / "eval.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary
