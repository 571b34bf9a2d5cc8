"""`genrl collect CONFIG` (configs/collect/): run a scripted expert for N seeded episodes and write a dataset.

Episode i resets the env with `collect.seed + i`; every step's observation (before the
action), action and reward are recorded. The dataset (genrl/data/demonstrations.py) carries
the env, the expert and the resolved config, and the expert's own success rate and score are
printed and stored, so the quality of the demonstrations is a measured fact.
"""

from __future__ import annotations

import numpy as np
import yaml
from tqdm.auto import tqdm

from genrl.config import CollectConfig
from genrl.data.demonstrations import DemonstrationWriter
from genrl.envs import make_env
from genrl.envs.experts import make_expert


def run(config: CollectConfig) -> dict:
    env_config, collect_config = config.env, config.collect
    writer = DemonstrationWriter(config.dataset.path)  # refuses an existing path before any work
    env = make_env(env_config)
    expert = make_expert(collect_config.expert, env, np.random.default_rng(collect_config.seed), **collect_config.expert_kwargs)
    successes, returns, lengths, scores = [], [], [], []
    bar = tqdm(range(collect_config.num_episodes), desc=f"collect {env_config.id}")
    for episode in bar:
        seed = collect_config.seed + episode
        observation, info = env.reset(seed=seed)
        expert.reset()
        observations, actions, rewards, success, score = [], [], [], False, None
        while True:
            action = expert.act()
            observations.append(observation)
            actions.append(action)
            observation, reward, terminated, truncated, info = env.step(action)
            rewards.append(reward)
            success |= bool(info.get(env_config.success_key, False))
            if env_config.score_key is not None:
                score = float(info.get(env_config.score_key, 0.0))
            if terminated or truncated:
                break
        successes.append(success)
        returns.append(float(np.sum(rewards)))
        lengths.append(len(actions))
        scores.append(score)
        if success or not collect_config.only_successful:
            writer.add_episode(observations, actions, rewards, success, seed, score)
        bar.set_postfix(success=f"{np.mean(successes):.2f}")
    env.close()
    summary = {
        "expert_success_rate": float(np.mean(successes)),
        "expert_return_mean": float(np.mean(returns)),
        "expert_episode_length_mean": float(np.mean(lengths)),
        "episodes_collected": collect_config.num_episodes,
        "episodes_kept": len(writer.episodes),
        "steps_kept": int(sum(len(e["action"]) for e in writer.episodes)),
    }
    if env_config.score_key is not None:
        summary[f"expert_{env_config.score_key}_mean"] = float(np.mean(scores))
    attrs = {
        "env": env_config.model_dump(mode="json"),
        "expert": collect_config.expert,
        "expert_kwargs": collect_config.expert_kwargs,
        "obs_dim": int(env.observation_space.shape[0]),
        "action_dim": int(env.action_space.shape[0]),
        "summary": summary,
        "config": yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
    }
    summary["dataset"] = str(writer.close(attrs))
    return summary
