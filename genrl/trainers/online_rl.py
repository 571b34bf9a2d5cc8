"""The online RL loop for denoising policies: sample -> reward -> advantages -> PPO updates.

One epoch, as in DDPO:
  1. sample `num_sample_batches x sample_batch_size` chains per process, storing every step;
  2. score the final samples with the reward (and log side metrics such as alignment);
  3. standardise rewards per prompt (statistics gathered over all processes), clip;
  4. for each inner epoch, for each minibatch, for each of the sample's trained steps
     (a random `timestep_fraction` of the chain, in an order shuffled per sample),
     re-score the step under the current weights and take a DDPO loss step; gradients
     accumulate over (trained steps x `gradient_accumulation_steps` minibatches).
Devices, DDP, mixed precision, accumulation, checkpoints and trackers are accelerate's.
"""

from __future__ import annotations

import copy
import json
import time
from collections import defaultdict
from contextlib import nullcontext

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from diffusers.training_utils import EMAModel, cast_training_params
from tqdm.auto import tqdm

from genrl.config import TrainConfig
from genrl.errors import ConfigError
from genrl.evaluate import make_prompts, sample_images, sample_trajectory, score_images
from genrl.models.loading import load_model
from genrl.run_dir import MetricsLog, load_checkpoint, prepare_output_dir, require_checkpoint, save_checkpoint, save_grid
from genrl.samplers import build_sampler
from genrl.trainers.ddpo import ddpo_loss
from genrl.trainers.stat_tracker import PerPromptStatTracker
from genrl.trajectory import Trajectory
from rewards import check_reward_config, compute_configured_reward, compute_reward, get_reward


def _check_batching(config: TrainConfig) -> None:
    per_epoch = config.sample_batch_size * config.num_sample_batches
    if per_epoch % config.train_batch_size:
        raise ConfigError(
            f"train_batch_size {config.train_batch_size} must divide the samples per epoch "
            f"(sample_batch_size x num_sample_batches = {per_epoch})"
        )
    if (per_epoch // config.train_batch_size) % config.gradient_accumulation_steps:
        raise ConfigError(
            f"gradient_accumulation_steps {config.gradient_accumulation_steps} must divide the "
            f"{per_epoch // config.train_batch_size} minibatches of an epoch"
        )


def _add_lora(network: torch.nn.Module, config: TrainConfig) -> None:
    from peft import LoraConfig

    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        init_lora_weights="gaussian",  # B = 0: the fine-tune starts exactly at the base model
        target_modules=list(config.lora.target_modules),
    )
    try:
        network.add_adapter(lora)
    except ValueError as error:
        raise ConfigError(f"lora.target_modules {config.lora.target_modules}: {str(error).splitlines()[0]}") from None


MIXED_PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def train(config: TrainConfig) -> dict:
    _check_batching(config)
    check_reward_config(config.reward)  # fail on an unknown reward before any work
    for name in config.metric_rewards:
        get_reward(name)
    model = load_model(config.model.path, config.model.resolution, config.model.decode_chunk_size)
    sampler = build_sampler(config.sampler, model)
    trainable_steps = sampler.stochastic_steps()
    if not trainable_steps:
        raise ConfigError("sampler has no stochastic step to train (DDIM needs eta > 0)")
    steps_per_sample = max(1, int(round(config.ddpo.timestep_fraction * len(trainable_steps))))

    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=list(config.log_with) or None,
        project_dir=config.output_dir,
        gradient_accumulation_steps=config.gradient_accumulation_steps * steps_per_sample,
    )
    output_dir = prepare_output_dir(config, accelerator)
    set_seed(config.seed, device_specific=True)
    device = accelerator.device

    # ---------------------------------------------------------------- model and optimizer
    # Frozen weights (VAE, text encoders, and the base network under LoRA) may live in the
    # mixed-precision dtype; trained weights stay float32, as in diffusers' training scripts.
    model.requires_grad_(False)
    model.to(device).eval()
    network = model.network
    frozen_dtype = MIXED_PRECISION_DTYPES[config.mixed_precision]
    if frozen_dtype != torch.float32:
        for name, module in model.named_children():
            if module is not network and name != "denoiser":
                module.to(dtype=frozen_dtype)
        if config.lora.enabled:
            network.to(dtype=frozen_dtype)
    reference_network = None
    if config.lora.enabled:
        _add_lora(network, config)
        cast_training_params(network, dtype=torch.float32)
    else:
        if config.ddpo.kl_coef > 0:
            reference_network = copy.deepcopy(network).requires_grad_(False)
        network.requires_grad_(True)
    if config.model.gradient_checkpointing:
        network.enable_gradient_checkpointing()
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=config.optimizer.learning_rate,
        betas=(config.optimizer.adam_beta1, config.optimizer.adam_beta2),
        weight_decay=config.optimizer.weight_decay,
        eps=config.optimizer.adam_epsilon,
    )
    network, optimizer = accelerator.prepare(network, optimizer)
    model.denoiser.network = network
    ema = EMAModel(trainable, decay=config.ema_decay) if config.ema_decay > 0 else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    stat_tracker = PerPromptStatTracker(config.ddpo.stat_buffer_size, config.ddpo.stat_min_count)

    def reference_mean(batch: Trajectory, step_index: torch.Tensor) -> torch.Tensor:
        """Step mean under the frozen base model: LoRA switched off, or the frozen copy."""
        if reference_network is None:
            unwrapped = accelerator.unwrap_model(network)
            unwrapped.disable_adapters()
            try:
                return sampler.log_prob(model.denoiser, batch, step_index)[1]
            finally:
                unwrapped.enable_adapters()
        model.denoiser.network = reference_network
        try:
            return sampler.log_prob(model.denoiser, batch, step_index)[1]
        finally:
            model.denoiser.network = network

    # ---------------------------------------------------------------- resume / fixed evaluation set
    start_epoch, samples_seen = 0, 0
    if config.resume:
        state = load_checkpoint(accelerator, require_checkpoint(output_dir))
        start_epoch, samples_seen = state["epoch"], state["samples_seen"]
        stat_tracker.load_state_dict(state["stat_tracker"])
    eval_prompts = make_prompts(config.prompts, np.random.default_rng([config.seed, 999]), config.eval_samples)

    def evaluate_now(tag: str) -> dict:
        with accelerator.autocast():
            images = sample_images(model, eval_prompts, config.sampler, seed=config.seed + 7, batch_size=config.sample_batch_size)
        save_grid(images[: config.grid_prompts], output_dir / "samples" / f"{tag}.png", nrow=config.grid_prompts)
        return {"images": images, **score_images(images, eval_prompts, config.metric_rewards, config.reward)}

    before_path = output_dir / "eval_before.json"
    if accelerator.is_main_process and not before_path.exists():
        before = evaluate_now("before")
        torch.save(before.pop("images")[: config.grid_prompts], output_dir / "samples" / "before_images.pt")
        before_path.write_text(json.dumps(before))
    accelerator.wait_for_everyone()
    accelerator.init_trackers("train", config={"reward": config.reward.name, "seed": config.seed})
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process)

    epochs = tqdm(range(start_epoch, config.num_epochs), desc="ddpo", disable=not accelerator.is_main_process,
                  initial=start_epoch, total=config.num_epochs)
    for epoch in epochs:
        timings = defaultdict(float)
        # ------------------------------------------------------------ 1-2. sample and score
        parts, rewards, side_metrics = [], [], defaultdict(list)
        for batch_index in range(config.num_sample_batches):
            rng = np.random.default_rng([config.seed, accelerator.process_index, epoch, batch_index])
            prompts = make_prompts(config.prompts, rng, config.sample_batch_size)
            generator = torch.Generator(device).manual_seed(int(rng.integers(2**62)))
            started = time.perf_counter()
            with accelerator.autocast():
                part = sample_trajectory(model, sampler, prompts, generator, config.sampler.guidance_scale)
            timings["time_sampling"] += time.perf_counter() - started
            started = time.perf_counter()
            images = model.decode(part.sample)
            reward = compute_configured_reward(config.reward, images, prompts)
            for key, values in reward.info.items():
                side_metrics[f"{config.reward.label}/{key}"].append(values)
            for name in config.metric_rewards:
                output = compute_reward(name, images, prompts)
                side_metrics[name].append(output.scores)
                for key, values in output.info.items():
                    side_metrics[f"{name}/{key}"].append(values)
            timings["time_reward"] += time.perf_counter() - started
            parts.append(part)
            rewards.append(reward.scores)
        trajectory = Trajectory.concatenate(parts)
        rewards = torch.cat(rewards)
        num_local = trajectory.batch_size

        # ------------------------------------------------------------ 3. advantages
        all_rewards = accelerator.gather(rewards.to(device)).cpu().numpy()
        all_prompts = gather_object(trajectory.prompts)
        if config.ddpo.per_prompt_stat_tracking:
            advantages = stat_tracker.update(all_prompts, all_rewards)
        else:
            advantages = (all_rewards - all_rewards.mean()) / (all_rewards.std() + 1e-6)
        rank = accelerator.process_index
        advantages = torch.as_tensor(advantages[rank * num_local : (rank + 1) * num_local], dtype=torch.float32, device=device)
        advantages = advantages.clamp(-config.ddpo.adv_clip_max, config.ddpo.adv_clip_max)

        # ------------------------------------------------------------ 4. policy updates
        started = time.perf_counter()
        network.train()
        train_rng = torch.Generator().manual_seed(hash((config.seed, rank, epoch)) % 2**62)
        diagnostics = defaultdict(list)
        steps_tensor = torch.tensor(trainable_steps)
        for _ in range(config.ddpo.num_inner_epochs):
            order = torch.randperm(num_local, generator=train_rng)
            # Each sample trains its own random subset of steps, in its own shuffled order.
            step_orders = torch.stack(
                [steps_tensor[torch.randperm(len(trainable_steps), generator=train_rng)][:steps_per_sample] for _ in range(num_local)]
            )
            for start in range(0, num_local, config.train_batch_size):
                rows = order[start : start + config.train_batch_size]
                batch, batch_advantages, batch_steps = trajectory.select(rows), advantages[rows], step_orders[rows]
                for j in range(steps_per_sample):
                    step_index = batch_steps[:, j]
                    with accelerator.accumulate(network):
                        with accelerator.autocast():
                            log_prob, mean, std = sampler.log_prob(model.denoiser, batch, step_index)
                            with torch.no_grad() if config.ddpo.kl_coef > 0 else nullcontext():
                                ref_mean = reference_mean(batch, step_index) if config.ddpo.kl_coef > 0 else None
                        old_log_prob = batch.log_probs[torch.arange(batch.batch_size), step_index].to(device)
                        loss, info = ddpo_loss(
                            log_prob, old_log_prob, batch_advantages, config.ddpo.clip_range,
                            mean=mean, reference_mean=ref_mean, std=std, kl_coef=config.ddpo.kl_coef,
                        )
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            accelerator.clip_grad_norm_(trainable, config.optimizer.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad()
                    if accelerator.sync_gradients and ema is not None:
                        ema.step(trainable)
                    for key, value in info.items():
                        diagnostics[key].append(value)
        network.eval()
        timings["time_training"] += time.perf_counter() - started

        # ------------------------------------------------------------ log and checkpoint
        samples_seen += len(all_rewards)
        record = {
            "step": epoch + 1,
            "epoch": epoch + 1,
            "samples_seen": samples_seen,
            "reward_mean": float(all_rewards.mean()),
            "reward_std": float(all_rewards.std()),
        }
        for key, values in diagnostics.items():
            record[key] = accelerator.gather(torch.stack(values).mean().reshape(1)).mean().item()
        for key, values in side_metrics.items():
            record[key] = accelerator.gather(torch.cat(values).float().to(device)).mean().item()
        record.update(timings)
        log.write(record)
        accelerator.log(record, step=epoch + 1)
        epochs.set_postfix(reward=f"{record['reward_mean']:.3f}")
        if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.num_epochs:
            state = {"epoch": epoch + 1, "samples_seen": samples_seen, "stat_tracker": stat_tracker.state_dict()}
            save_checkpoint(accelerator, output_dir, epoch + 1, state)

    # ---------------------------------------------------------------- final model, figures
    summary = {}
    if ema is not None:
        ema.copy_to(trainable)  # the saved and evaluated weights are the EMA weights
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(network)
        model.save_finetuned(output_dir, unwrapped, config.lora.enabled, merged=config.model.save_merged_model)
        after = evaluate_now("after")
        before = json.loads(before_path.read_text())
        before_images = torch.load(output_dir / "samples" / "before_images.pt")
        grid = save_grid(torch.cat([before_images, after["images"][: config.grid_prompts]]),
                         output_dir / "samples" / "before_after.png", nrow=config.grid_prompts)
        for key in [k for k in before if k in after]:
            summary[f"{key}_before"] = before[key]
            summary[f"{key}_after"] = after[key]
        summary["before_after_grid"] = str(grid)
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary
