"""The online RL loop shared by every trainer: sample -> reward -> advantages -> policy updates.

One epoch:
  1. sample `num_sample_batches x sample_batch_size` chains per process, storing every step
     (B^2-DiffuRL: branched from shared prefixes; REBEL: two samples per prompt);
  2. score the final samples (SFT-PG: first update its critic against real data; the critic is
     the reward), log side metrics (alignment, diversity);
  3. advantages, by trainer: DDPO per-prompt standardised rewards; PXPO the standardised
     per-pixel map; REBEL standardised rewards of pairs; SFT-PG f(x0) - V(x_t, t) per step;
     B^2-DiffuRL z-scores and branch selection;
  4. policy updates: each trainer's loss file (ddpo.py, pxpo.py, rebel.py, sft_pg.py) gives the
     loss; gradients accumulate over (trained steps x `gradient_accumulation_steps` minibatches).
Devices, DDP, mixed precision, checkpoints and trackers are accelerate's.
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
from genrl.errors import ConfigError, RewardError
from genrl.evaluate import make_prompt_groups, sample_images, sample_trajectory, score_images
from genrl.models.loading import load_model
from genrl.run_dir import MetricsLog, load_checkpoint, prepare_output_dir, require_checkpoint, save_checkpoint, save_grid
from genrl.samplers import build_sampler
from genrl.trainers.b2diffurl import best_worst_pairs, sample_branched, select_children, split_step
from genrl.trainers.ddpo import ddpo_loss
from genrl.trainers.pxpo import pixel_advantages, pixel_map_to_state, pxpo_loss
from genrl.trainers.rebel import rebel_residuals, rebel_step_loss
from genrl.trainers.sft_pg import critic_loss, sft_pg_loss, value_loss
from genrl.trainers.stat_tracker import PerPromptStatTracker
from genrl.trajectory import Trajectory
from rewards import check_reward_config, compute_configured_reward, compute_reward, get_reward
from rewards.diversity import prompt_diversity


def _check_config(config: TrainConfig) -> None:
    group = config.b2diffurl.branch_factor if config.b2diffurl.enabled else config.samples_per_prompt
    if config.sample_batch_size % group:
        what = "b2diffurl.branch_factor" if config.b2diffurl.enabled else "samples_per_prompt"
        raise ConfigError(f"sample_batch_size {config.sample_batch_size} must be a multiple of {what} ({group})")
    if config.b2diffurl.enabled and config.trainer not in ("ddpo", "rebel"):
        raise ConfigError(f"b2diffurl wraps the ddpo or rebel loss, not trainer {config.trainer!r}")
    if config.trainer == "rebel" and not config.b2diffurl.enabled and config.samples_per_prompt != 2:
        raise ConfigError(f"trainer rebel compares pairs: set samples_per_prompt=2 (got {config.samples_per_prompt})")
    if config.trainer == "rebel" and config.train_batch_size % 2:
        raise ConfigError(f"trainer rebel trains whole pairs: train_batch_size must be even (got {config.train_batch_size})")
    if config.b2diffurl.enabled or config.trainer == "rebel":
        return  # the number of trained samples varies per epoch; minibatches are formed from what is kept
    per_epoch = config.sample_batch_size * config.num_sample_batches
    if per_epoch % config.train_batch_size:
        raise ConfigError(
            f"train_batch_size {config.train_batch_size} must divide the samples per epoch "
            f"(sample_batch_size x num_sample_batches = {per_epoch})"
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


class GradientSteps:
    """Accumulates backward passes and steps the optimizer once per group of passes.

    A group is `gradient_accumulation_steps` minibatches times their trained steps; each pass's
    loss is divided by the group's size, and only the group's last pass synchronises gradients
    across processes (DDP). Trainers whose trained-sample count varies per epoch (B^2, REBEL)
    still get whole groups, because every process runs the same number of passes.
    """

    def __init__(self, accelerator, network, optimizer, trainable, max_grad_norm, ema):
        self.accelerator, self.network, self.optimizer = accelerator, network, optimizer
        self.trainable, self.max_grad_norm, self.ema = trainable, max_grad_norm, ema

    def backward(self, loss: torch.Tensor, passes_in_group: int, last_in_group: bool) -> None:
        with nullcontext() if last_in_group else self.accelerator.no_sync(self.network):
            self.accelerator.backward(loss / passes_in_group)
        if last_in_group:
            self.accelerator.clip_grad_norm_(self.trainable, self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
            if self.ema is not None:
                self.ema.step(self.trainable)


def accumulation_groups(num_items: int, batch_size: int, accumulation: int) -> list[list[torch.Tensor]]:
    """Positions 0..num_items-1 cut into minibatches, the minibatches into accumulation groups."""
    minibatches = [torch.arange(start, min(start + batch_size, num_items)) for start in range(0, num_items, batch_size)]
    return [minibatches[i : i + accumulation] for i in range(0, len(minibatches), accumulation)]


def pad_to_common_count(accelerator, rows: list, pad_row) -> tuple[list, int]:
    """Pad this process's list to the largest count over processes (so DDP sees equal passes);
    returns (rows, number of real rows). Padded rows are trained with zero weight."""
    count = len(rows)
    largest = int(accelerator.gather(torch.tensor([count], device=accelerator.device)).max())
    return rows + [pad_row] * (largest - count), count


def train(config: TrainConfig) -> dict:
    _check_config(config)
    uses_critic = config.trainer == "sft_pg"
    if not uses_critic:
        check_reward_config(config.reward)  # fail on an unknown reward before any work
    for name in config.metric_rewards:
        get_reward(name)
    model = load_model(config.model.path, config.model.resolution, config.model.decode_chunk_size)
    sampler = build_sampler(config.sampler, model)
    trainable_steps = sampler.stochastic_steps()
    if not trainable_steps:
        raise ConfigError("sampler has no stochastic step to train (DDIM needs eta > 0)")
    real_images = None
    if uses_critic:
        from genrl.data.real_images import RealImages

        real_images = RealImages(config.sft_pg.real_data, config.prompts.num_objects)

    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=list(config.log_with) or None,
        project_dir=config.output_dir,
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
    stepper = GradientSteps(accelerator, network, optimizer, trainable, config.optimizer.max_grad_norm, ema)
    if uses_critic:
        from genrl.models.critics import ImageCritic, StateValue

        critic = ImageCritic(width=config.sft_pg.critic_width).to(device)
        value_net = StateValue(model.sample_shape[0], width=config.sft_pg.critic_width).to(device)
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=config.sft_pg.critic_learning_rate, betas=(0.5, 0.9))
        value_optimizer = torch.optim.Adam(value_net.parameters(), lr=config.sft_pg.value_learning_rate)
        critic, value_net, critic_optimizer, value_optimizer = accelerator.prepare(critic, value_net, critic_optimizer, value_optimizer)

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
    eval_prompts = make_prompt_groups(config.prompts, np.random.default_rng([config.seed, 999]), config.eval_samples,
                                      config.eval_samples_per_prompt)

    def evaluate_now(tag: str) -> dict:
        with accelerator.autocast():
            images = sample_images(model, eval_prompts, config.sampler, seed=config.seed + 7, batch_size=config.sample_batch_size)
        grid_images = images[:: config.eval_samples_per_prompt][: config.grid_prompts]  # one per prompt
        save_grid(grid_images, output_dir / "samples" / f"{tag}.png", nrow=config.grid_prompts)
        scores = score_images(images, eval_prompts, config.metric_rewards, None if uses_critic else config.reward)
        scores["diversity"] = prompt_diversity(images, eval_prompts, config.diversity_metric)
        return {"images": grid_images, **scores}

    before_path = output_dir / "eval_before.json"
    if accelerator.is_main_process and not before_path.exists():
        before = evaluate_now("before")
        torch.save(before.pop("images"), output_dir / "samples" / "before_images.pt")
        before_path.write_text(json.dumps(before))
    accelerator.wait_for_everyone()
    accelerator.init_trackers("train", config={"trainer": config.trainer, "seed": config.seed})
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process)

    b2 = config.b2diffurl
    num_stages = b2.num_stages or config.num_epochs
    group_size = b2.branch_factor if b2.enabled else config.samples_per_prompt
    rank, num_steps = accelerator.process_index, sampler.num_steps
    name = config.trainer + ("+b2diffurl" if b2.enabled else "")
    epochs = tqdm(range(start_epoch, config.num_epochs), desc=name, disable=not accelerator.is_main_process,
                  initial=start_epoch, total=config.num_epochs)
    for epoch in epochs:
        timings, record_extra = defaultdict(float), {}
        if b2.enabled:  # the trained window: the chain's last split_step steps
            window = split_step(epoch, num_stages, b2.split_step_start, b2.split_step_end, num_steps)
            branch_step = num_steps - window
            epoch_steps = [s for s in trainable_steps if s >= branch_step]
            record_extra["b2_split_step"] = window
        else:
            epoch_steps = trainable_steps
        # ------------------------------------------------------------ 1-2. sample and score
        parts, rewards, pixel_maps, all_images, side_metrics = [], [], [], [], defaultdict(list)
        for batch_index in range(config.num_sample_batches):
            rng = np.random.default_rng([config.seed, rank, epoch, batch_index])
            prompts = make_prompt_groups(config.prompts, rng, config.sample_batch_size, group_size)
            generator = torch.Generator(device).manual_seed(int(rng.integers(2**62)))
            started = time.perf_counter()
            with accelerator.autocast():
                if b2.enabled:
                    part = sample_branched(model, sampler, prompts[::group_size], group_size, branch_step, generator,
                                           config.sampler.guidance_scale)
                else:
                    part = sample_trajectory(model, sampler, prompts, generator, config.sampler.guidance_scale)
            timings["time_sampling"] += time.perf_counter() - started
            started = time.perf_counter()
            images = model.decode(part.sample)
            if uses_critic:
                all_images.append(images.float())
            else:
                reward = compute_configured_reward(config.reward, images, prompts)
                if config.trainer == "pxpo" and reward.pixel_map is None:
                    raise RewardError(f"trainer pxpo needs a reward that returns a per-pixel map; {config.reward.label!r} does not")
                for key, values in reward.info.items():
                    side_metrics[f"{config.reward.label}/{key}"].append(values)
                rewards.append(reward.scores)
                pixel_maps.append(reward.pixel_map)
            for metric in config.metric_rewards:
                output = compute_reward(metric, images, prompts)
                side_metrics[metric].append(output.scores)
                for key, values in output.info.items():
                    side_metrics[f"{metric}/{key}"].append(values)
            if group_size > 1:
                side_metrics["diversity"].append(torch.tensor([prompt_diversity(images, prompts, "pixel")]))
            timings["time_reward"] += time.perf_counter() - started
            parts.append(part)
        trajectory = Trajectory.concatenate(parts)
        num_local = trajectory.batch_size
        all_prompts = gather_object(trajectory.prompts)

        def local(values: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(values[rank * num_local : (rank + 1) * num_local], dtype=torch.float32, device=device)

        # ------------------------------------------------------------ 2b. SFT-PG: critic, then its scores as rewards
        if uses_critic:
            started = time.perf_counter()
            fakes = torch.cat(all_images)
            critic_rng = np.random.default_rng([config.seed, rank, epoch, 77])
            cfg = config.sft_pg
            critic.train()
            for _ in range(cfg.critic_steps + (cfg.critic_warmup_steps if epoch == 0 else 0)):
                real = real_images.sample(cfg.critic_batch_size, critic_rng, fakes.shape[-1]).to(device)
                fake = fakes[torch.from_numpy(critic_rng.integers(0, len(fakes), size=cfg.critic_batch_size)).to(device)]
                loss, distance = critic_loss(critic, real, fake, cfg.gradient_penalty)
                accelerator.backward(loss)
                critic_optimizer.step()
                critic_optimizer.zero_grad()
            critic.eval()
            with torch.no_grad():
                scores = critic(fakes)
                real_scores = critic(real_images.sample(len(fakes), critic_rng, fakes.shape[-1]).to(device))
            record_extra["critic_distance"] = accelerator.gather((real_scores.mean() - scores.mean()).reshape(1)).mean().item()
            rewards = [scores.cpu()]
            timings["time_critic"] += time.perf_counter() - started
        rewards = torch.cat(rewards)
        all_rewards = accelerator.gather(rewards.to(device)).cpu().numpy()

        # ------------------------------------------------------------ 3. advantages and what to train
        diagnostics = defaultdict(list)
        train_rng = torch.Generator().manual_seed(hash((config.seed, rank, epoch)) % 2**62)
        started = time.perf_counter()
        network.train()
        if config.trainer == "rebel":
            standardized = stat_tracker.update(all_prompts, all_rewards) if config.rebel.standardize_rewards else all_rewards
            local_rewards = local(np.asarray(standardized))
            if b2.enabled:
                pairs = best_worst_pairs(local_rewards.cpu().numpy(), group_size)
            else:
                pairs = [(i, i + 1) for i in range(0, num_local, 2)]
            pairs, _ = pad_to_common_count(accelerator, pairs, (0, 0))  # a pair with itself has zero gradient
            _rebel_updates(config, accelerator, model, sampler, trajectory, local_rewards, pairs, epoch_steps, stepper,
                           diagnostics, train_rng)
        else:
            step_count = len(epoch_steps)
            if config.trainer == "sft_pg":
                advantages = _sft_advantages(config, accelerator, value_net, value_optimizer, trajectory, rewards.to(device),
                                             epoch_steps, num_steps, diagnostics, train_rng)
                rows = list(range(num_local))
            elif b2.enabled:
                z_scores = local(stat_tracker.update(all_prompts, all_rewards))
                kept = select_children(z_scores.cpu().numpy(), group_size, b2.positive_threshold, b2.negative_threshold)
                record_extra["b2_kept_fraction"] = len(kept) / num_local
                padded, real_count = pad_to_common_count(accelerator, kept, 0)
                weights = (torch.arange(len(padded), device=device) < real_count).float()  # padding trains with zero weight
                index = torch.tensor(padded, dtype=torch.long)
                advantages = z_scores.clamp(-config.ddpo.adv_clip_max, config.ddpo.adv_clip_max)[index.to(device)] * weights
                trajectory = trajectory.select(index)
                rows = padded
            elif config.trainer == "pxpo":
                means, stds = stat_tracker.normalizers(all_prompts, all_rewards)
                maps = pixel_map_to_state(torch.cat(pixel_maps).to(device), tuple(trajectory.sample.shape[1:]))
                advantages = pixel_advantages(maps, local(means), local(stds), config.ddpo.adv_clip_max)
                rows = list(range(num_local))
            else:  # ddpo
                if config.ddpo.per_prompt_stat_tracking:
                    standardized = stat_tracker.update(all_prompts, all_rewards)
                else:
                    standardized = (all_rewards - all_rewards.mean()) / (all_rewards.std() + 1e-6)
                advantages = local(standardized).clamp(-config.ddpo.adv_clip_max, config.ddpo.adv_clip_max)
                rows = list(range(num_local))
            if not b2.enabled:  # B^2 trains its whole window; the others a random fraction of the chain
                step_count = max(1, int(round(config.ddpo.timestep_fraction * len(epoch_steps))))
            _per_step_updates(config, accelerator, model, sampler, trajectory, advantages, len(rows), epoch_steps, step_count,
                              stepper, diagnostics, train_rng, reference_mean)
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
            **record_extra,
        }
        for key, values in diagnostics.items():
            record[key] = accelerator.gather(torch.stack(values).float().mean().reshape(1).to(device)).mean().item()
        for key, values in side_metrics.items():
            record[key] = accelerator.gather(torch.cat(values).float().to(device)).nanmean().item()
        record.update(timings)
        record["memory_peak_mb"] = _peak_memory_mb(device)
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
        grid = save_grid(torch.cat([before_images, after["images"]]),
                         output_dir / "samples" / "before_after.png", nrow=config.grid_prompts)
        for key in [k for k in before if k in after]:
            summary[f"{key}_before"] = before[key]
            summary[f"{key}_after"] = after[key]
        summary["before_after_grid"] = str(grid)
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary


def _peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on GPUs; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def _per_step_updates(config, accelerator, model, sampler, trajectory, advantages, num_rows, steps, step_count,
                      stepper, diagnostics, train_rng, reference_mean) -> None:
    """DDPO, PXPO and SFT-PG: one backward pass per (minibatch, trained step); each sample trains
    `step_count` of `steps`, in its own shuffled order. `advantages` is (N,), (N, K) per step
    (SFT-PG) or (N, 1, h, w) per element (PXPO)."""
    device = accelerator.device
    steps_tensor = torch.tensor(steps)
    for _ in range(config.ddpo.num_inner_epochs if config.trainer != "sft_pg" else 1):
        order = torch.randperm(num_rows, generator=train_rng)
        step_orders = torch.stack(
            [steps_tensor[torch.randperm(len(steps), generator=train_rng)][:step_count] for _ in range(num_rows)]
        ) if num_rows else torch.zeros(0, step_count, dtype=torch.long)
        for group in accumulation_groups(num_rows, config.train_batch_size, config.gradient_accumulation_steps):
            passes = len(group) * step_count
            for m, positions in enumerate(group):
                rows = order[positions]
                batch, batch_advantages, batch_steps = trajectory.select(rows), advantages[rows.to(device)], step_orders[rows]
                for j in range(step_count):
                    step_index = batch_steps[:, j]
                    old_log_prob = batch.log_probs[torch.arange(batch.batch_size), step_index].to(device)
                    with accelerator.autocast():
                        if config.trainer == "pxpo":
                            element_log_prob, _, _ = sampler.log_prob(model.denoiser, batch, step_index, reduce="none")
                            loss, info = pxpo_loss(element_log_prob, old_log_prob, batch_advantages, config.ddpo.clip_range)
                        elif config.trainer == "sft_pg":
                            log_prob, _, _ = sampler.log_prob(model.denoiser, batch, step_index)
                            step_advantages = batch_advantages[torch.arange(batch.batch_size), step_index.to(device)]
                            loss, info = sft_pg_loss(log_prob, old_log_prob, step_advantages)
                        else:
                            log_prob, mean, std = sampler.log_prob(model.denoiser, batch, step_index)
                            ref_mean = None
                            if config.ddpo.kl_coef > 0:
                                with torch.no_grad():
                                    ref_mean = reference_mean(batch, step_index)
                            loss, info = ddpo_loss(log_prob, old_log_prob, batch_advantages, config.ddpo.clip_range,
                                                   mean=mean, reference_mean=ref_mean, std=std, kl_coef=config.ddpo.kl_coef)
                    stepper.backward(loss, passes, last_in_group=(m == len(group) - 1 and j == step_count - 1))
                    for key, value in info.items():
                        diagnostics[key].append(value)


def _rebel_updates(config, accelerator, model, sampler, trajectory, rewards, pairs, steps, stepper, diagnostics, train_rng) -> None:
    """REBEL: per minibatch of pairs, the residuals from a gradient-free pass over all trained
    steps, then one backward pass per step (see rebel.py for why this gives the exact gradient)."""
    device = accelerator.device
    eta_inverse = config.rebel.eta_inverse
    order = torch.randperm(len(pairs), generator=train_rng)
    pairs_tensor = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    for group in accumulation_groups(len(pairs), config.train_batch_size // 2, config.gradient_accumulation_steps):
        for m, positions in enumerate(group):
            chosen = pairs_tensor[order[positions]]
            count = chosen.shape[0]
            batch = trajectory.select(torch.cat([chosen[:, 0], chosen[:, 1]]))  # first members, then second
            rows = torch.arange(batch.batch_size)
            with torch.no_grad(), accelerator.autocast():
                log_ratio = sum(sampler.log_prob(model.denoiser, batch, s)[0] - batch.log_probs[rows, s].to(device) for s in steps)
            chosen_device = chosen.to(device)
            residuals = rebel_residuals(log_ratio[:count], log_ratio[count:], rewards[chosen_device[:, 0]],
                                        rewards[chosen_device[:, 1]], eta_inverse)
            diagnostics["rebel_loss"].append((residuals**2).mean())
            diagnostics["approx_kl"].append(0.5 * (log_ratio**2).mean())
            for j, s in enumerate(steps):
                with accelerator.autocast():
                    log_prob = sampler.log_prob(model.denoiser, batch, s)[0]
                loss = rebel_step_loss(log_prob[:count], log_prob[count:], residuals, eta_inverse)
                stepper.backward(loss, len(group), last_in_group=(m == len(group) - 1 and j == len(steps) - 1))


def _sft_advantages(config, accelerator, value_net, value_optimizer, trajectory, scores, steps, num_steps, diagnostics,
                    train_rng) -> torch.Tensor:
    """Fit the baseline V(x_t, t) to the critic scores f(x0), then return (N, K) advantages
    f(x0) - V(x_t, t) for the trained steps (zero elsewhere)."""
    device = accelerator.device
    states = trajectory.states.to(device).float()
    num_samples = states.shape[0]
    steps_tensor = torch.tensor(steps)
    value_net.train()
    for _ in range(config.sft_pg.value_steps):
        rows = torch.randint(0, num_samples, (config.train_batch_size,), generator=train_rng)
        step = steps_tensor[torch.randint(0, len(steps), (config.train_batch_size,), generator=train_rng)]
        loss = value_loss(value_net, states[rows, step], (step.float() / num_steps).to(device), scores[rows.to(device)])
        accelerator.backward(loss)
        value_optimizer.step()
        value_optimizer.zero_grad()
        diagnostics["value_loss"].append(loss.detach())
    value_net.eval()
    advantages = torch.zeros(num_samples, num_steps, device=device)
    with torch.no_grad():
        for s in steps:
            progress = torch.full((num_samples,), s / num_steps, device=device)
            advantages[:, s] = scores - value_net(states[:, s], progress)
    if config.sft_pg.normalize_advantages:
        trained = advantages[:, steps]
        advantages[:, steps] = trained / (trained.std() + 1e-6)
    return advantages
