"""Seeded episodes of a chunking policy in vectorised envs, with per-decision records for RL.

A *decision* is one policy call: for every env still in its episode, the last `n_obs_steps`
observations go in, a chunk of `n_action_steps` actions comes out and is executed (stopping
early for an env whose episode ends inside the chunk). Evaluation needs only the episode
statistics; the RL trainers also use the per-decision records (rewards, terminations and the
observation histories before and after), in the order the policy was called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from genrl.errors import ConfigError, RewardError

# act(observation histories (n, n_obs_steps, obs_dim), env indices (n,)) -> actions (n, n_action_steps, action_dim)
ActFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Decision:
    env_index: np.ndarray  # (n,) envs that were still running
    obs_history: np.ndarray  # (n, n_obs_steps, obs_dim) what the policy saw
    reward: np.ndarray  # (n,) reward (see run_episodes' `reward`) summed over the executed actions
    terminated: np.ndarray  # (n,) the episode ended in a terminal state during this chunk
    truncated: np.ndarray  # (n,) the episode hit its time limit during this chunk
    next_obs_history: np.ndarray  # (n, n_obs_steps, obs_dim) after the chunk


@dataclass
class Episodes:
    seeds: list[int]
    returns: np.ndarray
    lengths: np.ndarray
    successes: np.ndarray
    score_final: np.ndarray | None = None  # info[score_key] at the episode's last step
    score_max: np.ndarray | None = None  # its maximum over the episode
    decisions: list[Decision] = field(default_factory=list)
    frames: dict[int, list[np.ndarray]] = field(default_factory=dict)  # env index -> rgb frames

    def summary(self, score_name: str | None = None) -> dict[str, float]:
        summary = {
            "success_rate": float(self.successes.mean()),
            # binomial standard error of the success rate: how far apart two evaluations must be to differ
            "success_rate_stderr": float(np.sqrt(self.successes.mean() * (1 - self.successes.mean()) / len(self.seeds))),
            "return_mean": float(self.returns.mean()),
            "return_std": float(self.returns.std()),
            "episode_length_mean": float(self.lengths.mean()),
            "num_episodes": len(self.seeds),
        }
        if score_name and self.score_final is not None:
            summary[f"{score_name}_mean"] = float(self.score_final.mean())
            summary[f"{score_name}_max_mean"] = float(self.score_max.mean())
        return summary


def _info_value(info: dict, key: str, index: int, default):
    if key in info and info.get(f"_{key}", np.ones(index + 1, bool))[index]:
        return info[key][index]
    return default


def run_episodes(
    vector_env,
    act: ActFunction,
    seeds: list[int],
    n_obs_steps: int,
    n_action_steps: int,
    success_key: str,
    score_key: str | None = None,
    record_envs: tuple[int, ...] = (),
    progress: bool = False,
    reward: str = "env",
    success_bonus: float = 0.0,
) -> Episodes:
    """One episode in each of the first len(seeds) envs (env i reset with seeds[i]); extra envs idle.

    `reward` is what the decisions record (episode returns always report the env's reward):
    "env" the env's reward; "success" 1 at the step the task is first solved (summing to the
    episode's success); "score" the step's increase of info[score_key], counted from its value at
    reset when the env reports one there (summing to the final score minus the reset's).
    `success_bonus` is added to the decision during which the task is first solved.
    """
    if reward not in ("env", "success", "score") or (reward == "score" and score_key is None):
        raise ConfigError(f"reward {reward!r} needs one of env / success / score (score needs env.score_key)")
    num_envs = vector_env.num_envs
    count = len(seeds)
    if not 1 <= count <= num_envs:
        raise ValueError(f"{count} seeds for {num_envs} envs")
    all_seeds = list(seeds) + [int(seeds[-1]) + 1 + i for i in range(num_envs - count)]
    observation, info = vector_env.reset(seed=all_seeds)
    action_space = vector_env.single_action_space
    idle_action = ((action_space.low + action_space.high) / 2).astype(action_space.dtype)
    history = np.repeat(observation[:, None], n_obs_steps, axis=1)
    running = np.arange(num_envs) < count
    returns, lengths = np.zeros(num_envs), np.zeros(num_envs, dtype=np.int64)
    successes = np.zeros(num_envs, dtype=bool)
    score_final, score_max = np.zeros(num_envs), np.full(num_envs, -np.inf)
    previous_score = np.array([float(_info_value(info, score_key, i, 0.0)) if score_key else 0.0 for i in range(num_envs)])
    frames = {i: [vector_env.envs[i].render()] for i in record_envs if i < count}
    decisions = []
    bar = tqdm(desc="episodes", total=count, disable=not progress, leave=False)
    while running.any():
        index = np.flatnonzero(running)
        before = history[index].copy()
        chunk = np.asarray(act(before, index))
        expected = (len(index), n_action_steps, action_space.shape[0])
        if chunk.shape != expected:
            raise ValueError(f"the policy returned actions of shape {chunk.shape}, expected {expected}")
        gained, terminated, truncated = np.zeros(len(index)), np.zeros(len(index), bool), np.zeros(len(index), bool)
        alive = running.copy()
        for j in range(n_action_steps):
            actions = np.broadcast_to(idle_action, (num_envs, *idle_action.shape)).copy()
            actions[index] = np.clip(chunk[:, j], action_space.low, action_space.high)
            observation, step_reward, step_terminated, step_truncated, info = vector_env.step(actions)
            for k, i in enumerate(index):
                if not alive[i]:
                    continue  # ended earlier in this chunk; its env has moved on to a reset
                if not np.isfinite(step_reward[i]):
                    raise RewardError(f"env {i} (seed {all_seeds[i]}) returned reward {step_reward[i]}")
                returns[i] += step_reward[i]
                lengths[i] += 1
                history[i] = np.concatenate([history[i, 1:], observation[i : i + 1]])
                solved = bool(_info_value(info, success_key, i, False))
                first_solve = solved and not successes[i]
                if reward == "success":
                    gained[k] += float(first_solve)
                if first_solve:
                    gained[k] += success_bonus
                successes[i] |= solved
                if score_key is not None:
                    score = float(_info_value(info, score_key, i, 0.0))
                    score_final[i], score_max[i] = score, max(score_max[i], score)
                    if reward == "score":
                        gained[k] += score - previous_score[i]
                        previous_score[i] = score
                if reward == "env":
                    gained[k] += step_reward[i]
                if i in frames:
                    frames[i].append(vector_env.envs[i].render())
                if step_terminated[i] or step_truncated[i]:
                    alive[i] = False
                    terminated[k], truncated[k] = bool(step_terminated[i]), bool(step_truncated[i]) and not step_terminated[i]
            if not alive[index].any():
                break
        decisions.append(Decision(index, before, gained, terminated, truncated, history[index].copy()))
        bar.update(int(running.sum() - alive.sum()))
        running = alive
    bar.close()
    keep = slice(0, count)
    return Episodes(
        seeds=list(seeds), returns=returns[keep], lengths=lengths[keep], successes=successes[keep],
        score_final=score_final[keep] if score_key else None, score_max=score_max[keep] if score_key else None,
        decisions=decisions, frames=frames,
    )


def save_video(frames: list[np.ndarray], path, fps: int) -> None:
    """GIF or MP4 (by the file's suffix) through imageio (MP4 needs imageio-ffmpeg)."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0)
    else:
        iio.imwrite(path, np.stack(frames), fps=fps, codec="libx264")
