"""A user's own environment for genrl: a point that must reach a target in the unit square.

genrl takes any gymnasium env with a flat Box observation (or a dict observation and `env.obs_keys`)
and a Box action space. Importing this module registers `Reach-v0`; genrl's configs name it
`my_env:Reach-v0` (gymnasium imports `my_env` first), with this folder on PYTHONPATH.
"""

import gymnasium as gym
import numpy as np


class Reach(gym.Env):
    """Observation [x, y, target_x, target_y]; action a velocity in [-1, 1]^2 (0.05 per step);
    success once the point is within 0.05 of the target. `render_mode="rgb_array"` draws it (genrl's
    evaluation records videos with it)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.point, self.target = self.np_random.uniform(-0.8, 0.8, size=(2, 2))
        return self._observation(), {"success": False}

    def step(self, action):
        self.point = np.clip(self.point + 0.05 * np.clip(action, -1.0, 1.0), -1.0, 1.0)
        success = bool(np.linalg.norm(self.point - self.target) < 0.05)
        return self._observation(), float(success), success, False, {"success": success}

    def render(self):
        frame = np.full((96, 96, 3), 255, dtype=np.uint8)
        for xy, colour in ((self.target, (44, 160, 44)), (self.point, (214, 39, 40))):
            col, row = ((np.asarray(xy) * [1, -1] + 1) / 2 * 95).round().astype(int)
            frame[max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3] = colour
        return frame

    def _observation(self):
        return np.concatenate([self.point, self.target]).astype(np.float32)


gym.register(id="Reach-v0", entry_point=Reach, max_episode_steps=100)
