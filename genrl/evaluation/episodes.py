"""Evaluate a Diffusion Policy over seeded episodes: success rate, return, score, videos.

`evaluate_policy` runs `num_episodes` episodes (episode i reset with `seed + i`, in waves of
`num_envs` vectorised envs) and saves the first `num_videos` episodes as GIF/MP4 in
output_dir/samples/. The same function serves `genrl eval` (genrl/commands/eval.py), the end of
pretraining, and the before/after evaluations of RL fine-tuning.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from genrl.envs import Episodes, make_vector_env, run_episodes, save_video
from genrl.errors import ConfigError
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy


def check_policy_fits_env(policy: DiffusionPolicy, vector_env, env_id: str) -> None:
    obs_dim = vector_env.single_observation_space.shape[0]
    action_dim = vector_env.single_action_space.shape[0]
    if (obs_dim, action_dim) != (policy.obs_dim, policy.action_dim):
        raise ConfigError(
            f"the policy takes {policy.obs_dim} observation values and gives {policy.action_dim} actions, but env "
            f"{env_id!r} has {obs_dim} and {action_dim} (trained for {policy.env_config.get('id', 'another env')!r}?)"
        )


def policy_actor(policy: DiffusionPolicy, sampler, generator: torch.Generator, on_chain=None, score_mask=None):
    """The `act` function of run_episodes: a chain per env, executed actions out.
    `on_chain(trajectory, env_index)` sees every sampled chain (the RL trainers store them);
    `score_mask` is what the chains' log-probs score (None: the whole chunk)."""

    @torch.no_grad()
    def act(obs_history: np.ndarray, env_index: np.ndarray) -> np.ndarray:
        condition = policy.condition(torch.from_numpy(obs_history))
        trajectory = sampler.sample(policy.denoiser, condition, (len(env_index), *policy.sample_shape), generator=generator,
                                    score_mask=score_mask)
        if on_chain is not None:
            on_chain(trajectory, env_index)
        return policy.executed_actions(trajectory.sample).cpu().numpy()

    return act


def timed(act, chunk_seconds: list[float] | None):
    """`act` that appends the wall time of each policy call (one chunk per running env) to
    `chunk_seconds`; `act` itself when that is None."""
    if chunk_seconds is None:
        return act

    def timed_act(obs_history: np.ndarray, env_index: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        actions = act(obs_history, env_index)
        chunk_seconds.append(time.perf_counter() - start)
        return actions

    return timed_act


def evaluate_policy(policy: DiffusionPolicy, env_config, eval_config, sampler, output_dir: Path | None = None,
                    tag: str = "eval", progress: bool = True, seed_offset: int = 0,
                    chunk_seconds: list[float] | None = None) -> dict:
    """Summary of `eval_config.num_episodes` seeded episodes; videos go to output_dir/samples/.
    A list passed as `chunk_seconds` receives the wall time of every policy call."""
    num_envs = min(eval_config.num_envs, eval_config.num_episodes)
    vector_env = make_vector_env(env_config, num_envs, render=eval_config.num_videos > 0 and output_dir is not None)
    check_policy_fits_env(policy, vector_env, env_config.id)
    seeds = [eval_config.seed + seed_offset + i for i in range(eval_config.num_episodes)]
    generator = torch.Generator(policy.device).manual_seed(eval_config.seed + seed_offset)
    act = timed(policy_actor(policy, sampler, generator), chunk_seconds)
    waves = []
    for start in range(0, len(seeds), num_envs):
        record = tuple(range(eval_config.num_videos)) if start == 0 and output_dir is not None else ()
        waves.append(run_episodes(vector_env, act, seeds[start : start + num_envs], policy.n_obs_steps, policy.n_action_steps,
                                  env_config.success_key, env_config.score_key, record_envs=record, progress=progress))
    vector_env.close()
    episodes = _merge(waves)
    for index, frames in episodes.frames.items():
        save_video(frames, output_dir / "samples" / f"{tag}_episode{index}.{eval_config.video_format}", eval_config.video_fps)
    return episodes.summary(env_config.score_key)


def _merge(waves: list[Episodes]) -> Episodes:
    cat = lambda name: None if getattr(waves[0], name) is None else np.concatenate([getattr(w, name) for w in waves])  # noqa: E731
    return Episodes(seeds=[s for w in waves for s in w.seeds], returns=cat("returns"), lengths=cat("lengths"),
                    successes=cat("successes"), score_final=cat("score_final"), score_max=cat("score_max"),
                    frames=waves[0].frames)
