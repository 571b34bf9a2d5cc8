"""Environments behind one small adapter: gymnasium's make, plus a flat float32 observation.

PointMaze (gymnasium-robotics), PushT (gym-pusht) and a user's own gymnasium env are built the
same way, from an `EnvConfig`: `gym.make(id, **kwargs)`; a dict observation is cut down to
`obs_keys` and concatenated in that order; the result must be a flat Box. Success is read
from `info[success_key]`, an optional score (PushT's coverage) from `info[score_key]`.
"""

from __future__ import annotations

import contextlib
import io
import os
from functools import partial

import gymnasium as gym
import numpy as np

from genrl.errors import ConfigError

# MuJoCo renders headless through EGL (no display on servers and CI); set before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

_REGISTERED = False


def register_known_envs() -> None:
    """Register the env packages genrl knows (PointMaze, PushT) with gymnasium, once."""
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        # Its import prints a notice about Adroit envs to stderr; keep genrl's stderr to its own messages.
        with contextlib.redirect_stderr(io.StringIO()):
            import gymnasium_robotics
        gym.register_envs(gymnasium_robotics)
    except ImportError:
        pass  # the `robot` extra is not installed; gym.make names the missing id
    try:
        import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0 on import)
    except ImportError:
        pass
    _REGISTERED = True


class ConcatObservation(gym.ObservationWrapper):
    """A dict observation as one float32 vector: `keys`, concatenated in the given order."""

    def __init__(self, env: gym.Env, keys: list[str]):
        super().__init__(env)
        spaces = env.observation_space
        if not isinstance(spaces, gym.spaces.Dict):
            raise ConfigError(f"env.obs_keys is set, but {env.spec.id} has a {type(spaces).__name__} observation, not a dict")
        missing = [key for key in keys if key not in spaces.spaces]
        if missing:
            raise ConfigError(f"env.obs_keys {missing} are not in {env.spec.id}'s observation (it has {list(spaces.spaces)})")
        self.keys = list(keys)
        low = np.concatenate([np.broadcast_to(spaces[k].low, spaces[k].shape).ravel() for k in keys])
        high = np.concatenate([np.broadcast_to(spaces[k].high, spaces[k].shape).ravel() for k in keys])
        self.observation_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)

    def observation(self, observation: dict) -> np.ndarray:
        return np.concatenate([np.asarray(observation[k], dtype=np.float32).ravel() for k in self.keys])


class Float32Observation(gym.ObservationWrapper):
    """A flat Box observation as float32 (what the policy consumes)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)

    def observation(self, observation) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)


class PushTCoverageAtReset(gym.Wrapper):
    """gym-pusht reports `coverage` only from step(); this adds it to reset()'s info too, so a
    score-gain reward can start from the coverage the reset itself left (mean 0.06, up to 0.5):
    no action caused it, and paying it to the first decision is noise in its advantage."""

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        info = dict(info, coverage=float(self.env.unwrapped._get_coverage()))
        return observation, info


def make_env(config, render: bool = False) -> gym.Env:
    """One environment from an `EnvConfig`; `render=True` adds render_mode='rgb_array'."""
    register_known_envs()
    kwargs = dict(config.kwargs)
    if render:
        kwargs.update(render_mode="rgb_array", **config.render_kwargs)
    if config.max_episode_steps is not None:
        kwargs["max_episode_steps"] = config.max_episode_steps
    try:
        env = gym.make(config.id, **kwargs)
    except gym.error.Error as error:
        raise ConfigError(f"env.id {config.id!r}: {str(error).splitlines()[0]}") from None
    except ModuleNotFoundError as error:
        raise ConfigError(f"env.id {config.id!r}: {error} (install genrl's `robot` extra, or your env's package)") from None
    except TypeError as error:
        raise ConfigError(f"env.kwargs for {config.id!r}: {error}") from None
    if config.id.startswith("gym_pusht/") and hasattr(env.unwrapped, "_get_coverage"):
        env = PushTCoverageAtReset(env)
    if config.obs_keys:
        env = ConcatObservation(env, config.obs_keys)
    space = env.observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ConfigError(f"env {config.id!r} observation {space} is not a flat vector; set env.obs_keys for dict observations")
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ConfigError(f"env {config.id!r} has a {type(env.action_space).__name__} action space; diffusion policies need a Box")
    return Float32Observation(env)


def make_vector_env(config, num_envs: int, render: bool = False) -> gym.vector.SyncVectorEnv:
    """`num_envs` copies stepped in lock-step (gymnasium's SyncVectorEnv; these envs are fast
    enough that subprocesses would cost more than they save on a few cores)."""
    make_env(config).close()  # fail on a bad config here, with our message, not inside the vector env
    return gym.vector.SyncVectorEnv([partial(make_env, config, render) for _ in range(num_envs)])


def env_dims(config) -> tuple[int, int]:
    """(observation size, action size) of the configured env."""
    env = make_env(config)
    try:
        return env.observation_space.shape[0], env.action_space.shape[0]
    finally:
        env.close()
