"""Record demonstrations of your own env into a genrl dataset (Diffusion Policy's zarr layout).

    PYTHONPATH=docs/examples python docs/examples/record_demos.py data/reach.zarr

Here a scripted controller (head for the target) is the demonstrator; on a robot, the teleoperated
episodes go through the same three calls: DemonstrationWriter(path), add_episode(...), close(attrs).
"""

import sys

import gymnasium as gym
import numpy as np

import my_env  # noqa: F401  (registers Reach-v0)
from genrl.data.demonstrations import DemonstrationWriter

path = sys.argv[1]
env = gym.make("Reach-v0")
writer = DemonstrationWriter(path)
for seed in range(100):
    observation, info = env.reset(seed=seed)
    observations, actions, rewards = [], [], []
    for _ in range(100):
        action = np.clip(20.0 * (observation[2:] - observation[:2]), -1.0, 1.0)
        observations.append(observation)
        actions.append(action)
        observation, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    writer.add_episode(observations, actions, rewards, success=info["success"], seed=seed)
# the env the data came from, as genrl's env config: `genrl pretrain` checks the policy's env against it
writer.close({"env": {"id": "my_env:Reach-v0", "kwargs": {}, "obs_keys": None}, "expert": "head for the target",
              "obs_dim": 4, "action_dim": 2})
print(f"wrote {path}: {len(writer.episodes)} episodes")
