"""Environments behind the adapter, the scripted experts, seeded vectorised episodes, and the
demonstration datasets `genrl collect` writes."""

import json

import numpy as np
import pytest
import zarr
from conftest import UMAZE, run_cli

from genrl.config import load_config
from genrl.data.demonstrations import load_demonstrations, window_indices
from genrl.envs import make_env, make_vector_env, run_episodes
from genrl.envs.experts import make_expert
from genrl.envs.pointmaze_expert import shortest_cell_path
from genrl.errors import CheckpointError, ConfigError

PUSHT = "configs/collect/pusht.yaml"


def env_config(path=UMAZE, *overrides):
    return load_config("collect", path, list(overrides)).env


# ------------------------------------------------------------------ the adapter
def test_pointmaze_and_pusht_become_flat_float32_observations():
    maze = make_env(env_config())
    observation, _ = maze.reset(seed=3)
    raw = maze.unwrapped  # [x, y, vx, vy] then the goal, in obs_keys order
    assert observation.shape == (6,) and observation.dtype == np.float32
    np.testing.assert_allclose(observation[4:], raw.goal, rtol=1e-6)
    pusht = make_env(env_config(PUSHT))
    observation, _ = pusht.reset(seed=3)
    assert observation.shape == (18,) and observation.dtype == np.float32  # agent xy + 8 keypoints
    np.testing.assert_allclose(observation[:2], np.array(pusht.unwrapped.agent.position), rtol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    (["env.id=PointMaze_Nowhere-v3"], "PointMaze_Nowhere-v3"),
    (["env.obs_keys=[observation,velocity]"], "['velocity'] are not in"),
    (["env.obs_keys=null"], "set env.obs_keys"),
    (["env.kwargs={bogus_argument: 1}"], "env.kwargs"),
])
def test_bad_env_configs_name_the_culprit(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_env(env_config(UMAZE, *overrides))


def test_episodes_are_seeded_and_record_every_decision():
    """Same seeds, same episodes; the per-decision rewards add up to the returns; fewer seeds
    than envs leaves the extra envs idle."""
    config = env_config()
    vector_env = make_vector_env(config, 3)
    expert_envs = [make_env(config) for _ in range(3)]

    def act(obs_history, env_index):  # a policy that pushes toward the goal, in chunks of 4
        direction = obs_history[:, -1, 4:6] - obs_history[:, -1, 0:2]
        return np.repeat(np.clip(direction, -1, 1)[:, None], 4, axis=1)

    first = run_episodes(vector_env, act, [11, 12], n_obs_steps=2, n_action_steps=4, success_key="success")
    again = run_episodes(vector_env, act, [11, 12], n_obs_steps=2, n_action_steps=4, success_key="success")
    assert len(first.returns) == 2
    np.testing.assert_array_equal(first.lengths, again.lengths)
    np.testing.assert_array_equal(first.returns, again.returns)
    per_env = np.zeros(2)
    for decision in first.decisions:
        np.add.at(per_env, decision.env_index, decision.reward)
        assert decision.obs_history.shape == (len(decision.env_index), 2, 6)
    np.testing.assert_allclose(per_env, first.returns)
    # an episode ends at its last decision: every env's final decision is terminal or truncated
    for env in range(2):
        last = [d for d in first.decisions if env in d.env_index][-1]
        k = list(last.env_index).index(env)
        assert last.terminated[k] or last.truncated[k]
    for env in expert_envs:
        env.close()


def test_score_reward_counts_from_the_score_at_reset():
    config = env_config(PUSHT)
    vector_env = make_vector_env(config, 2)
    _, info = vector_env.reset(seed=[5, 6])
    at_reset = np.asarray(info["coverage"])
    assert at_reset[0] == 0.0 and at_reset[1] > 0.2  # seed 6 starts with the block partly on the goal
    rng = np.random.default_rng(0)

    def act(obs_history, env_index):
        return rng.uniform(100, 400, size=(len(env_index), 8, 2)).astype(np.float32)

    episodes = run_episodes(vector_env, act, [5, 6], 2, 8, "is_success", "coverage", reward="score")
    per_env = np.zeros(2)
    for decision in episodes.decisions:
        np.add.at(per_env, decision.env_index, decision.reward)
    # no action caused the coverage at reset: an episode is worth what it added to it
    np.testing.assert_allclose(per_env, episodes.score_final - at_reset, atol=1e-9)
    # The score after each decision is the running sum of the rewards; score_max is the largest
    # score at any step, so at least the largest of those.
    running, best = at_reset.copy(), np.full(2, -np.inf)
    for decision in episodes.decisions:
        np.add.at(running, decision.env_index, decision.reward)
        best[decision.env_index] = np.maximum(best[decision.env_index], running[decision.env_index])
    assert np.all(episodes.score_max >= best - 1e-9)


def test_success_bonus_is_paid_once_at_the_solving_decision():
    vector_env = make_vector_env(env_config(UMAZE, "env.id=toy_envs:Bandit-v0", "env.success_key=success", "env.obs_keys=[]", "env.kwargs={}", "env.max_episode_steps=null"), 4)

    def act(obs_history, env_index):  # envs 0 and 2 solve the bandit, 1 and 3 do not
        chunk = np.zeros((len(env_index), 1, 2), np.float32)
        chunk[:, 0, 0] = np.where(np.asarray(env_index) % 2 == 0, 0.9, -0.9)
        return chunk

    episodes = run_episodes(vector_env, act, [0, 1, 2, 3], 1, 1, "success", reward="env", success_bonus=10.0)
    rewards = np.concatenate([d.reward for d in episodes.decisions])
    np.testing.assert_allclose(rewards, [11.0, 0.0, 11.0, 0.0])
    np.testing.assert_allclose(episodes.returns, [1.0, 0.0, 1.0, 0.0])  # returns stay the env's own


# ------------------------------------------------------------------ experts
def test_grid_planner_finds_the_shortest_path():
    free = {(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)}  # the U-maze's free cells
    assert shortest_cell_path(free, (1, 1), (3, 1)) == [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)]
    with pytest.raises(ValueError):
        shortest_cell_path(free, (1, 1), (0, 0))


@pytest.mark.parametrize("path, expert, seeds, needed", [
    (UMAZE, "pointmaze_planner", [0, 1, 2, 3], 4),
    ("configs/collect/pointmaze_medium.yaml", "pointmaze_planner", [0, 1], 2),
    (PUSHT, "pusht_pusher", [0, 3, 5], 2),  # measured: 82.5% of 200 episodes (README)
])
def test_scripted_experts_solve_their_tasks(path, expert, seeds, needed):
    config = env_config(path)
    env = make_env(config)
    agent = make_expert(expert, env, np.random.default_rng(0))
    solved = 0
    for seed in seeds:
        env.reset(seed=seed)
        agent.reset()
        while True:
            _, _, terminated, truncated, info = env.step(agent.act())
            if terminated or truncated:
                break
        solved += bool(info[config.success_key])
    assert solved >= needed


def test_expert_that_does_not_fit_the_env_is_refused():
    with pytest.raises(ConfigError, match="pusht_pusher"):
        make_expert("pusht_pusher", make_env(env_config()), np.random.default_rng(0))


# ------------------------------------------------------------------ datasets
def test_collect_writes_the_diffusion_policy_zarr_layout(umaze_demos):
    root = zarr.open_group(str(umaze_demos), mode="r")
    assert set(root["data"].array_keys()) == {"obs", "action", "reward"}
    assert {"episode_ends", "episode_success", "episode_seed"} <= set(root["meta"].array_keys())
    demos = load_demonstrations(umaze_demos)
    assert demos.num_episodes == 4 and demos.episode_ends[-1] == len(demos.action) == len(demos.obs)
    assert demos.attrs["env"]["id"] == "PointMaze_UMaze-v3" and demos.attrs["obs_dim"] == 6
    assert demos.episode_success.all()  # the planner solves U-maze
    # Each episode's first observation is what the env gives on reset with the recorded seed.
    env = make_env(env_config())
    for (start, _), seed in zip(demos.episode_bounds(), demos.episode_seed):
        first, _ = env.reset(seed=int(seed))
        np.testing.assert_allclose(demos.obs[start], first, rtol=1e-6)
    # A weaker behaviour-cloning start trains on the first episodes only.
    first_two = demos.first_episodes(2)
    assert first_two.num_episodes == 2 and len(first_two.action) == demos.episode_ends[1]
    np.testing.assert_array_equal(first_two.obs, demos.obs[: demos.episode_ends[1]])
    with pytest.raises(ConfigError, match="max_episodes 5"):
        demos.first_episodes(5)


def test_collect_refuses_to_overwrite_and_datasets_must_hold_episodes(umaze_demos, tmp_path, capsys):
    assert run_cli("collect", UMAZE, f"dataset.path={umaze_demos}", "collect.num_episodes=1") == 2
    assert "already exists" in capsys.readouterr().err
    assert load_demonstrations(umaze_demos).num_episodes == 4  # untouched
    empty = tmp_path / "empty.zarr"
    root = zarr.open_group(str(empty), mode="w", zarr_format=2)
    root.create_group("data").create_array("obs", shape=(0, 6), dtype="float32")
    root["data"].create_array("action", shape=(0, 2), dtype="float32")
    root.create_group("meta").create_array("episode_ends", shape=(0,), dtype="int64")
    with pytest.raises(CheckpointError, match="has no episodes"):
        load_demonstrations(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_demonstrations(tmp_path / "missing.zarr")
    (tmp_path / "not.zarr").mkdir()
    with pytest.raises(CheckpointError, match="not a demonstration dataset"):
        load_demonstrations(tmp_path / "not.zarr")


def test_training_windows_pad_with_the_episode_edges():
    windows = window_indices([(0, 5), (5, 9)], horizon=4, n_obs_steps=2, n_action_steps=2)
    # First window of episode 0 starts one step before it (padded with step 0) ...
    assert windows[0].tolist() == [0, 0, 1, 2]
    # ... the last may run n_action_steps - 1 = 1 step past its end (padded with step 4).
    assert windows[[w[0] <= 4 and w[-1] <= 4 for w in windows]][-1].tolist() == [2, 3, 4, 4]
    assert all(w.min() >= 5 for w in windows if w.max() > 4)  # windows never mix episodes


def test_collect_summary_reports_the_expert(tmp_path, capsys):
    path = tmp_path / "pusht.zarr"
    assert run_cli("collect", PUSHT, f"dataset.path={path}", "collect.num_episodes=1", "collect.only_successful=false") == 0
    out = capsys.readouterr().out
    assert "expert_success_rate" in out and "expert_coverage_mean" in out and f"dataset: {path}" in out
    demos = load_demonstrations(path)
    assert demos.obs.shape[1] == 18
    # The kept episode's final coverage, the one the summary averages.
    np.testing.assert_allclose(demos.episode_score, [demos.attrs["summary"]["expert_coverage_mean"]], rtol=1e-6)
    assert json.loads(json.dumps(demos.attrs["summary"]))["episodes_kept"] == 1


@pytest.mark.parametrize("suffix", ["gif", "mp4"])
def test_rollout_videos_are_written_as_gif_or_mp4(suffix, tmp_path):
    import imageio.v3 as iio

    from genrl.envs import save_video

    env = make_env(env_config(PUSHT, "env.render_kwargs={visualization_width: 128, visualization_height: 128}"), render=True)
    env.reset(seed=0)
    frames = [env.render()]
    for _ in range(4):
        env.step(env.action_space.sample())
        frames.append(env.render())
    path = tmp_path / f"episode.{suffix}"
    save_video(frames, path, fps=10)
    video = iio.imread(path)
    assert video.shape[0] == 5 and video.shape[1:3] == (128, 128)
