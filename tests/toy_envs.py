"""A one-step bandit registered with gymnasium, where RL must visibly help: the reward is 1 when
the first action coordinate exceeds 0.5, so a policy spread over [-1, 1] earns it ~25% of the time.
Used as `env.id=toy_envs:Bandit-v0` (gymnasium imports this module first), which also shows a
user's own env plugging into genrl."""

import gymnasium as gym
import numpy as np


class Bandit(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {"success": False}

    def step(self, action):
        solved = bool(action[0] > 0.5)
        return np.zeros(2, np.float32), float(solved), True, False, {"success": solved}


gym.register("Bandit-v0", entry_point=Bandit, max_episode_steps=1)
