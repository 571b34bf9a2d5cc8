"""Environments for action policies: creation from a config, seeded vectorised episodes, experts."""

from genrl.envs.make import env_dims, make_env, make_vector_env, register_known_envs
from genrl.envs.rollout import Episodes, run_episodes, save_video

__all__ = ["Episodes", "env_dims", "make_env", "make_vector_env", "register_known_envs", "run_episodes", "save_video"]
