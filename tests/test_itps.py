"""ITPS: steering a frozen Diffusion Policy toward a user's point or sketch (genrl/guidance/)."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from genrl.envs.pointmaze_expert import free_cells, shortest_cell_path
from genrl.errors import ConfigError
from genrl.guidance.alignment import PointMassDynamics, SketchFollower, path_alignment, sketch_cost
from genrl.guidance.itps import METHODS, Steering, steer
from genrl.guidance.sketch import check_in_free_space, densify, detour_sketch
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.samplers import ConsistencySampler, DDIMSampler, DDPMSampler

MEDIUM = "models/policy-pointmaze-medium"
ITPS_EVAL = "configs/eval/itps_pointmaze_medium.yaml"


@pytest.fixture()
def policy(tiny_policy_dir):
    return DiffusionPolicy.from_pretrained(tiny_policy_dir).eval()


def _target_cost(target: float):
    """A cost on normalised chunks: squared distance of every action to `target` (minimum at target)."""
    return lambda chunk: (chunk - target).square().mean(dim=(1, 2))


def _chunks(policy, sampler, steering, cost, batch=64, seed=0):
    condition = policy.condition(torch.zeros(batch, policy.n_obs_steps, policy.obs_dim))
    generator = torch.Generator().manual_seed(seed)
    return steer(steering, sampler, policy.denoiser, condition, (batch, *policy.sample_shape), cost, generator)


@pytest.mark.parametrize("sampler", [DDPMSampler(20, 20), DDIMSampler(20, 4, eta=1.0)], ids=["ddpm", "ddim"])
def test_guidance_at_scale_zero_is_unsteered_sampling_exactly(policy, sampler):
    cost = _target_cost(0.5)
    unsteered = _chunks(policy, sampler, Steering("unsteered"), cost)
    for method in ("guided", "stochastic"):
        assert torch.equal(_chunks(policy, sampler, Steering(method, scale=0.0, mcmc_steps=0), cost), unsteered), method
    assert torch.equal(_chunks(policy, sampler, Steering("output_perturbation", scale=0.0), cost), unsteered)


def test_every_steering_method_lowers_the_cost_of_what_the_policy_samples(policy):
    sampler = DDPMSampler(20, 20)
    cost = _target_cost(0.8)
    base = cost(_chunks(policy, sampler, Steering("unsteered"), cost)).mean()
    settings = {"output_perturbation": 5.0, "post_hoc_ranking": 0.0, "biased_init": 5.0, "guided": 20.0, "stochastic": 20.0}
    for method, scale in settings.items():
        steered = cost(_chunks(policy, sampler, Steering(method, scale=scale, num_candidates=8, mcmc_steps=2), cost)).mean()
        assert steered < 0.8 * base, (method, float(steered), float(base))


def test_post_hoc_ranking_keeps_the_lowest_cost_candidate(policy):
    targets = torch.tensor([-0.6, -0.3, 0.0, 0.3, 0.6]).reshape(5, 1, 1)  # each row has its own cost, as each env does
    sampler, n = DDIMSampler(20, 4, eta=1.0), 6
    cost = lambda chunk: (chunk - targets).square().mean(dim=(1, 2))  # noqa: E731
    chosen = _chunks(policy, sampler, Steering("post_hoc_ranking", num_candidates=n), cost, batch=5)
    condition = policy.condition(torch.zeros(5 * n, policy.n_obs_steps, policy.obs_dim))
    candidates = sampler.sample(policy.denoiser, condition, (5 * n, *policy.sample_shape),
                                generator=torch.Generator().manual_seed(0)).sample.reshape(5, n, *policy.sample_shape)
    costs = torch.stack([cost(candidates[:, i]) for i in range(n)], dim=1)
    assert torch.allclose(cost(chosen), costs.min(dim=1).values)


def test_point_mass_model_is_recovered_from_data_and_rolls_out_positions():
    rng = np.random.default_rng(0)
    truth = PointMassDynamics(decay=0.9, gain=0.3, dt=0.02)
    obs, actions, ends = [], rng.uniform(-1, 1, (400, 2)), [200, 400]
    for start, end in ((0, 200), (200, 400)):
        position, velocity = rng.normal(size=2), rng.normal(size=2)
        for k in range(start, end):
            obs.append(np.concatenate([position, velocity]))
            velocity = truth.decay * velocity + truth.gain * actions[k]
            position = position + truth.dt * velocity
    fitted = PointMassDynamics.fit(np.array(obs), actions, np.array(ends))
    assert np.allclose([fitted.decay, fitted.gain, fitted.dt], [0.9, 0.3, 0.02], atol=1e-6)
    first = torch.from_numpy(np.array(obs[:1]))
    positions = truth.positions(first[:, :2], first[:, 2:], torch.from_numpy(actions[None, :5]))
    assert np.allclose(positions[0].numpy(), np.array(obs[1:6])[:, :2])


def test_sketch_cost_and_alignment_measure_distance_to_the_path():
    sketch = densify([[0.0, 0.0], [1.0, 0.0]], spacing=0.1)
    assert len(sketch) == 11 and np.allclose(np.diff(sketch[:, 0]), 0.1)
    assert path_alignment(sketch, sketch) == {"alignment_distance": 0.0, "sketch_covered": 1.0}
    far = path_alignment(sketch + [0.0, 0.5], sketch)
    assert far["alignment_distance"] == pytest.approx(0.5) and far["sketch_covered"] == 0.0
    follower = SketchFollower([sketch], lookahead=0.3, spacing=0.1)
    follower.update(np.array([0]), np.array([[0.42, 0.05]]))
    window, carrot = follower.targets(np.array([0]))
    assert follower.progress[0] == 3  # limited to the lookahead from where it was (0.0 -> at most 0.3)
    assert torch.allclose(carrot, torch.tensor([[0.6, 0.0]]))
    on_path = torch.tensor([[[0.4, 0.0], [0.5, 0.0], [0.6, 0.0]]])
    assert sketch_cost(on_path, window, carrot).item() == pytest.approx(0.0, abs=1e-10)
    assert sketch_cost(on_path + torch.tensor([0.0, 0.2]), window, carrot).item() > 0.07


def test_detour_sketch_is_a_longer_free_path_from_ball_to_goal():
    import gymnasium as gym

    from genrl.envs import register_known_envs

    register_known_envs()
    env = gym.make("PointMaze_Medium-v3", continuing_task=False)
    env.reset(seed=3)
    maze, start, goal = env.unwrapped.maze, env.unwrapped.point_env.data.qpos[:2].copy(), env.unwrapped.goal
    sketch = detour_sketch(maze, start, goal, np.random.default_rng(3))
    assert np.allclose(sketch[0], start) and np.allclose(sketch[-1], goal)
    check_in_free_space(densify(sketch), maze)
    cell = lambda xy: tuple(int(v) for v in maze.cell_xy_to_rowcol(xy))
    direct = shortest_cell_path(free_cells(maze.maze_map), cell(start), cell(goal))
    assert len(sketch) - len(direct) >= 2  # at least two cells more than the way the policy was taught
    assert np.array_equal(sketch, detour_sketch(maze, start, goal, np.random.default_rng(3)))
    with pytest.raises(ConfigError, match="inside a wall"):
        check_in_free_space(np.array([[0.0, 0.0], [-3.5, 3.5]]), maze)
    with pytest.raises(ConfigError, match="outside the maze"):
        check_in_free_space(np.array([[9.0, 0.0]]), maze)
    env.close()


def test_steering_config_refuses_bad_values():
    for bad in (-1.0, float("nan")):
        with pytest.raises(ConfigError, match="scale"):
            Steering("guided", scale=bad)
    with pytest.raises(ConfigError, match="method"):
        Steering("teleport")
    with pytest.raises(ConfigError, match="DDPM or DDIM"):
        steer(Steering("guided"), ConsistencySampler(20, 1, t_min=0, sigma_data=0.5), None, {}, (1, 16, 2), _target_cost(0.0))
    assert set(METHODS) == {"unsteered", "output_perturbation", "post_hoc_ranking", "biased_init", "guided", "stochastic"}


def test_genrl_eval_with_guidance_follows_the_sketch_better_than_unsteered(tmp_path):
    summaries = {}
    for method in ("unsteered", "guided"):
        output = tmp_path / method
        code = run_cli("eval", ITPS_EVAL, f"output_dir={output}", f"guidance.method={method}", "guidance.scale=100",
                       "rollout.eval.num_episodes=3", "rollout.eval.num_envs=3", "sampler.kind=ddim", "sampler.num_steps=5",
                       "sampler.eta=1.0")
        assert code == 0
        summaries[method] = json.loads((output / "summary.json").read_text())
        episodes = json.loads((output / "episodes.json").read_text())
        assert len(episodes) == 3 and {"sketch", "path", "wall_contact_rate", "success"} <= set(episodes[0])
        assert (output / "samples" / "steered_rollouts.png").is_file()
    assert summaries["guided"]["alignment_distance_mean"] < 0.7 * summaries["unsteered"]["alignment_distance_mean"]
    assert summaries["guided"]["sketch_covered_mean"] > summaries["unsteered"]["sketch_covered_mean"]


@pytest.mark.parametrize("override, message", [
    ("guidance.scale=-1", "guidance.scale"),
    ("guidance.scale=nan", "guidance.scale"),
    ("guidance.sketch.kind=points", "sketch.points"),
    ("guidance.sketch={kind: points, points: [[9.5, 0.5]]}", "outside the maze"),
    ("guidance.sketch={kind: points, points: [[0.5, 0.5], [2.5, 0.5]]}", "inside a wall"),
    ("sampler={kind: consistency, num_steps: 1}", "consistency"),
])
def test_bad_guidance_input_is_a_one_line_error(override, message, tmp_path, capsys):
    code = run_cli("eval", ITPS_EVAL, f"output_dir={tmp_path / 'out'}", "rollout.eval.num_episodes=1", "rollout.eval.num_envs=1",
                   "sampler.kind=ddim", "sampler.num_steps=2", override)
    error = capsys.readouterr().err.strip()
    assert code != 0 and message in error and len(error.splitlines()) == 1, error


@pytest.mark.parametrize("method", METHODS)
def test_every_method_steers_real_episodes_through_genrl_eval(method, tmp_path):
    """Each sampler with the real per-env cost (different sketches per env, candidates, MCMC passes)."""
    code = run_cli("eval", ITPS_EVAL, f"output_dir={tmp_path}", f"guidance.method={method}", "guidance.scale=50",
                   "guidance.num_candidates=3", "guidance.mcmc_steps=1", "guidance.perturb_steps=2", "rollout.eval.num_episodes=2",
                   "rollout.eval.num_envs=2", "rollout.env.max_episode_steps=24", "sampler.kind=ddim", "sampler.num_steps=3")
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["method"] == method and summary["num_episodes"] == 2 and 0 <= summary["wall_contact_rate_mean"] <= 1


def test_a_point_input_is_a_one_point_sketch_that_pulls_to_the_point():
    point = densify([[0.5, -0.5]])
    assert point.shape == (1, 2)
    follower = SketchFollower([point])
    follower.update(np.array([0]), np.array([[2.0, 2.0]]))
    window, carrot = follower.targets(np.array([0]))
    assert torch.allclose(carrot, torch.tensor([[0.5, -0.5]]))
    toward = torch.tensor([[[1.0, 0.0], [0.6, -0.4]]])
    away = torch.tensor([[[2.0, 2.1], [2.0, 2.2]]])
    assert sketch_cost(toward, window, carrot) < sketch_cost(away, window, carrot)


def test_each_episode_of_several_waves_records_its_own_path(tmp_path):
    code = run_cli("eval", ITPS_EVAL, f"output_dir={tmp_path}", "guidance.method=unsteered", "rollout.eval.num_episodes=3",
                   "rollout.eval.num_envs=2", "rollout.env.max_episode_steps=20", "sampler.kind=ddim", "sampler.num_steps=2")
    assert code == 0
    episodes = json.loads((tmp_path / "episodes.json").read_text())
    assert [e["seed"] for e in episodes] == [100000, 100001, 100002]
    for episode in episodes:  # the reset position and every step after it, recorded every 2nd step
        assert len(episode["path"]) == (episode["length"] + 2) // 2
        assert np.allclose(episode["path"][0], episode["sketch"][0], atol=1e-3)  # the path starts where its sketch does
