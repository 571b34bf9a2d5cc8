"""`genrl pretrain`: train a base model from scratch, one loop for images and action policies.

Plain denoising score matching, as diffusers' training examples and Diffusion Policy do it:
draw a batch (Shapes images + captions, or demonstration windows + observation history), noise
it at a random time, regress the network's output on the target of its parameterisation, with
AdamW, a cosine schedule with warm-up, and an EMA of the weights. The EMA weights are the
ones saved (`output_dir/model`, with `save_pretrained`) and evaluated at the end: prompt match
of single-object prompts for images, seeded episodes in the env for policies.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from genrl.config import EnvConfig, PretrainConfig, PromptConfig, SamplerConfig
from genrl.distributed import weight_spread_across_ranks
from genrl.evaluation.episodes import evaluate_policy
from genrl.evaluation.images import make_prompts, sample_images, score_images
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.pretraining.build import build_model
from genrl.pretraining.data import load_data, make_batches
from genrl.run_dir import (
    MetricsLog,
    RunningLoss,
    load_checkpoint,
    prepare_output_dir,
    require_checkpoint,
    save_checkpoint,
    save_grid,
    truncate_metrics,
)
from genrl.samplers import build_sampler


def noisy_input_and_target(scheduler, clean: torch.Tensor, generator: torch.Generator):
    """(noisy sample, network timestep, regression target) for a batch of clean samples of any shape.

    Diffusion: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with t uniform over the training steps,
    target eps, v = sqrt(a_t) eps - sqrt(1 - a_t) x0, or x0 (the scheduler's prediction_type).
    Flow matching: x = (1 - sigma) x0 + sigma eps with sigma uniform, target u = eps - x0,
    network timestep sigma * T (the convention of diffusers' flow pipelines).
    """
    batch, device = clean.shape[0], clean.device
    noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    steps = scheduler.config.num_train_timesteps
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        sigma = torch.rand(batch, generator=generator, device=device)
        sigma_b = sigma.view(-1, *[1] * (clean.ndim - 1))
        return (1 - sigma_b) * clean + sigma_b * noise, sigma * steps, noise - clean
    timesteps = torch.randint(0, steps, (batch,), generator=generator, device=device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noisy, timesteps, noise
    if kind == "v_prediction":
        return noisy, timesteps, scheduler.get_velocity(clean, noise, timesteps)
    return noisy, timesteps, clean


class TrainedModules(torch.nn.Module):
    """What pretraining updates, behind one forward (so DDP sees every parameter): the network and,
    for prompt models, the text encoder that turns a batch's `input_ids` into cross-attention states."""

    def __init__(self, network: torch.nn.Module, text_encoder: torch.nn.Module | None = None):
        super().__init__()
        self.network = network
        self.text_encoder = text_encoder

    @classmethod
    def of(cls, model) -> TrainedModules:
        return cls(model.network, getattr(model, "text_encoder", None))

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, condition: dict[str, torch.Tensor]) -> torch.Tensor:
        if "input_ids" in condition:
            condition = {"encoder_hidden_states": self.text_encoder(condition["input_ids"])}
        return self.network(noisy, timesteps, **condition).sample


def pretrain(config: PretrainConfig) -> dict:
    if config.data.kind in ("token_shapes", "markov_sequences"):  # discrete diffusion and its classifiers
        from genrl.discrete.pretrain import pretrain_discrete

        return pretrain_discrete(config)
    if config.data.kind == "ufc_episodes":  # a UFC control adapter for a frozen model
        from genrl.guidance.ufc_training import pretrain_ufc

        return pretrain_ufc(config)
    demos = load_data(config)  # a missing or broken dataset fails before anything is written
    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with="tensorboard", project_dir=config.output_dir)
    set_seed(config.seed)
    model = build_model(config, demos)  # also checks the dataset's env against eval.env
    eval_sampler = None if config.eval.skip else end_of_run_sampler(config, model)
    if eval_sampler is not None:
        build_sampler(eval_sampler, model)  # a sampler that does not fit the model fails before training
    output_dir = prepare_output_dir(config, accelerator)
    model.to(accelerator.device)
    batches = make_batches(config, model, demos, accelerator.device)

    def denoising_loss(trained, clean, condition, generator):
        noisy, timesteps, target = noisy_input_and_target(model.scheduler, clean, generator)
        return F.mse_loss(trained(noisy, timesteps, condition).float(), target.float())

    final, log = fit(config, accelerator, model, batches, denoising_loss, output_dir, "pretrain")
    return save_and_evaluate(config, accelerator, final, batches, log, output_dir, eval_sampler)


def save_and_evaluate(config, accelerator: Accelerator, final, batches, log, output_dir, eval_sampler: SamplerConfig | None) -> dict:
    """The end of a `fit` run (main process): the model to output_dir/model, its end-of-run figures with
    `eval_sampler` (None: none) to metrics.jsonl, and the summary to eval.json."""
    summary = {}
    if accelerator.is_main_process:
        final.save_pretrained(output_dir / "model")
        summary = {"model": str(output_dir / "model"), **batches.describe()}
        if eval_sampler is not None:
            results = evaluate_pretrained(config, final, eval_sampler, output_dir)
            log.write({"step": config.max_steps, **results})
            summary.update(results)
        (output_dir / "eval.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary


def fit(config, accelerator: Accelerator, model, batches, step_loss, output_dir, name: str, after_step=None,
        checkpointed: tuple = ()):
    """The training loop `genrl pretrain` and `genrl distill` share: `config.max_steps` AdamW steps on
    `step_loss(trained, clean, condition, generator)` (a loss, or (loss, {name: part}) to log its parts) over batches from `batches`, with a cosine schedule,
    an EMA of the weights, checkpoints and resume. `after_step(trained)` runs after each optimizer step
    (a distiller's target network); `checkpointed` objects are saved with the checkpoints. Returns a copy of
    `model` holding the EMA weights (the ones saved and evaluated, as in DDPM practice and Diffusion
    Policy) and the metrics log."""
    device = accelerator.device
    trained = TrainedModules.of(model)
    ema = EMAModel(trained.parameters(), decay=config.ema_decay, use_ema_warmup=config.ema_warmup, power=0.75)
    ema.to(device)
    opt = config.optimizer
    optimizer = torch.optim.AdamW(trained.parameters(), lr=opt.learning_rate, betas=(opt.adam_beta1, opt.adam_beta2),
                                  weight_decay=opt.weight_decay, eps=opt.adam_epsilon)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    trained, optimizer, lr_schedule = accelerator.prepare(trained, optimizer, lr_schedule)
    accelerator.register_for_checkpointing(ema, *checkpointed)
    start_step, resumed_from = 0, None
    if config.resume:
        resumed_from = require_checkpoint(output_dir)
        start_step = load_checkpoint(accelerator, resumed_from)["step"]
        if accelerator.is_main_process:  # steps logged after that checkpoint are done again
            truncate_metrics(output_dir / "metrics.jsonl", start_step)
    accelerator.init_trackers(name)
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process)

    progress = tqdm(range(start_step, config.max_steps), desc=name, disable=not accelerator.is_main_process,
                    initial=start_step, total=config.max_steps)
    running_loss = RunningLoss(log, accelerator, progress, config.log_every)
    trained.train()
    for step in progress:
        # Seeded per (run, rank, step): reproducible, and a resumed run sees the same batches and noise.
        rng = np.random.default_rng([config.seed, accelerator.process_index, step])
        clean, condition = batches.sample(rng, device)
        generator = torch.Generator(device).manual_seed(int(rng.integers(2**62)))
        loss = step_loss(trained, clean, condition, generator)
        loss, parts = loss if isinstance(loss, tuple) else (loss, None)  # a loss of several terms names them
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(trained.parameters(), opt.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad()
        ema.step(trained.parameters())
        if after_step is not None:
            after_step(trained)
        extra = None
        if accelerator.num_processes > 1 and (step + 1) % config.log_every == 0:  # the same steps on every rank
            extra = {"weights_rank_spread": weight_spread_across_ranks(accelerator, trained.parameters())}
        running_loss.add(step + 1, loss.item(), lr_schedule.get_last_lr()[0], parts, extra)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.max_steps:
            save_checkpoint(accelerator, output_dir, step + 1, {"step": step + 1}, keep=config.keep_checkpoints,
                            protect=resumed_from)

    final = copy.deepcopy(model)
    ema.copy_to(TrainedModules.of(final).parameters())
    final.eval()
    return final, log


def end_of_run_sampler(config: PretrainConfig, model) -> SamplerConfig:
    """Policies: `eval.episodes.sampler`; images (and a policy without one): 20 deterministic steps
    (DDIM eta 0, or the flow's Euler ODE)."""
    sampler_config = config.eval.episodes.sampler if isinstance(model, DiffusionPolicy) else None
    if sampler_config is None:
        sampler_config = SamplerConfig(kind="flow_sde", num_steps=20, noise_level=0.0) if model.family == "flow" else \
            SamplerConfig(kind="ddim", num_steps=20, eta=0.0)
    return sampler_config


def evaluate_pretrained(config: PretrainConfig, model, sampler_config: SamplerConfig, output_dir) -> dict:
    """`eval_`-prefixed figures of the trained model: success over `eval.episodes` seeded episodes for a
    policy; for an image model, prompt match of `eval.num_samples` single-object prompts (and a grid)."""
    if isinstance(model, DiffusionPolicy):
        env = EnvConfig.model_validate(model.env_config)
        results = evaluate_policy(model, env, config.eval.episodes, build_sampler(sampler_config, model), output_dir)
    else:
        prompts = make_prompts(PromptConfig(num_objects=(1, 1)), np.random.default_rng(config.seed + 1), config.eval.num_samples)
        images = sample_images(model, prompts, sampler_config, seed=config.seed)
        save_grid(images[:64], output_dir / "samples" / "final_single_object.png", nrow=8)
        results = score_images(images, prompts, ["shapes_alignment", "jpeg_compressibility"])
    return {"eval_" + key.replace("/", "_"): value for key, value in results.items()}
