"""`genrl pretrain` for `domain: action` configs: a Diffusion Policy by behaviour cloning.

The Diffusion Policy recipe: windows of `horizon` steps from the demonstrations (the first
`n_obs_steps` observations are the condition, all `horizon` actions the sample), actions
min-max scaled to [-1, 1], DDPM noise at a uniform timestep, MSE on the predicted noise;
AdamW with a cosine schedule and warm-up; EMA weights (diffusers' EMAModel with its
warm-up, power 0.75) are the ones saved and evaluated. Batches are drawn with a generator
seeded per (run, rank, step), so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from genrl.data.demonstrations import Demonstrations, load_demonstrations, window_indices
from genrl.errors import ConfigError
from genrl.models.temporal_unet import TemporalUnet1D
from genrl.policy.config import PolicyConfig
from genrl.policy.diffusion_policy import DiffusionPolicy
from genrl.policy.evaluate import evaluate_policy
from genrl.policy.normalizer import Normalizer
from genrl.run_dir import MetricsLog, RunningLoss, load_checkpoint, prepare_output_dir, require_checkpoint, save_checkpoint
from genrl.samplers import build_sampler


def build_policy(config: PolicyConfig, demos: Demonstrations) -> DiffusionPolicy:
    """A random-init policy sized for the dataset, with the dataset's normalisation statistics."""
    spec = config.policy
    obs_dim, action_dim = demos.obs.shape[1], demos.action.shape[1]
    network = TemporalUnet1D(
        action_dim=action_dim,
        global_cond_dim=obs_dim * spec.n_obs_steps,
        down_dims=tuple(spec.down_dims),
        kernel_size=spec.kernel_size,
        n_groups=spec.n_groups,
        timestep_embed_dim=spec.timestep_embed_dim,
    )
    scheduler = DDPMScheduler(num_train_timesteps=spec.num_train_timesteps, beta_schedule=spec.beta_schedule,
                              prediction_type=spec.prediction_type, clip_sample=spec.clip_sample)
    policy_config = {
        "horizon": spec.horizon, "n_obs_steps": spec.n_obs_steps, "n_action_steps": spec.n_action_steps,
        "obs_dim": obs_dim, "action_dim": action_dim, "env": config.env.model_dump(mode="json"),
    }
    return DiffusionPolicy(network, scheduler, Normalizer.fit(demos.obs, demos.action, spec.obs_normalization), policy_config)


def _check(config: PolicyConfig, demos: Demonstrations) -> None:
    spec = config.policy
    if spec.n_obs_steps - 1 + spec.n_action_steps > spec.horizon:
        raise ConfigError(f"policy.horizon {spec.horizon} must cover n_obs_steps - 1 + n_action_steps "
                          f"({spec.n_obs_steps - 1 + spec.n_action_steps})")
    levels = len(spec.down_dims) - 1
    if spec.horizon % 2**levels:
        raise ConfigError(f"policy.horizon {spec.horizon} must be divisible by 2^{levels} (the UNet halves it {levels} times)")
    if any(d % spec.n_groups for d in spec.down_dims):
        raise ConfigError(f"policy.down_dims {spec.down_dims} must be multiples of policy.n_groups ({spec.n_groups})")
    dataset_env = demos.attrs.get("env", {}).get("id")
    if dataset_env is not None and dataset_env != config.env.id:
        raise ConfigError(f"dataset {config.dataset.path} was collected in {dataset_env!r}, but env.id is {config.env.id!r}")


def pretrain_policy(config: PolicyConfig) -> dict:
    demos = load_demonstrations(config.dataset.path)
    _check(config, demos)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with="tensorboard", project_dir=config.output_dir)
    output_dir = prepare_output_dir(config, accelerator)
    set_seed(config.seed)
    policy = build_policy(config, demos)
    spec, bc = config.policy, config.pretrain
    device = accelerator.device

    # Everything the loss needs lives on the device, normalised once: the datasets are small.
    obs = policy.normalizer.obs.normalize(torch.from_numpy(demos.obs)).to(device)
    actions = policy.normalizer.action.normalize(torch.from_numpy(demos.action)).to(device)
    windows = torch.from_numpy(window_indices(demos.episode_bounds(), spec.horizon, spec.n_obs_steps, spec.n_action_steps)).to(device)

    network = policy.network
    ema = EMAModel(network.parameters(), decay=bc.ema_decay, use_ema_warmup=True, power=0.75)
    optimizer = torch.optim.AdamW(network.parameters(), lr=bc.optimizer.learning_rate, weight_decay=bc.optimizer.weight_decay,
                                  betas=(bc.optimizer.adam_beta1, bc.optimizer.adam_beta2), eps=bc.optimizer.adam_epsilon)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, bc.warmup_steps, bc.max_steps)
    network, optimizer, lr_schedule = accelerator.prepare(network, optimizer, lr_schedule)
    ema.to(device)
    accelerator.register_for_checkpointing(ema)
    start_step = 0
    if config.resume:
        start_step = load_checkpoint(accelerator, require_checkpoint(output_dir))["step"]
    accelerator.init_trackers("pretrain_policy")
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process)
    scheduler = policy.scheduler

    progress = tqdm(range(start_step, bc.max_steps), desc="pretrain policy", disable=not accelerator.is_main_process,
                    initial=start_step, total=bc.max_steps)
    running_loss = RunningLoss(log, accelerator, progress, bc.log_every)
    network.train()
    for step in progress:
        generator = torch.Generator(device).manual_seed(hash((config.seed, accelerator.process_index, step)) % 2**62)
        rows = windows[torch.randint(0, len(windows), (bc.batch_size,), generator=generator, device=device)]
        condition = obs[rows[:, : spec.n_obs_steps]].flatten(1)
        clean = actions[rows]
        noise = torch.randn(clean.shape, generator=generator, device=device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bc.batch_size,), generator=generator, device=device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        target = noise if scheduler.config.prediction_type == "epsilon" else clean
        with accelerator.autocast():
            prediction = network(noisy, timesteps, global_cond=condition).sample
        loss = F.mse_loss(prediction.float(), target)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(network.parameters(), bc.optimizer.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad()
        ema.step(network.parameters())
        running_loss.add(step + 1, loss.item(), lr_schedule.get_last_lr()[0])
        if (step + 1) % bc.checkpoint_every == 0 or step + 1 == bc.max_steps:
            save_checkpoint(accelerator, output_dir, step + 1, {"step": step + 1})

    # The saved and evaluated weights are the EMA weights, as in Diffusion Policy.
    final = copy.deepcopy(accelerator.unwrap_model(network))
    ema.copy_to(final.parameters())
    trained = DiffusionPolicy(final.eval(), scheduler, policy.normalizer, policy.policy_config)
    summary = {}
    if accelerator.is_main_process:
        trained.save_pretrained(output_dir / "model")
        summary = {"policy": str(output_dir / "model"), "num_windows": len(windows), "dataset_episodes": demos.num_episodes}
        if bc.eval_episodes > 0:
            eval_config = config.eval.model_copy(update={"num_episodes": bc.eval_episodes})
            results = evaluate_policy(trained, config.env, eval_config, build_sampler(config.eval.sampler, trained), output_dir)
            summary.update({f"eval_{k}": v for k, v in results.items()})
            log.write({"step": bc.max_steps, **{k: v for k, v in summary.items() if k.startswith("eval_")}})
        (output_dir / "eval.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary
