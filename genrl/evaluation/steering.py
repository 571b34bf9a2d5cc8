"""Evaluate a Diffusion Policy steered by a user's input (ITPS) in PointMaze: task success, how closely
the ball followed the input, and how often it hit a wall.

Each episode gets its own sketch, made before the episode from its reset (the same seed gives the same
start, goal and sketch for every method): `sketch.kind: detour` draws a path through another corridor
(genrl/guidance/sketch.py), `points` uses the configured points for every episode. The ball's path and
its wall contacts are recorded step by step by `MazeTrace`; a wall contact is a MuJoCo contact between
the ball and a wall block (touching the floor is not one).
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from genrl.envs import make_env, run_episodes
from genrl.errors import ConfigError
from genrl.evaluation.episodes import check_policy_fits_env, timed
from genrl.guidance.alignment import PointMassDynamics, SketchFollower, path_alignment, sketch_cost
from genrl.guidance.itps import Steering, steer
from genrl.guidance.maze_picture import draw_maze_rollouts
from genrl.guidance.sketch import check_in_free_space, densify, detour_sketch


class MazeTrace(gym.Wrapper):
    """Records the ball's position and whether it touches a wall at every step, per episode, under the
    seed the episode was reset with (`episode(seed)`); vector autoresets (no seed) are not kept."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if not hasattr(env.unwrapped, "maze") or not hasattr(env.unwrapped, "point_env"):
            raise ConfigError(f"ITPS steering needs a gymnasium-robotics PointMaze env (its cost maps forces to ball "
                              f"positions), not {env.spec.id!r}")
        import mujoco

        model = env.unwrapped.point_env.model
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, i) or "" for i in range(model.ngeom)]
        self._walls = {i for i, name in enumerate(names) if name.startswith("block")}
        self._by_seed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._seed, self._positions, self._contacts = None, [], []

    def _record(self) -> None:
        data = self.env.unwrapped.point_env.data
        self._positions.append(data.qpos[:2].copy())
        self._contacts.append(any(c.geom1 in self._walls or c.geom2 in self._walls for c in data.contact[: data.ncon]))

    def _keep(self) -> None:
        if self._seed is not None:
            self._by_seed[self._seed] = (np.array(self._positions), np.array(self._contacts[1:]))

    def reset(self, **kwargs):
        self._keep()
        result = self.env.reset(**kwargs)
        self._seed, self._positions, self._contacts = kwargs.get("seed"), [], []
        self._record()
        return result

    def step(self, action):
        result = self.env.step(action)
        self._record()
        if result[2] or result[3]:  # the episode is over: keep it, and ignore steps until the next reset
            self._keep()
            self._seed = None
        return result

    def episode(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions (T + 1, 2), wall contact flags (T,)) of the episode reset with `seed` (finished or running)."""
        if seed == self._seed:
            return np.array(self._positions), np.array(self._contacts[1:])
        return self._by_seed[seed]


def episode_sketch(env_config, seed: int, sketch_config, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """(drawn points (N, 2), dense sketch (M, 2)) for the episode reset with `seed`, checked against the maze."""
    env = make_env(env_config)
    try:
        env.reset(seed=seed)
        unwrapped = env.unwrapped
        if not hasattr(unwrapped, "maze"):
            raise ConfigError(f"ITPS sketches need a PointMaze env, not {env_config.id!r}")
        if sketch_config.kind == "detour":
            start = unwrapped.point_env.data.qpos[:2].copy()
            rng = np.random.default_rng(seed)
            points = detour_sketch(unwrapped.maze, start, unwrapped.goal, rng, sketch_config.min_extra_cells,
                                   sketch_config.max_extra_cells)
        else:
            points = np.asarray(sketch_config.points, dtype=np.float64)
        dense = densify(points, spacing)
        check_in_free_space(dense, unwrapped.maze)
        return points, dense
    finally:
        env.close()


def steered_actor(policy, sampler, steering: Steering, follower: SketchFollower, dynamics: PointMassDynamics,
                  generator: torch.Generator):
    """The `act` function of run_episodes: each decision's cost is built from the ball's current state and
    the env's sketch window, then the chunk is sampled by the steering method."""
    start = policy.n_obs_steps - 1

    def act(obs_history: np.ndarray, env_index: np.ndarray) -> np.ndarray:
        now = obs_history[:, -1]
        follower.update(env_index, now[:, :2])
        window, carrot = follower.targets(env_index)
        position, velocity = (torch.from_numpy(now[:, :2]).to(policy.device), torch.from_numpy(now[:, 2:4]).to(policy.device))

        def cost(chunk: torch.Tensor) -> torch.Tensor:
            actions = policy.normalizer.action.unnormalize(chunk[:, start:]).clamp(-1.0, 1.0)  # the env clips too
            return sketch_cost(dynamics.positions(position, velocity, actions), window, carrot)

        condition = policy.condition(torch.from_numpy(obs_history))
        chunk = steer(steering, sampler, policy.denoiser, condition, (len(env_index), *policy.sample_shape), cost, generator)
        return policy.executed_actions(chunk).cpu().numpy()

    return act


def evaluate_steered_policy(policy, env_config, eval_config, sampler, guidance, output_dir: Path | None = None,
                            progress: bool = True, dynamics: PointMassDynamics | None = None,
                            chunk_seconds: list[float] | None = None) -> dict:
    """Success, alignment to each episode's sketch and wall contacts over `eval_config.num_episodes`
    seeded episodes; returns the summary and, under "episodes", each episode's sketch and path.
    A list passed as `chunk_seconds` receives the wall time of every steered policy call."""
    steering = Steering(method=guidance.method, scale=guidance.scale, num_candidates=guidance.num_candidates,
                        perturb_steps=guidance.perturb_steps, init_fraction=guidance.init_fraction, mcmc_steps=guidance.mcmc_steps)
    dynamics = dynamics or PointMassDynamics()
    seeds = [eval_config.seed + i for i in range(eval_config.num_episodes)]
    sketches = [episode_sketch(env_config, seed, guidance.sketch, guidance.sketch.spacing) for seed in seeds]
    num_envs = min(eval_config.num_envs, len(seeds))
    vector_env = gym.vector.SyncVectorEnv([lambda: MazeTrace(make_env(env_config)) for _ in range(num_envs)])
    check_policy_fits_env(policy, vector_env, env_config.id)
    generator = torch.Generator(policy.device).manual_seed(eval_config.seed)
    records = []
    for wave in range(0, len(seeds), num_envs):
        wave_seeds = seeds[wave : wave + num_envs]
        follower = SketchFollower([dense for _, dense in sketches[wave : wave + num_envs]], guidance.sketch.lookahead,
                                  guidance.sketch.spacing)
        act = timed(steered_actor(policy, sampler, steering, follower, dynamics, generator), chunk_seconds)
        episodes = run_episodes(vector_env, act, wave_seeds, policy.n_obs_steps, policy.n_action_steps,
                                env_config.success_key, progress=progress)
        for i, seed in enumerate(wave_seeds):
            path, contacts = vector_env.envs[i].episode(seed)
            drawn, dense = sketches[wave + i]
            records.append({"seed": seed, "success": bool(episodes.successes[i]), "length": int(episodes.lengths[i]),
                            "wall_contact_rate": float(contacts.mean()) if len(contacts) else 0.0,
                            "hit_wall": bool(contacts.any()), **path_alignment(path, dense),
                            "sketch": drawn.tolist(), "path": path[:: 2].round(3).tolist()})
    vector_env.close()
    summary = _summarise(records, steering)
    if output_dir is not None:
        draw_maze_rollouts(env_config, records[:6], Path(output_dir) / "samples" / "steered_rollouts.png",
                           title=f"{steering.method} (scale {steering.scale:g})")
    return {**summary, "episodes": records}


def _summarise(records: list[dict], steering: Steering) -> dict:
    def mean_and_error(key):
        values = np.array([r[key] for r in records], dtype=np.float64)
        return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0

    summary = {"method": steering.method, "scale": steering.scale, "num_episodes": len(records)}
    for key in ("success", "alignment_distance", "sketch_covered", "wall_contact_rate", "hit_wall"):
        summary[f"{key}_mean"], summary[f"{key}_stderr"] = mean_and_error(key)
    return summary
