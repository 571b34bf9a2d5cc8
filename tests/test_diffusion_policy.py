"""Diffusion Policy: the temporal UNet, normalisation saved with the policy, sampling through
the shared samplers, behaviour cloning (`genrl pretrain`) and evaluation (`genrl eval`), and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import TINY_POLICY_EVAL_OVERRIDES, TINY_POLICY_OVERRIDES, UMAZE_EVAL, UMAZE_PRETRAIN, run_cli
from diffusers import DDIMScheduler

from genrl.commands import eval as eval_command
from genrl.commands import pretrain
from genrl.config import SamplerConfig, load_config
from genrl.errors import CheckpointError, ConfigError
from genrl.models.temporal_unet import TemporalUnet1D
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.policies.diffusion.normalizer import FieldNormalizer, Normalizer
from genrl.run_dir import read_metrics
from genrl.samplers import build_sampler


def test_temporal_unet_shapes_conditioning_and_save_load(tmp_path):
    torch.manual_seed(0)
    net = TemporalUnet1D(action_dim=2, global_cond_dim=12, down_dims=(8, 16, 32), n_groups=4, timestep_embed_dim=16).eval()
    x, t, cond = torch.randn(3, 16, 2), torch.tensor([0, 5, 9]), torch.randn(3, 12)
    out = net(x, t, global_cond=cond).sample
    assert out.shape == (3, 16, 2)
    assert not torch.allclose(out, net(x, t, global_cond=cond + 1).sample)  # FiLM: the observation matters
    assert not torch.allclose(out, net(x, t + 1, global_cond=cond).sample)  # and the timestep
    net.save_pretrained(tmp_path / "unet")
    loaded = TemporalUnet1D.from_pretrained(tmp_path / "unet").eval()
    assert torch.equal(loaded(x, t, global_cond=cond).sample, out)


def test_normalizer_limits_map_the_data_range_to_minus_one_one(tmp_path):
    data = np.array([[0.0, 5.0, 3.0], [10.0, 7.0, 3.0], [4.0, 6.0, 3.0]])  # last column never varies
    field = FieldNormalizer.fit(data, "limits")
    normalized = field.normalize(torch.tensor(data))
    assert torch.allclose(normalized[:, :2].min(0).values, torch.tensor([-1.0, -1.0], dtype=torch.float64))
    assert torch.allclose(normalized[:, :2].max(0).values, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.all(normalized[:, 2] == 0)  # a constant dimension is centred, not divided by zero
    assert torch.allclose(field.unnormalize(normalized), torch.tensor(data))
    gaussian = FieldNormalizer.fit(data, "gaussian").normalize(torch.tensor(data))
    assert torch.allclose(gaussian[:, 0].mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-12)
    normalizer = Normalizer(field, field)
    normalizer.save(tmp_path)
    assert np.allclose(Normalizer.load(tmp_path).action.scale, field.scale)


def test_policy_without_normalisation_statistics_is_refused(tiny_policy_dir, tmp_path, capsys):
    broken = tmp_path / "policy"
    shutil.copytree(tiny_policy_dir, broken)
    (broken / "normalizer.json").unlink()
    with pytest.raises(CheckpointError, match="normalizer.json"):
        DiffusionPolicy.from_pretrained(broken)
    code = run_cli("eval", UMAZE_EVAL, f"model.path={broken}", f"output_dir={tmp_path / 'eval'}", "rollout.eval.num_episodes=1")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "normalizer.json" in err[0]
    assert not (tmp_path / "eval").exists()


def test_observation_of_the_wrong_shape_is_a_one_line_error(tiny_policy_dir):
    policy = DiffusionPolicy.from_pretrained(tiny_policy_dir)
    with pytest.raises(ConfigError, match=r"shape \(4, 2, 5\).*\(batch, 2, 6\)"):
        policy.condition(torch.zeros(4, 2, 5))
    assert policy.condition(torch.zeros(4, 2, 6))["global_cond"].shape == (4, 12)


def test_policy_on_an_env_it_was_not_trained_for_is_refused(tiny_policy_dir, tmp_path, capsys):
    code = run_cli("eval", "configs/eval/policy_pusht.yaml", f"model.path={tiny_policy_dir}", f"output_dir={tmp_path / 'e'}",
                   "rollout.eval.num_episodes=1", *TINY_POLICY_EVAL_OVERRIDES)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "PointMaze_UMaze-v3" in err[0] and "18" in err[0]


def test_more_sampling_steps_than_training_timesteps_is_refused(tiny_policy_dir):
    policy = DiffusionPolicy.from_pretrained(tiny_policy_dir)
    with pytest.raises(ConfigError, match="sampler.num_steps 100 exceeds the model's 20"):
        build_sampler(SamplerConfig(kind="ddpm", num_steps=100), policy)


def test_ddim_on_action_chunks_equals_diffusers(tiny_policy_dir):
    """The policy samples through the same DDIM sampler as the images: eta = 0 reproduces
    diffusers' DDIMScheduler loop on (B, horizon, action_dim) chunks."""
    policy = DiffusionPolicy.from_pretrained(tiny_policy_dir).eval()
    sampler = build_sampler(SamplerConfig(kind="ddim", num_steps=5, eta=0.0), policy)
    condition = policy.condition(torch.randn(3, 2, 6))
    noise = torch.randn(3, *policy.sample_shape, generator=torch.Generator().manual_seed(1))
    ours = sampler.sample(policy.denoiser, condition, noise.shape, initial_noise=noise).sample
    scheduler = DDIMScheduler.from_config(policy.scheduler.config, steps_offset=1, set_alpha_to_one=False)
    scheduler.set_timesteps(5)
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = policy.network(x, t, global_cond=condition["global_cond"]).sample
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    assert torch.allclose(ours, x, atol=1e-5)


def test_executed_actions_are_the_chunk_after_the_observations(tiny_policy_dir):
    policy = DiffusionPolicy.from_pretrained(tiny_policy_dir)
    chunk = torch.arange(8.0).view(1, 8, 1).repeat(1, 1, 2)  # horizon 8, step index as the value
    executed = policy.executed_actions(chunk)
    assert executed.shape == (1, 4, 2)
    expected = policy.normalizer.action.unnormalize(chunk[:, 1:5])  # n_obs_steps - 1 = 1 onward
    assert torch.allclose(executed, expected)


def evaluate(*overrides, config=UMAZE_EVAL) -> dict:
    """`genrl eval` of the tiny policy (its sampler fits its 20 training steps)."""
    return eval_command.run(load_config("eval", config, [*TINY_POLICY_EVAL_OVERRIDES, *overrides]))


def behaviour_cloning(*overrides, config=UMAZE_PRETRAIN) -> dict:
    AcceleratorState._reset_state(reset_partial_state=True)
    return pretrain.run(load_config("pretrain", config, [*TINY_POLICY_OVERRIDES, *overrides]))


def test_behaviour_cloning_trains_saves_and_resumes(umaze_demos, tmp_path):
    out = tmp_path / "bc"
    common = [f"data.path={umaze_demos}", f"output_dir={out}", "batch_size=32", "log_every=10", "checkpoint_every=60",
              "warmup_steps=5", "optimizer.learning_rate=3e-3", "max_steps=80", "eval.episodes.num_episodes=2",
              "eval.episodes.num_envs=2"]
    summary = behaviour_cloning(*common)
    assert summary["dataset_episodes"] == 4 and summary["num_windows"] > 0 and summary["eval_num_episodes"] == 2
    uninterrupted = DiffusionPolicy.from_pretrained(out / "model").network
    # A run killed after step 60 (its last checkpoint) resumes there and ends with the same weights.
    shutil.rmtree(out / "checkpoints" / "checkpoint-80")
    behaviour_cloning(*common, "resume=true")
    records = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert [r["step"] for r in records if "loss" in r] == [10, 20, 30, 40, 50, 60, 70, 80]  # 70, 80 logged once
    assert losses[-1] < 0.7 * losses[0]  # it learns
    assert records[-1]["eval_num_episodes"] == 2 and "eval_success_rate" in records[-1]
    policy = DiffusionPolicy.from_pretrained(out / "model")
    for ours, theirs in zip(policy.network.parameters(), uninterrupted.parameters()):
        torch.testing.assert_close(ours, theirs)
    assert policy.policy_config["env"]["id"] == "PointMaze_UMaze-v3"
    assert json.loads((out / "model" / "normalizer.json").read_text())["action"]["mode"] == "limits"


@pytest.mark.parametrize("schedule", [["schedule.prediction_type=v_prediction"], ["schedule.family=flow"]],
                         ids=["v_prediction", "flow"])
def test_policies_pretrain_with_other_parameterisations(schedule, umaze_demos, tmp_path):
    """The one loop trains any parameterisation of the schedule: v-prediction and flow matching too."""
    out = tmp_path / "bc"
    behaviour_cloning(f"data.path={umaze_demos}", f"output_dir={out}", "batch_size=32", "log_every=10", "max_steps=40",
                      "warmup_steps=5", "optimizer.learning_rate=3e-3", "eval.skip=true", *schedule)
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < 0.8 * losses[0], losses  # it learns
    policy = DiffusionPolicy.from_pretrained(out / "model").eval()
    if "flow" in schedule[0]:
        assert policy.family == "flow"
        sampler_config = SamplerConfig(kind="flow_sde", num_steps=4, noise_level=0.0)
    else:
        assert policy.denoiser.prediction_type == "v_prediction"
        sampler_config = SamplerConfig(kind="ddim", num_steps=4, eta=0.0)
    condition = policy.condition(torch.zeros(2, 2, 6))
    chunk = build_sampler(sampler_config, policy).sample(policy.denoiser, condition, (2, *policy.sample_shape)).sample
    assert chunk.shape == (2, 8, 2) and torch.isfinite(chunk).all()


def test_bc_on_a_dataset_from_another_env_is_refused(umaze_demos, tmp_path, capsys):
    code = run_cli("pretrain", "configs/pretrain/policy_pointmaze_medium.yaml", f"data.path={umaze_demos}",
                   f"output_dir={tmp_path / 'x'}", *TINY_POLICY_OVERRIDES)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "collected in 'PointMaze_UMaze-v3', but eval.env.id is 'PointMaze_Medium-v3'" in err[-1]
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_an_evaluation_sampler_that_does_not_fit_is_refused_before_training(umaze_demos, tmp_path):
    with pytest.raises(ConfigError, match="sampler.num_steps 100 exceeds the model's 20"):
        behaviour_cloning(f"data.path={umaze_demos}", f"output_dir={tmp_path / 'x'}", "eval.episodes.sampler.kind=ddpm",
                          "eval.episodes.sampler.num_steps=100")
    assert not (tmp_path / "x").exists()


def test_eval_writes_success_return_and_videos(tiny_policy_dir, tmp_path):
    out = tmp_path / "eval"
    summary = evaluate(f"model.path={tiny_policy_dir}", f"output_dir={out}", "rollout.eval.num_episodes=3",
                       "rollout.eval.num_envs=2", "rollout.eval.num_videos=1", "rollout.env.max_episode_steps=40")
    (record,) = read_metrics(out / "metrics.jsonl")
    assert record["num_episodes"] == 3 and "return_mean" in record
    assert round(record["success_rate"] * 3, 6) in (0, 1, 2, 3)  # a share of the 3 episodes, not of steps
    assert record["episode_length_mean"] <= 40 and record["model_path"] == str(tiny_policy_dir)
    assert json.loads((out / "summary.json").read_text()) == summary
    gif = out / "samples" / "eval_episode0.gif"
    assert gif.exists() and gif.stat().st_size > 1000
    # rollout.eval.sampler, when set, is the one used (100 steps do not fit this policy)
    with pytest.raises(ConfigError, match="sampler.num_steps 100 exceeds"):
        evaluate(f"model.path={tiny_policy_dir}", f"output_dir={tmp_path / 'e2'}", "rollout.eval.sampler={kind: ddpm, num_steps: 100}")
