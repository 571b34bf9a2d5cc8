"""A robot-side control loop for an exported policy: numpy + onnxruntime + the env, no torch, no genrl.

    python control_loop.py EXPORT_DIR        (EXPORT_DIR made by `genrl export`; here PointMaze stands in for the robot)
"""
import json
import sys

import gymnasium as gym
import gymnasium_robotics
import numpy as np

sys.path.insert(0, sys.argv[1])  # the export directory carries its own runtime
from policy_runtime import PolicyRuntime  # noqa: E402

policy = PolicyRuntime(sys.argv[1], seed=0, threads=2)
manifest = policy.manifest
gym.register_envs(gymnasium_robotics)
env = gym.make(manifest["env"]["id"], **manifest["env"]["kwargs"])
observation, info = env.reset(seed=0)
policy.reset()
for step in range(env.spec.max_episode_steps):  # on a robot: one iteration per tick at manifest["control_rate_hz"]
    flat = np.concatenate([observation[key] for key in manifest["observation"]["keys"]])
    observation, reward, terminated, truncated, info = env.step(policy.act(flat))
    if terminated or truncated or info.get(manifest["env"]["success_key"]):
        break
print(json.dumps({"steps": step + 1, "success": bool(info.get(manifest["env"]["success_key"]))}))
