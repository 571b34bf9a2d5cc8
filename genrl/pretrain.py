"""Pretrain a prompt-conditioned diffusion model on the Shapes world (`genrl pretrain`).

Plain denoising score matching, as diffusers' train_text_to_image example does it:
sample a timestep, add noise with the scheduler, regress the network's output on the
target of its parameterisation. Data is generated on the fly (seeded per step), so the
model never sees the same image twice and a resumed run draws the same batches.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from genrl.config import PretrainConfig, PromptConfig, SamplerConfig
from genrl.evaluate import make_prompts, sample_images, score_images
from genrl.models.networks import build_network
from genrl.models.prompt_diffusion_model import PromptDiffusionModel
from genrl.models.text_encoder import PromptEncoder, WordTokenizer
from genrl.run_dir import MetricsLog, RunningLoss, load_checkpoint, prepare_output_dir, require_checkpoint, save_checkpoint, save_grid
from genrl.shapes import VOCABULARY, generate_batch


def build_model(config: PretrainConfig) -> PromptDiffusionModel:
    tokenizer = WordTokenizer(VOCABULARY, config.text_encoder.max_length)
    text_encoder = PromptEncoder(
        vocab_size=len(tokenizer.words),
        max_length=config.text_encoder.max_length,
        hidden_size=config.text_encoder.hidden_size,
        num_layers=config.text_encoder.num_layers,
        num_heads=config.text_encoder.num_heads,
    )
    network_config = dict(config.network.config)
    if config.network.kind == "unet2d_condition":
        network_config.setdefault("cross_attention_dim", config.text_encoder.hidden_size)
    network = build_network(config.network.kind, network_config)
    if config.schedule.family == "flow":
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=config.schedule.num_train_timesteps, shift=config.schedule.shift
        )
    else:
        scheduler = DDPMScheduler(
            num_train_timesteps=config.schedule.num_train_timesteps,
            beta_schedule=config.schedule.beta_schedule,
            prediction_type=config.schedule.prediction_type,
            clip_sample=config.schedule.clip_sample,
        )
    return PromptDiffusionModel(network, text_encoder, tokenizer, scheduler)


def noisy_input_and_target(model: PromptDiffusionModel, clean: torch.Tensor):
    """(noisy sample, network timestep, regression target) for a batch of clean samples.

    Diffusion: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with t uniform, target eps / v / x0.
    Flow matching: x = (1 - sigma) x0 + sigma eps with sigma uniform, target u = eps - x0,
    network timestep sigma * T (the convention of diffusers' flow pipelines).
    """
    scheduler = model.scheduler
    noise = torch.randn_like(clean)
    steps = scheduler.config.num_train_timesteps
    if model.family == "flow":
        sigma = torch.rand(clean.shape[0], device=clean.device)
        sigma_b = sigma.reshape(-1, 1, 1, 1)
        return (1 - sigma_b) * clean + sigma_b * noise, sigma * steps, noise - clean
    timesteps = torch.randint(0, steps, (clean.shape[0],), device=clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = clean
    return noisy, timesteps, target


def pretrain(config: PretrainConfig) -> dict:
    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with="tensorboard", project_dir=config.output_dir)
    output_dir = prepare_output_dir(config, accelerator)
    set_seed(config.seed)
    model = build_model(config)
    trainable = torch.nn.ModuleDict({"network": model.network, "text_encoder": model.text_encoder})
    ema = EMAModel(trainable.parameters(), decay=config.ema_decay)
    optimizer = torch.optim.AdamW(
        trainable.parameters(),
        lr=config.optimizer.learning_rate,
        betas=(config.optimizer.adam_beta1, config.optimizer.adam_beta2),
        weight_decay=config.optimizer.weight_decay,
        eps=config.optimizer.adam_epsilon,
    )
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    trainable, optimizer, lr_schedule = accelerator.prepare(trainable, optimizer, lr_schedule)
    accelerator.register_for_checkpointing(ema)
    start_step = 0
    if config.resume:
        start_step = load_checkpoint(accelerator, require_checkpoint(output_dir))["step"]
    accelerator.init_trackers("pretrain")
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process)

    progress = tqdm(range(start_step, config.max_steps), desc="pretrain", disable=not accelerator.is_main_process, initial=start_step, total=config.max_steps)
    running_loss = RunningLoss(log, accelerator, progress, config.log_every)
    for step in progress:
        # Seeded per (run, rank, step): reproducible, and a resumed run sees the same data.
        rng = np.random.default_rng([config.seed, accelerator.process_index, step])
        images, captions, _ = generate_batch(rng, config.batch_size, tuple(config.data.num_objects), config.data.image_size)
        captions = [c if rng.random() >= config.condition_dropout else "" for c in captions]
        noisy, timesteps, target = noisy_input_and_target(model, images.to(accelerator.device))
        ids = model.tokenizer(captions).to(accelerator.device)
        with accelerator.accumulate(trainable):
            states = trainable["text_encoder"](ids)
            prediction = trainable["network"](noisy, timesteps, encoder_hidden_states=states).sample
            loss = F.mse_loss(prediction.float(), target.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(trainable.parameters(), config.optimizer.max_grad_norm)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad()
        ema.step(trainable.parameters())
        running_loss.add(step + 1, loss.item(), lr_schedule.get_last_lr()[0])
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.max_steps:
            save_checkpoint(accelerator, output_dir, step + 1, {"step": step + 1})

    # The shipped weights are the EMA weights, as in Diffusion Policy and DDPM practice.
    final = copy.deepcopy(accelerator.unwrap_model(trainable))
    ema.copy_to(final.parameters())
    shipped = PromptDiffusionModel(final["network"], final["text_encoder"], model.tokenizer, model.scheduler).eval()
    summary = {}
    if accelerator.is_main_process:
        shipped.save_pretrained(output_dir / "model")
        summary = evaluate_shapes_model(shipped, config.eval_samples, config.seed, output_dir)
        log.write({"step": config.max_steps, **summary})
        (output_dir / "eval.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary


def evaluate_shapes_model(model: PromptDiffusionModel, num_samples: int, seed: int, output_dir) -> dict:
    """Prompt-match share of single-object prompts at 20 deterministic steps (DDIM eta=0 / Euler ODE)."""
    prompts = make_prompts(PromptConfig(num_objects=(1, 1)), np.random.default_rng(seed + 1), num_samples)
    sampler = SamplerConfig(kind="flow_sde", num_steps=20, noise_level=0.0) if model.family == "flow" else \
        SamplerConfig(kind="ddim", num_steps=20, eta=0.0)
    images = sample_images(model, prompts, sampler, seed=seed)
    save_grid(images[:64], output_dir / "samples" / "final_single_object.png", nrow=8)
    summary = score_images(images, prompts, ["shapes_alignment", "jpeg_compressibility"])
    return {"eval_" + k.replace("/", "_"): v for k, v in summary.items()}
