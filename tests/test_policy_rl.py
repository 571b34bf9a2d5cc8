"""RL fine-tuning of Diffusion Policies: DPPO's pieces against their formulas, exact on-policy
ratios with DPPO's stabilisers, REBEL's episode-level gradient, and short real runs of DDPO,
DPPO and REBEL through the CLI."""

import json

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from pydantic import ValidationError
from conftest import run_cli

from genrl.config import SamplerConfig
from genrl.log_prob import gaussian_log_prob
from genrl.models.step_routed_network import StepRoutedNetwork
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.run_dir import read_metrics
from genrl.samplers import build_sampler
from genrl.trainers.dppo import clip_ranges, denoising_discount, gae_advantages
from genrl.trainers.rebel import rebel_loss, rebel_residuals, rebel_signed_loss

DPPO = "configs/policy_rl/pointmaze_medium_dppo.yaml"
# 4 U-maze episodes of at most 40 env steps per iteration, a 4-step DDIM chain; the dense
# reward (exp(-distance to goal)) gives a random-init policy's episodes different rewards.
TINY_RL = ["rollout.env.id=PointMaze_UMaze-v3", "rollout.env.max_episode_steps=40", "rollout.env.kwargs={continuing_task: false, reward_type: dense}",
           "rollout.num_envs=4", "sampler.num_steps=4", "train_batch_size=32", "ppo.update_epochs=1", "rollout.eval.num_episodes=2", "rollout.eval.num_envs=2", "rollout.eval.num_videos=0",
           "log_with=[]", "checkpoint_every=1", "optimizer.learning_rate=1e-3", "rebel.pairs_per_update=1",
           "dppo.ft_denoising_steps=null"]


# ------------------------------------------------------------------ DPPO's formulas
def test_gae_matches_the_recursion_written_out():
    rewards, values = np.array([0.0, 0.5, 1.0]), np.array([0.2, 0.4, 0.6])
    next_values = np.array([0.4, 0.6, 0.9])
    gamma, lam = 0.9, 0.8
    # terminated at the end: no bootstrap from the final state
    d2 = 1.0 - 0.6
    d1 = 0.5 + 0.9 * 0.6 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.2
    expected = [d0 + 0.72 * (d1 + 0.72 * d2), d1 + 0.72 * d2, d2]
    np.testing.assert_allclose(gae_advantages(rewards, values, next_values, np.array([0.0, 0.0, 1.0]), gamma, lam), expected)
    # a time-limit truncation bootstraps from V(s_D)
    truncated = gae_advantages(rewards, values, next_values, np.zeros(3), gamma, lam)
    assert truncated[-1] == pytest.approx(1.0 + 0.9 * 0.9 - 0.6)


def test_clip_rises_along_the_chain_and_the_last_step_gets_the_full_advantage():
    position = torch.arange(5)
    clips = clip_ranges(position, 5, 1e-3, 1e-2, 3.0)
    assert clips[0] == pytest.approx(1e-3) and clips[-1] == pytest.approx(1e-2)
    assert torch.all(clips[1:] > clips[:-1])
    assert clip_ranges(torch.zeros(1, dtype=torch.long), 1, 1e-3, 1e-2, 3.0).item() == pytest.approx(1e-2)
    discount = denoising_discount(position, 5, 0.9)
    assert torch.allclose(discount, torch.tensor([0.9**4, 0.9**3, 0.9**2, 0.9, 1.0]))


# ------------------------------------------------------------------ exact on-policy ratios
def test_dppo_sampler_and_routed_network_give_ratio_one(tiny_policy_dir):
    """With the std floor, the noise clamp and the early/late network split, re-scoring every
    stored step under unchanged weights gives exactly the sampled log-prob."""
    policy = DiffusionPolicy.from_pretrained(tiny_policy_dir).eval()
    sampler = build_sampler(SamplerConfig(kind="ddpm", num_steps=6), policy)
    sampler.min_std, sampler.noise_clip = 0.1, 1.0
    assert sampler.stochastic_steps() == list(range(6))  # the floor makes the last DDPM step stochastic too
    base = DiffusionPolicy.from_pretrained(tiny_policy_dir).network
    with torch.no_grad():  # a visibly different fine-tuned copy for the late steps
        for p in policy.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    switch = sampler.step_pairs[3][0]
    policy.denoiser.network = StepRoutedNetwork(base, policy.network, switch)
    condition = policy.condition(torch.randn(5, 2, 6))
    trajectory = sampler.sample(policy.denoiser, condition, (5, *policy.sample_shape), generator=torch.Generator().manual_seed(0))
    assert torch.all(trajectory.stds >= 0.1)
    for step in range(6):
        log_prob, _, _ = sampler.log_prob(policy.denoiser, trajectory, step)
        assert torch.equal(log_prob, trajectory.log_probs[:, step])
    # mixed batches route each sample to its own network (equal up to batch-size float effects)
    x, cond = trajectory.states[:2, 0], condition["global_cond"][:2]
    t = torch.tensor([switch + 1, switch])
    mixed = policy.denoiser.network(x, t, global_cond=cond).sample
    assert torch.allclose(mixed[0], base(x, t, global_cond=cond).sample[0], atol=1e-6)
    assert torch.allclose(mixed[1], policy.network(x, t, global_cond=cond).sample[1], atol=1e-6)
    assert not torch.allclose(mixed[1], base(x, t, global_cond=cond).sample[1], atol=1e-3)


def test_scoring_floor_changes_scores_not_samples_and_keeps_ratio_one(tiny_policy_dir):
    """`min_logprob_std` scores each step with std >= the floor; samples are drawn as before; the
    executed-slice mask scores only the chunk's executed actions. On-policy ratios stay exactly 1."""
    policy = DiffusionPolicy.from_pretrained(tiny_policy_dir).eval()
    condition = policy.condition(torch.randn(4, 2, 6))
    shape = (4, *policy.sample_shape)
    plain = build_sampler(SamplerConfig(kind="ddim", num_steps=5, eta=1.0), policy)
    floored = build_sampler(SamplerConfig(kind="ddim", num_steps=5, eta=1.0, min_logprob_std=0.1), policy)
    mask = policy.executed_mask()
    assert mask.sum() == policy.n_action_steps and mask[policy.n_obs_steps - 1] == 1 and mask[0] == 0
    a = plain.sample(policy.denoiser, condition, shape, generator=torch.Generator().manual_seed(0))
    b = floored.sample(policy.denoiser, condition, shape, generator=torch.Generator().manual_seed(0), score_mask=mask)
    assert torch.equal(a.states, b.states)  # the floor and the mask change no sample
    small = [k for k in range(5) if 0 < a.stds[k] < 0.1]
    assert small, "the chain should end with steps of std below the floor"
    for step in range(5):
        log_prob, mean, std = floored.log_prob(policy.denoiser, b, step)
        assert torch.equal(log_prob, b.log_probs[:, step])  # exactly the stored log-prob: ratio 1
        assert torch.all(std >= 0.1)
        executed = slice(policy.n_obs_steps - 1, policy.n_obs_steps - 1 + policy.n_action_steps)
        expected = gaussian_log_prob(b.states[:, step + 1, executed], mean[:, executed], std)
        assert torch.allclose(log_prob, expected, atol=1e-5)
    k = small[-1]
    assert not torch.allclose(a.log_probs[:, k], b.log_probs[:, k])


def test_logprob_clamp_bounds_each_element_and_keeps_ratio_one(tiny_policy_dir):
    """`logprob_clamp` (DPPO's per-element clamp): stored and re-scored log-probs are the reduction of
    clamped element log-densities, on-policy ratios stay exactly 1, and a clamped element has no gradient."""
    policy = DiffusionPolicy.from_pretrained(tiny_policy_dir).eval()
    condition = policy.condition(torch.randn(4, 2, 6))
    clamped = build_sampler(SamplerConfig(kind="ddim", num_steps=5, eta=1.0, logprob_clamp=(-5.0, 0.5)), policy)
    trajectory = clamped.sample(policy.denoiser, condition, (4, *policy.sample_shape), generator=torch.Generator().manual_seed(0))
    for step in range(5):
        log_prob, mean, std = clamped.log_prob(policy.denoiser, trajectory, step)
        assert torch.equal(log_prob, trajectory.log_probs[:, step])
        elements = gaussian_log_prob(trajectory.states[:, step + 1], mean, std, reduce="none")
        assert torch.allclose(log_prob, elements.clamp(-5.0, 0.5).mean(dim=(1, 2)), atol=1e-5)
    # the last step has a small std: its element log-densities exceed 0.5 and are clamped
    assert (elements > 0.5).any()
    x = trajectory.states[:, -1].clone().requires_grad_(True)
    gaussian_log_prob(x, mean.detach(), std.detach(), reduce="sum", clamp=(-5.0, 0.5)).sum().backward()
    inside = (elements > -5.0) & (elements < 0.5)
    assert torch.all(x.grad[~inside] == 0) and torch.all(x.grad[inside] != 0)
    with pytest.raises(ValidationError, match="logprob_clamp"):
        SamplerConfig(logprob_clamp=(2.0, -5.0))


def test_routed_policy_saves_both_networks(tiny_policy_dir, tmp_path):
    policy = DiffusionPolicy.from_pretrained(tiny_policy_dir)
    tuned = DiffusionPolicy.from_pretrained(tiny_policy_dir).network
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.1)
    routed = DiffusionPolicy(StepRoutedNetwork(policy.network, tuned, 7), policy.scheduler, policy.normalizer,
                             policy.policy_config)
    routed.save_pretrained(tmp_path / "p")
    loaded = DiffusionPolicy.from_pretrained(tmp_path / "p")
    assert isinstance(loaded.network, StepRoutedNetwork) and loaded.network.switch_timestep == 7
    x, cond = torch.randn(2, 8, 2), torch.randn(2, 12)
    for t in (3, 12):
        expected = routed.network(x, torch.tensor([t, t]), global_cond=cond).sample
        assert torch.equal(loaded.network(x, torch.tensor([t, t]), global_cond=cond).sample, expected)


# ------------------------------------------------------------------ REBEL on episodes
def test_rebel_over_episodes_of_many_chains_has_the_exact_gradient(tiny_policy_dir):
    """Episodes are several chains each; accumulating rebel_signed_loss over (chain, step)
    chunks in any order gives the gradient of rebel_loss on the episodes' summed log-ratios."""
    policy = DiffusionPolicy.from_pretrained(tiny_policy_dir).eval()
    sampler = build_sampler(SamplerConfig(kind="ddim", num_steps=3, eta=1.0), policy)
    episode_of_chain = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])  # pairs (0, 1) and (2, 3)
    trajectory = sampler.sample(policy.denoiser, policy.condition(torch.randn(8, 2, 6)), (8, *policy.sample_shape),
                                generator=torch.Generator().manual_seed(3))
    trajectory.log_probs = trajectory.log_probs + 0.05 * torch.randn(trajectory.log_probs.shape)  # off-policy
    rewards = torch.tensor([1.0, -0.5, 0.3, 0.8])
    params = list(policy.network.parameters())
    policy.network.requires_grad_(True)
    rows = torch.arange(8)

    def episode_log_ratio():
        per_chain = sum(sampler.log_prob(policy.denoiser, trajectory, s)[0] - trajectory.log_probs[rows, s] for s in range(3))
        return torch.zeros(4).index_add(0, episode_of_chain, per_chain)

    ratio = episode_log_ratio()
    direct = rebel_loss(ratio[[0, 2]], ratio[[1, 3]], rewards[[0, 2]], rewards[[1, 3]], eta_inverse=1.5)
    expected = torch.autograd.grad(direct, params)
    with torch.no_grad():
        ratio = episode_log_ratio()
        residuals = rebel_residuals(ratio[[0, 2]], ratio[[1, 3]], rewards[[0, 2]], rewards[[1, 3]], 1.5)
    signed = torch.stack([residuals[0], -residuals[0], residuals[1], -residuals[1]])[episode_of_chain]
    policy.network.zero_grad()
    for s in (2, 0, 1):  # one chunk per step, in any order
        log_prob = sampler.log_prob(policy.denoiser, trajectory, s)[0]
        rebel_signed_loss(log_prob, signed, num_pairs=2, eta_inverse=1.5).backward()
    for want, param in zip(expected, params):
        assert torch.allclose(param.grad, want, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------ real runs through the CLI
@pytest.mark.parametrize("trainer, extra", [
    ("ddpo", ["sampler.kind=ddim"]),
    ("dppo", ["dppo.ft_denoising_steps=2", "dppo.critic_warmup_epochs=1"]),
    ("rebel", ["rollout.group_size=2"]),
    ("ddpo", ["rollout.group_size=2"]),
])
def test_each_policy_trainer_runs_through_the_cli(trainer, extra, tiny_policy_dir, tmp_path):
    out = tmp_path / trainer
    assert run_cli("train", DPPO, f"trainer={trainer}", f"model.path={tiny_policy_dir}", f"output_dir={out}", *TINY_RL,
                   "num_epochs=2", *extra) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert r["episodes"] == 4 and float(r["success_rate"] * 4).is_integer()  # a share of the 4 episodes
        assert 0 < r["episode_length_mean"] <= 40 and r["env_steps"] == round(4 * r["episode_length_mean"])
    assert ("rebel_loss" if trainer == "rebel" else "approx_kl") in records[-1]
    assert records[-1]["optimizer_steps"] >= 1
    summary = json.loads((out / "summary.json").read_text())
    assert {"success_rate_before", "success_rate_after", "env_steps"} <= set(summary)
    before = DiffusionPolicy.from_pretrained(tiny_policy_dir).network
    after = DiffusionPolicy.from_pretrained(out / "model").network
    tuned = after.finetuned if trainer == "dppo" else after
    assert (trainer == "dppo") == isinstance(after, StepRoutedNetwork)
    moved = sum((a - b).abs().sum().item() for a, b in zip(tuned.parameters(), before.parameters()))
    assert moved > 0  # the update changed the policy


def test_policy_rl_resumes_from_its_checkpoint(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    common = ["train", DPPO, f"model.path={tiny_policy_dir}", f"output_dir={out}", *TINY_RL]
    assert run_cli(*common, "num_epochs=1") == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run_cli(*common, "num_epochs=2", "resume=true") == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0]["env_steps"] > 0 and records[1]["env_steps"] > 0
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run_cli(*common, "num_epochs=3") == 2  # without resume=true the run is refused


@pytest.mark.parametrize("overrides, message", [
    (["trainer=rebel"], "set rollout.group_size=2"),
    (["rollout.group_size=3"], "num_envs 4 must be a multiple of group_size (3)"),
    (["rollout.reward=score"], "needs env.score_key"),
    (["dppo.ft_denoising_steps=9"], "exceeds the sampler's 4 stochastic steps"),
    (["model.path=/no/such/policy"], "/no/such/policy"),
    (["rollout.env.id=PointMaze_Nowhere-v3"], "PointMaze_Nowhere-v3"),
])
def test_bad_policy_rl_settings_fail_with_one_line(overrides, message, tiny_policy_dir, tmp_path, capsys):
    code = run_cli("train", DPPO, f"model.path={tiny_policy_dir}", f"output_dir={tmp_path / 'r'}", *TINY_RL, *overrides)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("genrl: error:")


def test_policy_gradient_raises_the_reward_of_a_bandit(tmp_path):
    """End to end, the update goes the right way: on the one-step bandit (tests/toy_envs.py)
    DDPO, DPPO and REBEL raise the success rate of a random-init policy within a few iterations."""
    from genrl.config import load_config
    from genrl.data.demonstrations import Demonstrations
    from conftest import TINY_POLICY_OVERRIDES, UMAZE_PRETRAIN

    from genrl.pretraining import build_policy

    torch.manual_seed(0)
    config = load_config("pretrain", UMAZE_PRETRAIN, TINY_POLICY_OVERRIDES)
    rng = np.random.default_rng(0)
    uniform = Demonstrations(obs=rng.uniform(-1, 1, (64, 2)).astype(np.float32), action=rng.uniform(-1, 1, (64, 2)).astype(np.float32),
                             reward=np.zeros(64), episode_ends=np.array([64]), episode_success=None, episode_seed=None,
                             episode_score=None, attrs={})
    build_policy(config, uniform).save_pretrained(tmp_path / "policy")
    for trainer, extra in [("ddpo", []), ("dppo", []), ("rebel", ["rollout.group_size=2", "rebel.pairs_per_update=8"])]:
        AcceleratorState._reset_state(reset_partial_state=True)
        out = tmp_path / trainer
        assert run_cli("train", DPPO, f"trainer={trainer}", *extra, f"model.path={tmp_path / 'policy'}", "rollout.env.id=toy_envs:Bandit-v0",
                       "rollout.env.kwargs={}", "rollout.env.obs_keys=null", f"output_dir={out}", "num_epochs=16", "rollout.num_envs=64",
                       "sampler.num_steps=4", "rollout.eval.num_episodes=128", "rollout.eval.num_envs=128", "rollout.eval.num_videos=0", "log_with=[]",
                       "optimizer.learning_rate=1e-3", "train_batch_size=256", "dppo.critic_warmup_epochs=1",
                       "dppo.ft_denoising_steps=null") == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["success_rate_after"] > summary["success_rate_before"] + 0.15, (trainer, summary)


def test_grouped_episodes_share_initial_states_and_ranks_never_share_seeds():
    from genrl.config import load_config
    from genrl.trainers.env_rollout import TRAIN_SEED_BASE, episode_seeds

    config = load_config("train", DPPO, ["rollout.num_envs=4", "rollout.group_size=2"])
    seeds = episode_seeds(config.seed, 4, 2, epoch=3, rank=1, world=2)
    assert seeds[0] == seeds[1] and seeds[2] == seeds[3] and seeds[1] != seeds[2]
    other_rank = episode_seeds(config.seed, 4, 2, epoch=3, rank=0, world=2)
    next_epoch = episode_seeds(config.seed, 4, 2, epoch=4, rank=0, world=2)
    assert not set(seeds) & set(other_rank) and not set(seeds) & set(next_epoch)
    eval_config = config.rollout.eval
    assert min(seeds) >= TRAIN_SEED_BASE > eval_config.seed + eval_config.num_episodes  # never an evaluation seed
