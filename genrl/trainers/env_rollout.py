"""Rollouts of an action policy: seeded episodes in vectorised environments; an episode is the reward.

Every policy call samples a chain through the shared sampler and stores it, so one epoch's batch
is all the chains of `num_envs` episodes per process (consecutive envs in groups of `group_size`
share an initial state). The episode's reward (the sum of the configured per-step reward) is the
unit reward; the per-chain rewards, terminations and next observations are kept for DPPO's GAE.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from genrl.envs import make_vector_env, run_episodes
from genrl.errors import ConfigError
from genrl.evaluation.episodes import check_policy_fits_env, evaluate_policy, policy_actor
from genrl.models.step_routed_network import StepRoutedNetwork
from genrl.policies.diffusion import DiffusionPolicy
from genrl.run_dir import read_metrics
from genrl.samplers import build_sampler
from genrl.trainers.batch import EnvDecisions, RolloutBatch
from genrl.trajectory import Trajectory

TRAIN_SEED_BASE = 1_000_000  # training episodes use seeds from here on; evaluation seeds lie below


def episode_seeds(seed: int, num_envs: int, group_size: int, epoch: int, rank: int, world: int) -> list[int]:
    """Reset seeds of this process's episodes at this epoch; each group of `group_size`
    consecutive envs shares one (REBEL's pairs, DDPO's groups)."""
    first = TRAIN_SEED_BASE * (seed + 1) + (epoch * world + rank) * num_envs
    return [first + j // group_size for j in range(num_envs)]


class EnvRollout:
    def __init__(self, config, uses_reward: bool = True):
        self.config, self.rollout = config, config.rollout
        self.model = DiffusionPolicy.from_pretrained(config.model.path)
        if isinstance(self.model.network, StepRoutedNetwork):
            raise ConfigError(f"model.path {config.model.path} was already partially fine-tuned by DPPO; start from its base policy")

    def frozen_modules(self) -> list[torch.nn.Module]:
        return []

    def start(self, accelerator, sampler) -> None:
        self.accelerator, self.sampler, self.device = accelerator, sampler, accelerator.device
        self.model.to(self.device).eval()
        self.vector_env = make_vector_env(self.rollout.env, self.rollout.num_envs)
        check_policy_fits_env(self.model, self.vector_env, self.rollout.env.id)

    def collect(self, epoch: int, branch_step: int | None = None) -> tuple[RolloutBatch, dict]:
        rollout, accelerator = self.rollout, self.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        started = time.perf_counter()
        chains = []
        generator = torch.Generator(self.device).manual_seed(hash((self.config.seed, rank, epoch)) % 2**62)
        mask = self.model.executed_mask().to(self.device) if rollout.score_executed_only else None
        act = policy_actor(self.model, self.sampler, generator, on_chain=lambda trajectory, index: chains.append(trajectory),
                           score_mask=mask)
        seeds = episode_seeds(self.config.seed, rollout.num_envs, rollout.group_size, epoch, rank, world)
        with accelerator.autocast():
            episodes = run_episodes(self.vector_env, act, seeds, self.model.n_obs_steps, self.model.n_action_steps,
                                    rollout.env.success_key, rollout.env.score_key, reward=rollout.reward,
                                    success_bonus=rollout.success_bonus)
        decisions = episodes.decisions
        unit_of_chain = np.concatenate([d.env_index for d in decisions])
        chain_reward = np.concatenate([d.reward for d in decisions])
        episode_rewards = np.zeros(len(seeds))
        np.add.at(episode_rewards, unit_of_chain, chain_reward)
        next_history = torch.from_numpy(np.concatenate([d.next_obs_history for d in decisions]))
        env_decisions = EnvDecisions(
            reward=chain_reward,
            terminated=np.concatenate([d.terminated for d in decisions]).astype(np.float64),
            next_condition=self.model.condition(next_history)["global_cond"],
            chains_of_unit=[np.flatnonzero(unit_of_chain == i) for i in range(len(seeds))],  # in decision (time) order
        )
        # Episode statistics over every process, as the epoch's metrics.
        gathered = {key: accelerator.gather(torch.as_tensor(value, dtype=torch.float32, device=self.device)).cpu().numpy()
                    for key, value in [("success", episodes.successes), ("return", episodes.returns),
                                       ("length", episodes.lengths)]
                    + ([("score", episodes.score_final), ("score_max", episodes.score_max)] if rollout.env.score_key else [])}
        metrics = {"success_rate": float(gathered["success"].mean()), "return_mean": float(gathered["return"].mean()),
                   "episode_length_mean": float(gathered["length"].mean()), "episodes": len(gathered["success"]),
                   "env_steps": int(gathered["length"].sum())}
        if rollout.env.score_key:
            metrics[f"{rollout.env.score_key}_mean"] = float(gathered["score"].mean())
            metrics[f"{rollout.env.score_key}_max_mean"] = float(gathered["score_max"].mean())
        trajectory = Trajectory.concatenate(chains)
        metrics["chains"] = trajectory.batch_size
        batch = RolloutBatch(
            trajectory=trajectory,
            rewards=torch.as_tensor(episode_rewards, dtype=torch.float32, device=self.device),
            unit_of_chain=torch.as_tensor(unit_of_chain, dtype=torch.long),
            group_keys=list(seeds),
            decisions=env_decisions,
            metrics=metrics,
            group_size=rollout.group_size,
        )
        return batch, {"time_rollout": time.perf_counter() - started}

    def evaluate(self, output_dir, tag: str) -> dict:
        """Seeded evaluation episodes (main process) with the evaluation sampler; when that differs
        from the training sampler, the same episodes under the training sampler too (`train_sampler_*`):
        a noisy training chain and a deterministic evaluation chain can rank policies differently."""
        eval_config = self.rollout.eval
        if eval_config.sampler is None:
            return evaluate_policy(self.model, self.rollout.env, eval_config, self.sampler, output_dir, tag=tag, progress=False)
        figures = evaluate_policy(self.model, self.rollout.env, eval_config, build_sampler(eval_config.sampler, self.model),
                                  output_dir, tag=tag, progress=False)
        training = evaluate_policy(self.model, self.rollout.env, eval_config.model_copy(update={"num_videos": 0}),
                                   self.sampler, None, tag=tag, progress=False)
        return {**figures, **{f"train_sampler_{key}": value for key, value in training.items()}}

    def finish(self, output_dir, before: dict, after: dict) -> dict:
        self.vector_env.close()
        env_steps = sum(record.get("env_steps", 0) for record in read_metrics(output_dir / "metrics.jsonl"))
        return {"env_steps": env_steps, "policy": str(output_dir / "model")}

    def save(self, output_dir, network: torch.nn.Module, lora: bool) -> None:
        if lora:
            network = copy.deepcopy(network)
            network.fuse_lora()
            network.unload_lora()
        DiffusionPolicy(network, self.model.scheduler, self.model.normalizer, self.model.policy_config).save_pretrained(
            output_dir / "model")

    def check(self, trainer: str) -> None:
        if trainer in ("pxpo", "sft_pg"):
            raise ConfigError(f"trainer {trainer} works on images (rollout.kind: prompts), not env episodes")
        if self.config.b2diffurl.enabled:
            raise ConfigError("b2diffurl branches image chains (rollout.kind: prompts), not env episodes")
