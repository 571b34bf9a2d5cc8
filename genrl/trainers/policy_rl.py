"""RL fine-tuning of a Diffusion Policy in its environment: DDPO, DPPO and REBEL on actions.

The denoising chain is the same MDP as for images; an environment episode is the reward.
One iteration:
  1. roll out `num_envs` seeded episodes per process (vectorised envs); every policy call
     samples a chain through the shared sampler and its Trajectory is stored;
  2. advantages, by trainer:
       ddpo   the episode's reward (sum of the configured per-step reward), standardised within
              its group of episodes from one initial state (or over the batch), for every chain
              of the episode;
       dppo   GAE over the episode's decisions with a value network V(observation history),
              discounted along the chain by gamma_denoise (dppo.py);
       rebel  pairs of episodes from the same initial state; regression of the relative
              episode log-ratio onto the relative reward (rebel.py);
  3. `ppo.update_epochs` passes over the (chain, trained denoising step) pairs: DDPO's PPO-clip
     (ddpo.py) with one clip range (ddpo) or DPPO's rising clip per step (dppo); REBEL's exact
     step-by-step gradient of its squared residual.
DPPO's stabilisers live in the sampler (`sampler.min_std`, `sampler.noise_clip`: used alike for
sampling, re-scoring and evaluation, by every trainer) and in a StepRoutedNetwork (only the
last `ft_denoising_steps` steps use the fine-tuned copy). Devices, DDP, mixed precision and checkpoints are accelerate's; with
several processes each runs its own envs (distinct seeds) and gradients are all-reduced.
"""

from __future__ import annotations

import copy
import json
import time
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from genrl.envs import make_vector_env, run_episodes
from genrl.errors import ConfigError
from genrl.models.step_routed_network import StepRoutedNetwork
from genrl.policy.config import PolicyRLConfig
from genrl.policy.diffusion_policy import DiffusionPolicy
from genrl.policy.evaluate import check_policy_fits_env, evaluate_policy, policy_actor
from genrl.run_dir import MetricsLog, load_checkpoint, prepare_output_dir, require_checkpoint, save_checkpoint
from genrl.samplers import build_sampler
from genrl.trainers.ddpo import ddpo_loss
from genrl.trainers.dppo import ObservationValue, clip_ranges, denoising_discount, gae_advantages
from genrl.trainers.online_rl import GradientSteps, pad_to_common_count
from genrl.trainers.rebel import rebel_residuals, rebel_signed_loss
from genrl.trajectory import Trajectory

TRAIN_SEED_BASE = 1_000_000  # training episodes use seeds from here on; evaluation seeds lie below


def _check(config: PolicyRLConfig) -> None:
    if config.trainer == "rebel" and config.episodes_per_state != 2:
        raise ConfigError(f"trainer rebel compares pairs of episodes from one initial state: set episodes_per_state=2 "
                          f"(got {config.episodes_per_state})")
    if config.num_envs % config.episodes_per_state:
        raise ConfigError(f"num_envs {config.num_envs} must be a multiple of episodes_per_state ({config.episodes_per_state})")
    if config.reward == "score" and config.env.score_key is None:
        raise ConfigError("reward 'score' needs env.score_key (the info value to reward, e.g. coverage)")


def episode_seeds(config: PolicyRLConfig, iteration: int, rank: int, world: int) -> list[int]:
    """Reset seeds of this process's episodes at this iteration; each group of
    `episodes_per_state` consecutive envs shares one (REBEL's pairs, DDPO's groups)."""
    first = TRAIN_SEED_BASE * (config.seed + 1) + (iteration * world + rank) * config.num_envs
    return [first + j // config.episodes_per_state for j in range(config.num_envs)]


def train_policy(config: PolicyRLConfig) -> dict:
    _check(config)
    policy = DiffusionPolicy.from_pretrained(config.policy_path)
    if isinstance(policy.network, StepRoutedNetwork):
        raise ConfigError(f"policy_path {config.policy_path} was already partially fine-tuned by DPPO; start from its base policy")
    sampler = build_sampler(config.sampler, policy)
    steps = sampler.stochastic_steps()
    if not steps:
        raise ConfigError("sampler has no stochastic step to train (DDIM needs eta > 0, or set sampler.min_std)")
    finetuned_steps = config.dppo.ft_denoising_steps if config.trainer == "dppo" else None
    if finetuned_steps is not None:
        if finetuned_steps > len(steps):
            raise ConfigError(f"dppo.ft_denoising_steps {finetuned_steps} exceeds the sampler's {len(steps)} stochastic steps")
        steps = steps[-finetuned_steps:]

    accelerator = Accelerator(mixed_precision=config.mixed_precision, log_with=list(config.log_with) or None,
                              project_dir=config.output_dir)
    output_dir = prepare_output_dir(config, accelerator)
    set_seed(config.seed, device_specific=True)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    policy.to(device).eval()
    network = policy.network
    base_network = copy.deepcopy(network).requires_grad_(False) if finetuned_steps is not None else None
    network.requires_grad_(True)
    trainable = list(network.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=config.optimizer.learning_rate, weight_decay=config.optimizer.weight_decay,
                                  betas=(config.optimizer.adam_beta1, config.optimizer.adam_beta2), eps=config.optimizer.adam_epsilon)
    network, optimizer = accelerator.prepare(network, optimizer)
    value_net = value_optimizer = None
    if config.trainer == "dppo":
        value_net = ObservationValue(policy.n_obs_steps * policy.obs_dim, config.dppo.value_hidden).to(device)
        value_optimizer = torch.optim.AdamW(value_net.parameters(), lr=config.dppo.value_learning_rate)
        value_net, value_optimizer = accelerator.prepare(value_net, value_optimizer)
    ema = EMAModel(trainable, decay=config.ema_decay) if config.ema_decay > 0 else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    switch = sampler.step_pairs[steps[0]][0] if base_network is not None else None

    def routed(module):
        return module if base_network is None else StepRoutedNetwork(base_network, module, switch)

    policy.denoiser.network = routed(network)

    @contextmanager
    def unwrapped_policy():
        """The policy with plain (not DDP-wrapped) weights, for evaluation on the main process only."""
        policy.denoiser.network = routed(accelerator.unwrap_model(network))
        try:
            yield policy
        finally:
            policy.denoiser.network = routed(network)

    start_iteration, env_steps = 0, 0
    if config.resume:
        state = load_checkpoint(accelerator, require_checkpoint(output_dir))
        start_iteration, env_steps = state["iteration"], state["env_steps"]
    vector_env = make_vector_env(config.env, config.num_envs)
    check_policy_fits_env(policy, vector_env, config.env.id)

    def evaluate_now(tag: str) -> dict:
        with unwrapped_policy() as plain:
            return evaluate_policy(plain, config.env, config.eval, sampler, output_dir, tag=tag, progress=False)

    before_path = output_dir / "eval_before.json"
    if accelerator.is_main_process and not before_path.exists():
        before_path.write_text(json.dumps(evaluate_now("before")))
    accelerator.wait_for_everyone()
    accelerator.init_trackers("train_policy", config={"trainer": config.trainer, "seed": config.seed})
    log = MetricsLog(output_dir / "metrics.jsonl", accelerator.is_main_process)
    stepper = GradientSteps(accelerator, network, optimizer, trainable, config.optimizer.max_grad_norm, ema)

    bar = tqdm(range(start_iteration, config.num_iterations), desc=f"{config.trainer} {config.env.id}",
               disable=not accelerator.is_main_process, initial=start_iteration, total=config.num_iterations)
    for iteration in bar:
        # ------------------------------------------------------------ 1. rollouts
        started = time.perf_counter()
        chains = []
        generator = torch.Generator(device).manual_seed(hash((config.seed, rank, iteration)) % 2**62)
        act = policy_actor(policy, sampler, generator, on_chain=lambda trajectory, index: chains.append(trajectory))
        with accelerator.autocast():
            episodes = run_episodes(vector_env, act, episode_seeds(config, iteration, rank, world), policy.n_obs_steps,
                                    policy.n_action_steps, config.env.success_key, config.env.score_key, reward=config.reward)
        batch = RolloutBatch(episodes, chains)
        time_rollout = time.perf_counter() - started

        # ------------------------------------------------------------ 2-3. advantages and updates
        started = time.perf_counter()
        diagnostics = defaultdict(list)
        network.train()
        if config.trainer == "rebel":
            _rebel_updates(config, accelerator, policy, sampler, batch, steps, stepper, diagnostics, rank, iteration)
        else:
            advantages = _chain_advantages(config, accelerator, policy, value_net, batch, diagnostics)
            # DPPO's critic warm-up: while V is untrained, its advantages are noise; fit V alone.
            policy_update = not (config.trainer == "dppo" and iteration < config.dppo.critic_warmup_iterations)
            _ppo_updates(config, accelerator, policy, sampler, batch, advantages, steps, network, optimizer, value_net,
                         value_optimizer, ema, diagnostics, rank, iteration, policy_update)
        network.eval()
        time_training = time.perf_counter() - started

        # ------------------------------------------------------------ log, evaluate, checkpoint
        gathered = {key: accelerator.gather(torch.as_tensor(value, dtype=torch.float32, device=device)).cpu().numpy()
                    for key, value in [("success", batch.episodes.successes), ("return", batch.episodes.returns),
                                       ("length", batch.episodes.lengths), ("episode_reward", batch.episode_rewards)]
                    + ([("score", batch.episodes.score_final), ("score_max", batch.episodes.score_max)]
                       if config.env.score_key else [])}
        env_steps += int(gathered["length"].sum())
        record = {"step": iteration + 1, "iteration": iteration + 1, "env_steps": env_steps,
                  "episodes": len(gathered["success"]), "success_rate": float(gathered["success"].mean()),
                  "return_mean": float(gathered["return"].mean()), "episode_length_mean": float(gathered["length"].mean()),
                  "reward_mean": float(gathered["episode_reward"].mean())}
        if config.env.score_key:
            record[f"{config.env.score_key}_mean"] = float(gathered["score"].mean())
            record[f"{config.env.score_key}_max_mean"] = float(gathered["score_max"].mean())
        for key, values in diagnostics.items():
            record[key] = accelerator.gather(torch.stack(values).float().mean().reshape(1).to(device)).mean().item()
        record.update(time_rollout=time_rollout, time_training=time_training, chains=batch.trajectory.batch_size)
        if config.eval_every and (iteration + 1) % config.eval_every == 0 and iteration + 1 < config.num_iterations:
            if accelerator.is_main_process:
                record.update({f"eval_{k}": v for k, v in evaluate_now(f"iteration{iteration + 1}").items()})
            accelerator.wait_for_everyone()
        log.write(record)
        accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=iteration + 1)
        bar.set_postfix(success=f"{record['success_rate']:.2f}", ret=f"{record['return_mean']:.2f}")
        if (iteration + 1) % config.checkpoint_every == 0 or iteration + 1 == config.num_iterations:
            save_checkpoint(accelerator, output_dir, iteration + 1, {"iteration": iteration + 1, "env_steps": env_steps})
    vector_env.close()

    # ---------------------------------------------------------------- final policy, before/after
    summary = {}
    if ema is not None:
        ema.copy_to(trainable)
    if accelerator.is_main_process:
        with unwrapped_policy() as plain:
            finetuned = DiffusionPolicy(copy.deepcopy(plain.denoiser.network), plain.scheduler, plain.normalizer,
                                        plain.policy_config)
            finetuned.save_pretrained(output_dir / "model")
        after = evaluate_now("after")
        before = json.loads(before_path.read_text())
        for key in after:
            summary[f"{key}_before"], summary[f"{key}_after"] = before[key], after[key]
        summary["env_steps"] = env_steps
        summary["policy"] = str(output_dir / "model")
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    accelerator.end_training()
    return summary


class RolloutBatch:
    """One iteration's episodes with their chains flattened into one Trajectory (row = chain),
    and for each chain its env, its decision's reward / termination / next observations."""

    def __init__(self, episodes, chains: list[Trajectory]):
        self.episodes = episodes
        self.trajectory = Trajectory.concatenate(chains)
        decisions = episodes.decisions
        self.env_index = np.concatenate([d.env_index for d in decisions])
        self.reward = np.concatenate([d.reward for d in decisions])
        self.terminated = np.concatenate([d.terminated for d in decisions]).astype(np.float64)
        self.next_obs_history = np.concatenate([d.next_obs_history for d in decisions])
        num_episodes = len(episodes.seeds)
        self.episode_rewards = np.zeros(num_episodes)
        np.add.at(self.episode_rewards, self.env_index, self.reward)
        # Chains of env i in decision order (decisions were appended in time order).
        self.chains_of_env = [np.flatnonzero(self.env_index == i) for i in range(num_episodes)]


def _standardize(accelerator, values: torch.Tensor) -> torch.Tensor:
    """(values - mean) / std over every process's values."""
    everything = accelerator.gather(values)
    return (values - everything.mean()) / (everything.std() + 1e-8)


def _chain_advantages(config, accelerator, policy, value_net, batch: RolloutBatch, diagnostics) -> torch.Tensor:
    """(M,) advantage of each chain: DDPO the standardised episode reward; DPPO standardised GAE.
    For DPPO, also stores the value targets on the batch (batch.returns)."""
    device = accelerator.device
    if config.trainer == "ddpo":
        rewards = torch.as_tensor(batch.episode_rewards, dtype=torch.float32, device=device)
        if config.episodes_per_state > 1:  # per initial state, like DDPO's per-prompt statistics
            groups = rewards.view(-1, config.episodes_per_state)
            episode_advantage = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).flatten()
        else:
            episode_advantage = _standardize(accelerator, rewards)
        return episode_advantage[torch.as_tensor(batch.env_index, device=device)].clamp(-config.ppo.adv_clip_max,
                                                                                        config.ppo.adv_clip_max)
    condition = batch.trajectory.condition["global_cond"].to(device)
    next_condition = policy.condition(torch.from_numpy(batch.next_obs_history))["global_cond"]
    with torch.no_grad():
        values = value_net(condition).cpu().numpy().astype(np.float64)
        next_values = value_net(next_condition).cpu().numpy().astype(np.float64)
    advantages = np.zeros(len(values))
    for rows in batch.chains_of_env:
        advantages[rows] = gae_advantages(batch.reward[rows], values[rows], next_values[rows], batch.terminated[rows],
                                          config.dppo.gamma, config.dppo.gae_lambda)
    batch.returns = torch.as_tensor(advantages + values, dtype=torch.float32, device=device)
    diagnostics["value_mean"].append(torch.tensor(values.mean()))
    advantages = _standardize(accelerator, torch.as_tensor(advantages, dtype=torch.float32, device=device))
    return advantages.clamp(-config.ppo.adv_clip_max, config.ppo.adv_clip_max)


def _ppo_updates(config, accelerator, policy, sampler, batch: RolloutBatch, advantages, steps, network, optimizer,
                 value_net, value_optimizer, ema, diagnostics, rank, iteration, policy_update: bool = True) -> None:
    """PPO-clip over (chain, trained step) pairs; DPPO adds the chain discount, the rising clip
    and the value regression. Every process runs the same number of minibatches (padding
    minibatches train with weight 0), so DDP's gradient all-reduce pairs up. Without
    `policy_update` the policy loss is weighted 0 (the value net still learns)."""
    device = accelerator.device
    trajectory = batch.trajectory
    num_chains, num_trained = trajectory.batch_size, len(steps)
    steps_tensor = torch.tensor(steps)
    dppo = config.trainer == "dppo"
    rng = torch.Generator().manual_seed(hash((config.seed, rank, iteration, 1)) % 2**62)
    for _ in range(config.ppo.update_epochs):
        order = torch.randperm(num_chains * num_trained, generator=rng)
        minibatches = list(order.split(config.train_batch_size))
        minibatches, real_count = pad_to_common_count(accelerator, minibatches, order[: config.train_batch_size])
        for number, items in enumerate(minibatches):
            weight = 1.0 if number < real_count else 0.0
            rows, position = items // num_trained, items % num_trained
            chunk = trajectory.select(rows)
            step_index = steps_tensor[position]
            old_log_prob = chunk.log_probs[torch.arange(len(rows)), step_index].to(device)
            chain_advantage = advantages[rows.to(device)]
            with accelerator.autocast():
                log_prob, _, _ = sampler.log_prob(policy.denoiser, chunk, step_index)
            if dppo:
                discount = denoising_discount(position, num_trained, config.dppo.gamma_denoise).to(device)
                clip = clip_ranges(position, num_trained, config.dppo.clip_start, config.dppo.clip_end,
                                   config.dppo.clip_rate).to(device)
                loss, info = ddpo_loss(log_prob, old_log_prob, chain_advantage * discount * weight * policy_update, clip)
                prediction = value_net(chunk.condition["global_cond"].to(device))
                value_loss = ((prediction - batch.returns[rows.to(device)]) ** 2).mean()
                loss = loss + config.dppo.value_coef * value_loss * weight
                info["value_loss"] = value_loss.detach()
            else:
                loss, info = ddpo_loss(log_prob, old_log_prob, chain_advantage * weight, config.ppo.clip_range)
            accelerator.backward(loss)
            if policy_update:
                accelerator.clip_grad_norm_(network.parameters(), config.optimizer.max_grad_norm)
                optimizer.step()
            optimizer.zero_grad()
            if value_optimizer is not None:
                value_optimizer.step()
                value_optimizer.zero_grad()
            if ema is not None and policy_update:
                ema.step(network.parameters())
            if weight:
                for key, value in info.items():
                    diagnostics[key].append(value)


def _rebel_updates(config, accelerator, policy, sampler, batch: RolloutBatch, steps, stepper, diagnostics, rank,
                   iteration) -> None:
    """REBEL over pairs of episodes (envs 2j, 2j+1 share an initial state). An episode's
    log-ratio sums every chain and trained step; per minibatch of pairs, a gradient-free pass
    gives the residuals, then backward passes over (chain, step) chunks accumulate the exact
    gradient of the squared residuals (rebel.py), and the optimizer steps once."""
    device = accelerator.device
    trajectory = batch.trajectory
    rewards = torch.as_tensor(batch.episode_rewards, dtype=torch.float32, device=device)
    if config.rebel.standardize_rewards:
        rewards = _standardize(accelerator, rewards)
    num_trained, steps_tensor = len(steps), torch.tensor(steps)
    env_of_chain = torch.as_tensor(batch.env_index)
    num_pairs = len(batch.episodes.seeds) // 2
    rng = torch.Generator().manual_seed(hash((config.seed, rank, iteration, 2)) % 2**62)
    eta_inverse = config.rebel.eta_inverse

    def chain_step_items(pairs: torch.Tensor) -> torch.Tensor:
        """All (chain, trained step) items of the episodes in `pairs`, as chain * num_trained + position."""
        envs = torch.cat([2 * pairs, 2 * pairs + 1])
        chains = torch.flatten(torch.nonzero(torch.isin(env_of_chain, envs)))
        return (chains[:, None] * num_trained + torch.arange(num_trained)).flatten()

    def log_probs(items: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        rows, position = items // num_trained, items % num_trained
        chunk = trajectory.select(rows)
        step_index = steps_tensor[position]
        with torch.set_grad_enabled(grad), accelerator.autocast():
            log_prob, _, _ = sampler.log_prob(policy.denoiser, chunk, step_index)
        return log_prob, chunk.log_probs[torch.arange(len(rows)), step_index].to(device)

    for _ in range(config.ppo.update_epochs):
        for pairs in torch.randperm(num_pairs, generator=rng).split(config.rebel.pairs_per_update):
            items = chain_step_items(pairs)
            episode_log_ratio = torch.zeros(len(batch.episodes.seeds), device=device)
            for part in items.split(config.train_batch_size):
                new, old = log_probs(part, grad=False)
                episode_log_ratio.index_add_(0, env_of_chain[part // num_trained].to(device), new - old)
            first, second = (2 * pairs).to(device), (2 * pairs + 1).to(device)
            residuals = rebel_residuals(episode_log_ratio[first], episode_log_ratio[second], rewards[first], rewards[second],
                                        eta_inverse)
            diagnostics["rebel_loss"].append((residuals**2).mean())
            # Each chain's log-prob enters its pair's residual with sign +1 (first) or -1 (second).
            chain_residual = torch.zeros(len(batch.episodes.seeds), device=device)
            chain_residual[first], chain_residual[second] = residuals, -residuals
            parts = list(items.split(config.train_batch_size))
            parts, real_count = pad_to_common_count(accelerator, parts, items[:1])
            for number, part in enumerate(parts):
                new, _ = log_probs(part, grad=True)
                signed = chain_residual[env_of_chain[part // num_trained].to(device)] * (1.0 if number < real_count else 0.0)
                loss = rebel_signed_loss(new, signed, len(pairs), eta_inverse)
                stepper.backward(loss, 1, last_in_group=number == len(parts) - 1)
