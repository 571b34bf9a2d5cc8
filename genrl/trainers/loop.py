"""The one RL loop, for images and actions: rollout -> rewards -> advantages -> updates -> log.

    set up     the rollout source loads the model (prompts: an image model; env: a policy), the
               network gets LoRA or is trained fully, accelerate wraps it (DDP, mixed precision)
    each epoch 1. rollout.collect: chains, rewards and group keys (B^2-DiffuRL: branched chains)
               2. algorithm.update: its advantages, its trained steps, its loss, through the shared
                  PPO update (updates.py) or REBEL's (rebel.py)
               3. metrics.jsonl, trackers, checkpoint (accelerate save_state), evaluation if due
    at the end the fine-tuned model, the before/after evaluation and summary.json

The algorithms are in genrl/trainers/<name>.py and named in registry.py.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel, cast_training_params
from tqdm.auto import tqdm

from genrl.config import TrainConfig
from genrl.distributed import weight_spread_across_ranks
from genrl.errors import ConfigError
from genrl.models.step_routed_network import StepRoutedNetwork
from genrl.run_dir import (MetricsLog, load_checkpoint, prepare_output_dir, require_checkpoint, save_checkpoint,
                           truncate_metrics)
from genrl.samplers import build_sampler
from genrl.trainers.b2diffurl import B2DiffuRL
from genrl.trainers.ddpo import kl_to_reference
from genrl.trainers.registry import TRAINERS
from genrl.trainers.updates import GradientSteps

MIXED_PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Run:
    """What an algorithm may use of the run: its settings, devices, sampler, model and optimizer steps."""

    config: TrainConfig
    accelerator: Accelerator
    sampler: object
    denoiser: object
    trainable_steps: list[int]  # the sampler's stochastic steps
    num_steps: int
    sample_shape: tuple
    condition_dim: int | None
    stepper: GradientSteps | None = None
    generator: torch.Generator | None = None
    reference_network: torch.nn.Module | None = None

    def kl_to_reference(self, chunk, step_index, mean, std) -> torch.Tensor:
        """KL of the current step Gaussian to the frozen base model's: LoRA switched off, or the frozen copy."""
        network = self.denoiser.network
        with torch.no_grad():
            if self.reference_network is None:
                plain = self.accelerator.unwrap_model(network)
                plain.disable_adapters()
                try:
                    reference_mean = self.sampler.log_prob(self.denoiser, chunk, step_index)[1]
                finally:
                    plain.enable_adapters()
            else:
                self.denoiser.network = self.reference_network
                try:
                    reference_mean = self.sampler.log_prob(self.denoiser, chunk, step_index)[1]
                finally:
                    self.denoiser.network = network
        return kl_to_reference(mean, reference_mean, std)


def build_rollout(config: TrainConfig):
    if config.rollout.kind == "env":
        from genrl.trainers.env_rollout import EnvRollout

        return EnvRollout(config)
    from genrl.trainers.prompt_rollout import PromptRollout

    return PromptRollout(config, uses_reward=config.trainer != "sft_pg")


def _check(config: TrainConfig) -> None:
    if config.b2diffurl.enabled and config.trainer not in ("ddpo", "rebel"):
        raise ConfigError(f"b2diffurl wraps the ddpo or rebel loss, not trainer {config.trainer!r}")
    group = config.rollout.group_size
    if config.b2diffurl.enabled and group < 2:
        raise ConfigError(f"b2diffurl branches each prefix into rollout.group_size children: set it to 2 or more (got {group})")
    if config.trainer == "rebel" and not config.b2diffurl.enabled and group != 2:
        raise ConfigError(f"trainer rebel compares pairs: set rollout.group_size=2 (got {group})")


def _add_lora(network: torch.nn.Module, config: TrainConfig) -> None:
    from peft import LoraConfig

    lora = LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha, target_modules=list(config.lora.target_modules),
                      init_lora_weights="gaussian")  # B = 0: the fine-tune starts exactly at the base model
    try:
        network.add_adapter(lora)
    except (ValueError, AttributeError) as error:
        raise ConfigError(f"lora.target_modules {config.lora.target_modules}: {str(error).splitlines()[0]}") from None


def train(config: TrainConfig) -> dict:
    _check(config)
    rollout = build_rollout(config)
    rollout.check(config.trainer)
    model = rollout.model
    sampler = build_sampler(config.sampler, model)
    trainable_steps = sampler.stochastic_steps()
    if not trainable_steps:
        raise ConfigError("sampler has no stochastic step to train (DDIM needs eta > 0, or set sampler.min_std)")

    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with=list(config.log_with) or None,
                              project_dir=config.output_dir)
    output_dir = prepare_output_dir(config, accelerator)
    set_seed(config.seed, device_specific=True)
    device = accelerator.device
    rollout.start(accelerator, sampler)

    # ---------------------------------------------------------------- network, optimizer, EMA
    # Frozen weights (VAE, text encoders, and the base network under LoRA) may live in the
    # mixed-precision dtype; trained weights stay float32, as in diffusers' training scripts.
    model.requires_grad_(False)
    network = model.network
    frozen_dtype = MIXED_PRECISION_DTYPES[config.mixed_precision]
    if frozen_dtype != torch.float32:
        for module in rollout.frozen_modules():
            module.to(dtype=frozen_dtype)
        if config.lora.enabled:
            network.to(dtype=frozen_dtype)
    reference_network = None
    if config.lora.enabled:
        _add_lora(network, config)
        cast_training_params(network, dtype=torch.float32)
    else:
        if config.ppo.kl_coef > 0:
            reference_network = copy.deepcopy(network).requires_grad_(False)
        network.requires_grad_(True)
    if config.model.gradient_checkpointing:
        network.enable_gradient_checkpointing()
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.optimizer.learning_rate, weight_decay=config.optimizer.weight_decay,
                                  betas=(config.optimizer.adam_beta1, config.optimizer.adam_beta2),
                                  eps=config.optimizer.adam_epsilon)
    network, optimizer = accelerator.prepare(network, optimizer)
    ema = EMAModel(trainable, decay=config.ema_decay) if config.ema_decay > 0 else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    condition = getattr(model, "n_obs_steps", None)
    run = Run(config=config, accelerator=accelerator, sampler=sampler, denoiser=model.denoiser,
              trainable_steps=trainable_steps, num_steps=sampler.num_steps, sample_shape=tuple(model.sample_shape),
              condition_dim=condition * model.obs_dim if condition else None, reference_network=reference_network,
              stepper=GradientSteps(accelerator, network, optimizer, trainable, config.optimizer.max_grad_norm, ema))
    algorithm = TRAINERS[config.trainer](config, run)
    if config.b2diffurl.enabled:
        algorithm = B2DiffuRL(config, run, algorithm)

    # DPPO's partial fine-tuning: the chain's early steps keep a frozen copy of the base network.
    base_network, switch = None, None
    if getattr(algorithm, "finetuned_steps", None) is not None:
        base_network = copy.deepcopy(accelerator.unwrap_model(network)).requires_grad_(False)
        switch = sampler.step_pairs[algorithm.steps_to_train(0)[0]][0]

    def routed(module):
        return module if base_network is None else StepRoutedNetwork(base_network, module, switch)

    model.denoiser.network = routed(network)

    @contextmanager
    def plain_weights():
        """The model with unwrapped (not DDP) weights, for evaluation and saving on the main process."""
        model.denoiser.network = routed(accelerator.unwrap_model(network))
        try:
            yield
        finally:
            model.denoiser.network = routed(network)

    # ---------------------------------------------------------------- resume, evaluation before
    start_epoch, samples_seen = 0, 0
    resumed_from = None
    if config.resume:
        resumed_from = require_checkpoint(output_dir)
        state = load_checkpoint(accelerator, resumed_from)
        start_epoch, samples_seen = state["epoch"], state["samples_seen"]
        algorithm.load_state_dict(state.get("algorithm", {}))
        if accelerator.is_main_process:
            truncate_metrics(output_dir / "metrics.jsonl", start_epoch)  # records after the checkpoint are redone
    before_path = output_dir / "eval_before.json"
    if accelerator.is_main_process and not before_path.exists():
        with plain_weights():
            before_path.write_text(json.dumps(rollout.evaluate(output_dir, "before")))
    accelerator.wait_for_everyone()
    accelerator.init_trackers("train", config={"trainer": config.trainer, "seed": config.seed})
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process)

    # ---------------------------------------------------------------- the epochs
    rank = accelerator.process_index
    name = config.trainer + ("+b2diffurl" if config.b2diffurl.enabled else "")
    bar = tqdm(range(start_epoch, config.num_epochs), desc=name, disable=not accelerator.is_main_process,
               initial=start_epoch, total=config.num_epochs)
    for epoch in bar:
        # Seeded by (run, rank, epoch): a resumed run repeats exactly what an uninterrupted one does.
        run.generator = torch.Generator().manual_seed(hash((config.seed, rank, epoch)) % 2**62)
        branch_step = algorithm.branch_step(epoch) if hasattr(algorithm, "branch_step") else None
        batch, timings = rollout.collect(epoch, branch_step)
        started = time.perf_counter()
        steps_before = run.stepper.optimizer_steps
        network.train()
        diagnostics = algorithm.update(batch, epoch)
        network.eval()
        timings["time_training"] = time.perf_counter() - started

        all_rewards = accelerator.gather(batch.rewards)
        samples_seen += len(all_rewards)
        record = {"step": epoch + 1, "epoch": epoch + 1, "samples_seen": samples_seen,
                  "reward_mean": all_rewards.mean().item(), "reward_std": all_rewards.std().item(),
                  "optimizer_steps": run.stepper.optimizer_steps - steps_before, **batch.metrics}
        for key, values in diagnostics.items():
            record[key] = accelerator.gather(torch.stack(values).float().mean().reshape(1).to(device)).mean().item()
        if accelerator.num_processes > 1:
            record["weights_rank_spread"] = weight_spread_across_ranks(accelerator, trainable)
        record.update(timings)
        record["memory_peak_mb"] = _peak_memory_mb(device)
        eval_every = getattr(config.rollout, "eval_every", 0)
        if eval_every and (epoch + 1) % eval_every == 0 and epoch + 1 < config.num_epochs:
            if accelerator.is_main_process:
                with plain_weights():
                    record.update({f"eval_{k}": v for k, v in rollout.evaluate(output_dir, f"epoch{epoch + 1}").items()})
            accelerator.wait_for_everyone()
        log.write(record)
        accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=epoch + 1)
        bar.set_postfix(reward=f"{record['reward_mean']:.3f}")
        if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.num_epochs:
            state = {"epoch": epoch + 1, "samples_seen": samples_seen, "algorithm": algorithm.state_dict()}
            save_checkpoint(accelerator, output_dir, epoch + 1, state, keep=config.keep_checkpoints, protect=resumed_from)

    # ---------------------------------------------------------------- final model, before/after
    summary = {}
    if ema is not None:
        ema.copy_to(trainable)  # the saved and evaluated weights are the EMA weights
    if accelerator.is_main_process:
        with plain_weights():
            rollout.save(output_dir, routed(copy.deepcopy(accelerator.unwrap_model(network))), config.lora.enabled)
            after = rollout.evaluate(output_dir, "after")
        before = json.loads(before_path.read_text())
        for key in [k for k in before if k in after]:
            summary[f"{key}_before"], summary[f"{key}_after"] = before[key], after[key]
        summary["samples_seen"] = samples_seen
        summary.update(rollout.finish(output_dir, before, after))
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary


def _peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on GPUs; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB
