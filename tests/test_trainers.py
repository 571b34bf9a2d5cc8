"""PXPO, B^2-DiffuRL, REBEL and SFT-PG: their losses against the formulas, and short real runs
of each through the CLI on tiny diffusion and flow models."""

import json

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import TINY_TRAIN_OVERRIDES, run_cli

from genrl.config import SamplerConfig
from genrl.evaluation.images import sample_trajectory
from genrl.models.loading import load_model
from genrl.run_dir import read_metrics
from genrl.samplers import build_sampler
from genrl.trainers.b2diffurl import best_worst_pairs, sample_branched, select_children, split_step
from genrl.trainers.ddpo import ddpo_loss
from genrl.trainers.pxpo import pixel_advantages, pixel_map_to_state, pxpo_loss
from genrl.trainers.rebel import rebel_loss, rebel_residuals, rebel_step_loss
from genrl.trainers.sft_pg import critic_loss, sft_pg_loss


def tiny_chain(model_dir, num_prompts=4, steps=4, seed=0, **sampler_kwargs):
    model = load_model(model_dir)
    sampler = build_sampler(SamplerConfig(num_steps=steps, **sampler_kwargs), model)
    prompts = ["a red circle at the top", "a blue square at the left"] * (num_prompts // 2)
    trajectory = sample_trajectory(model, sampler, prompts, torch.Generator().manual_seed(seed))
    return model, sampler, trajectory


# ------------------------------------------------------------------ PXPO
@pytest.mark.parametrize("off_policy", [False, True])
def test_pxpo_with_a_constant_map_is_exactly_ddpo(tiny_model_dir, off_policy):
    """Loss AND network gradient equal DDPO's when every pixel carries the sample's advantage."""
    model, sampler, trajectory = tiny_chain(tiny_model_dir)
    if off_policy:  # pretend the chain was sampled by a slightly different policy
        trajectory.log_probs = trajectory.log_probs + 0.01 * torch.randn(trajectory.log_probs.shape)
    advantages = torch.tensor([1.5, -0.7, 0.3, -2.0])
    step = torch.tensor([0, 1, 2, 3])
    old = trajectory.log_probs[torch.arange(4), step]
    params = [p for p in model.network.parameters()]

    def gradient(loss):
        model.network.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in params])

    model.network.requires_grad_(True)
    log_prob, _, _ = sampler.log_prob(model.denoiser, trajectory, step)  # mean over elements
    ddpo, _ = ddpo_loss(log_prob, old, advantages, clip_range=0.005)
    ddpo_grad = gradient(ddpo)
    element_log_prob, _, _ = sampler.log_prob(model.denoiser, trajectory, step, reduce="none")
    constant_map = advantages.view(4, 1, 1, 1)
    pxpo, _ = pxpo_loss(element_log_prob, old, constant_map, clip_range=0.005)
    pxpo_grad = gradient(pxpo)
    assert torch.allclose(pxpo, ddpo, atol=1e-6)
    assert torch.allclose(pxpo_grad, ddpo_grad, atol=1e-6, rtol=1e-4)
    assert ddpo_grad.abs().sum() > 0


def test_pxpo_credits_each_element_with_its_own_pixel_advantage():
    element_log_prob = torch.randn(2, 3, 4, 4, requires_grad=True)
    advantage_map = torch.zeros(2, 1, 4, 4)
    advantage_map[:, :, :2] = 1.0  # only the top half is rewarded
    loss, _ = pxpo_loss(element_log_prob, element_log_prob.detach().mean(dim=(1, 2, 3)), advantage_map, clip_range=0.1)
    loss.backward()
    grad = element_log_prob.grad
    assert torch.all(grad[:, :, 2:] == 0)  # unrewarded pixels get no push
    assert torch.allclose(grad[:, :, :2], torch.full_like(grad[:, :, :2], -1.0 / element_log_prob.numel()))


def test_pixel_maps_pool_to_latent_resolution_and_standardise_like_ddpo():
    pixel_map = torch.arange(64.0).view(1, 8, 8)
    pooled = pixel_map_to_state(pixel_map, (4, 2, 2))  # a VAE factor of 4
    assert pooled.shape == (1, 1, 2, 2)
    assert pooled[0, 0, 0, 0] == pixel_map[0, :4, :4].mean()
    constant = torch.full((2, 1, 3, 3), 2.0)
    advantages = pixel_advantages(constant, torch.tensor([1.0, 3.0]), torch.tensor([0.5, 2.0]), clip=5.0)
    assert torch.allclose(advantages, torch.tensor([2.0, -0.5]).view(2, 1, 1, 1).expand(2, 1, 3, 3))


def test_pixel_advantages_keep_ddpo_mean_and_do_not_saturate():
    # Pixels vary far more within a sample (std ~1) than sample rewards do across samples
    # (sigma 0.01): standardising the map by sigma would pin nearly every pixel at +-clip.
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 1, 16, 16, generator=generator)
    rewards = torch.linspace(0.0, 0.02, 8)
    maps = noise - noise.mean(dim=(1, 2, 3), keepdim=True) + rewards.view(8, 1, 1, 1)
    means, stds = torch.full((8,), 0.01), rewards.std().expand(8)
    advantages = pixel_advantages(maps, means, stds, clip=5.0)
    assert (advantages.abs() >= 5.0).float().mean() < 0.01
    ddpo = ((maps.mean(dim=(1, 2, 3)) - means) / stds).clamp(-5, 5)
    unclipped = advantages.abs() < 5.0
    pattern = advantages - ddpo.view(8, 1, 1, 1)
    # the pattern has unit RMS over the batch and mean zero within each sample (before clipping)
    assert abs(float(pattern[unclipped].pow(2).mean().sqrt()) - 1.0) < 0.1
    assert torch.allclose(pixel_advantages(maps, means, stds, clip=1e9).mean(dim=(1, 2, 3)), ((maps.mean(dim=(1, 2, 3)) - means) / stds).clamp(-1e9, 1e9), atol=1e-4)


# ------------------------------------------------------------------ B^2-DiffuRL
def test_split_step_schedule_matches_the_reference():
    schedule = [split_step(i, 100, 14, 20, 20) for i in range(100)]
    assert schedule[0] == 14 and schedule[-1] == 20
    assert all(a <= b for a, b in zip(schedule, schedule[1:]))  # grows toward the chain's start
    assert schedule.count(14) == 15  # floor(7 i / 100) == 0 for i < 15


def test_branches_share_one_prefix_computed_once(tiny_model_dir):
    model = load_model(tiny_model_dir)
    sampler = build_sampler(SamplerConfig(num_steps=6), model)
    batch_sizes = []
    model.network.register_forward_hook(lambda module, args, output: batch_sizes.append(output[0].shape[0]))
    prompts = ["a red circle at the top", "a green triangle at the center"]
    trajectory = sample_branched(model, sampler, prompts, branch_factor=3, branch_step=2,
                                 generator=torch.Generator().manual_seed(0))
    # 2 prefix steps at batch 2 (the prefix once per prompt), then 4 steps at batch 2 x 3 children.
    assert batch_sizes == [2, 2, 6, 6, 6, 6]
    assert trajectory.batch_size == 6 and trajectory.states.shape[1] == 7
    assert trajectory.prompts == [prompts[0]] * 3 + [prompts[1]] * 3
    children = trajectory.states[:3]
    assert torch.equal(children[0, :3], children[1, :3]) and torch.equal(children[0, :3], children[2, :3])
    assert not torch.equal(children[0, 3], children[1, 3])  # they diverge after the branch
    # The trained steps (after the branch) re-score exactly: on-policy ratio 1. The prefix was
    # computed at batch 2 and is re-scored at batch 6, equal up to float batching effects.
    for step in range(6):
        log_prob, _, _ = sampler.log_prob(model.denoiser, trajectory, step)
        if step >= 2:
            assert torch.equal(log_prob, trajectory.log_probs[:, step])
        else:
            assert torch.allclose(log_prob, trajectory.log_probs[:, step], atol=1e-5)


def test_children_are_selected_by_z_score_thresholds():
    z = np.array([0.9, 0.0, -0.2, -0.6,  0.4, 0.1, -0.1, -0.3])  # two branches of 4
    assert select_children(z, 4, 0.5, -0.5) == [0, 3]  # second branch: nothing stands out
    assert best_worst_pairs(np.array([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]), 3) == [(0, 1)]  # no pair from a flat branch
    # one success among five children, z-scored within the branch (float32): z = 2 and -0.5, both kept
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    z32 = ((rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6)).numpy()
    assert select_children(z32, 5, 0.5, -0.5) == [1, 0]


# ------------------------------------------------------------------ REBEL
def test_rebel_stepwise_gradient_equals_the_gradient_of_the_loss(tiny_model_dir):
    model, sampler, trajectory = tiny_chain(tiny_model_dir, steps=3)
    trajectory.log_probs = trajectory.log_probs + 0.02 * torch.randn(trajectory.log_probs.shape)  # off-policy
    rewards = torch.tensor([1.0, -0.5, 0.2, 0.4])
    first, second = torch.tensor([0, 2]), torch.tensor([1, 3])
    rows = torch.arange(4)
    model.network.requires_grad_(True)
    params = list(model.network.parameters())

    log_ratio = sum(sampler.log_prob(model.denoiser, trajectory, s)[0] - trajectory.log_probs[rows, s] for s in range(3))
    direct = rebel_loss(log_ratio[first], log_ratio[second], rewards[first], rewards[second], eta_inverse=2.0)
    direct_grad = torch.autograd.grad(direct, params)

    with torch.no_grad():
        residuals = rebel_residuals(log_ratio[first], log_ratio[second], rewards[first], rewards[second], 2.0)
    model.network.zero_grad()
    for s in range(3):
        log_prob = sampler.log_prob(model.denoiser, trajectory, s)[0]
        rebel_step_loss(log_prob[first], log_prob[second], residuals, 2.0).backward()
    for expected, param in zip(direct_grad, params):
        assert torch.allclose(param.grad, expected, atol=1e-6, rtol=1e-4)
    assert torch.isclose((residuals**2).mean(), direct)


def test_rebel_on_policy_residual_is_minus_the_reward_gap():
    zero = torch.zeros(3)
    residuals = rebel_residuals(zero, zero, torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 2.5, 0.0]))
    assert torch.equal(residuals, torch.tensor([-1.0, 0.5, 0.0]))


# ------------------------------------------------------------------ SFT-PG
def test_sft_pg_on_policy_gradient_is_minus_advantage_times_score():
    log_prob = torch.randn(4, requires_grad=True)
    advantages = torch.tensor([1.0, -2.0, 0.5, 0.0])
    loss, _ = sft_pg_loss(log_prob, log_prob.detach(), advantages)
    loss.backward()
    assert torch.allclose(log_prob.grad, -advantages / 4)


def test_critic_separates_real_from_fake_and_penalty_holds_it_lipschitz():
    from genrl.models.critics import ImageCritic

    torch.manual_seed(0)
    critic = ImageCritic(width=8)
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    real = torch.rand(32, 3, 16, 16) * 0.2 + 0.5
    fake = torch.rand(32, 3, 16, 16) * 0.2 - 0.5
    for _ in range(60):
        loss, distance = critic_loss(critic, real, fake, gradient_penalty=10.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert distance > 0.5  # the critic tells them apart
    between = (0.5 * real + 0.5 * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(between).sum(), between)
    assert grad.flatten(1).norm(dim=1).mean() < 2.0  # and its slope stays near 1


def test_real_images_from_a_directory(tmp_path):
    from PIL import Image

    from genrl.data.real_images import RealImages

    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 60 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    images = RealImages(str(tmp_path)).sample(5, np.random.default_rng(0), resolution=8)
    assert images.shape == (5, 3, 8, 8)
    for image in images:  # each a resized copy of one uniform file: 0, 60 or 120 of 255 in [-1, 1]
        assert torch.allclose(image, image.flatten()[0]) and any(
            abs(image.flatten()[0].item() - (value / 127.5 - 1)) < 1e-2 for value in (0, 60, 120))
    assert RealImages("shapes").sample(2, np.random.default_rng(0), resolution=16).shape == (2, 3, 16, 16)


# ------------------------------------------------------------------ real runs through the CLI
TRAINER_RECIPES = {
    "pxpo": ("configs/pxpo/shapes_pixel_alignment.yaml", "configs/pxpo/shapes_flow_pixel_alignment.yaml", []),
    "b2diffurl": ("configs/b2diffurl/shapes_sparse_alignment.yaml", "configs/b2diffurl/shapes_flow_sparse_alignment.yaml",
                  ["rollout.batch_size=10", "train_batch_size=2", "b2diffurl.split_step_start=2", "b2diffurl.split_step_end=4",
                   "rollout.reward.name=shapes_alignment"]),
    "rebel": ("configs/rebel/shapes_compressibility.yaml", "configs/rebel/shapes_flow_compressibility.yaml", []),
    "sft": ("configs/sft/shapes_10step.yaml", "configs/sft/shapes_flow_10step.yaml", ["sft_pg.critic_batch_size=4", "sft_pg.critic_warmup_steps=2"]),
}


@pytest.mark.parametrize("family", ["diffusion", "flow"])
@pytest.mark.parametrize("method", list(TRAINER_RECIPES))
def test_each_trainer_trains_through_the_cli(method, family, tiny_model_dir, tiny_flow_model_dir, tmp_path):
    diffusion_recipe, flow_recipe, extra = TRAINER_RECIPES[method]
    recipe, model_dir = (diffusion_recipe, tiny_model_dir) if family == "diffusion" else (flow_recipe, tiny_flow_model_dir)
    out = tmp_path / "run"
    assert run_cli("train", recipe, f"model.path={model_dir}", f"output_dir={out}", *TINY_TRAIN_OVERRIDES,
                   "num_epochs=2", *extra) == 0
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert sum(m["optimizer_steps"] for m in metrics) >= 1
    summary = json.loads((out / "summary.json").read_text())
    assert "diversity_before" in summary and "diversity_after" in summary
    assert (out / "checkpoints" / "checkpoint-2").exists()
    # the saved model is not the base model: the trainer did update it (whether for the better
    # is tests/test_learning.py's question)
    base, tuned = load_model(model_dir).network, load_model(out / "model").network
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), tuned.parameters()))


def test_new_trainers_resume_from_their_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    common = ["configs/sft/shapes_10step.yaml", f"model.path={tiny_model_dir}", f"output_dir={out}", *TINY_TRAIN_OVERRIDES,
              "sft_pg.critic_batch_size=4", "sft_pg.critic_warmup_steps=2"]
    assert run_cli("train", *common, "num_epochs=1") == 0
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run_cli("train", *common, "num_epochs=2", "resume=true") == 0
    assert [m["epoch"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("overrides, code, message", [
    (["trainer=pxpo", "rollout.reward.name=jpeg_compressibility"], 1, "pxpo needs a reward that returns a per-pixel map"),
    (["trainer=rebel", "rollout.group_size=1"], 2, "rollout.group_size=2"),
    (["trainer=pxpo", "b2diffurl.enabled=true", "rollout.group_size=2"], 2, "b2diffurl wraps the ddpo or rebel loss"),
    (["trainer=sft_pg", "sft_pg.real_data=/no/such/dir"], 2, "sft_pg.real_data"),
    (["rollout.group_size=3"], 2, "multiple of group_size"),
])
def test_bad_trainer_settings_fail_with_one_line(overrides, code, message, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    result = run_cli("train", "configs/ddpo/shapes_compressibility.yaml", f"model.path={tiny_model_dir}", f"output_dir={out}",
                     *TINY_TRAIN_OVERRIDES, "num_epochs=1", *overrides)
    err = capsys.readouterr().err.strip().splitlines()
    assert result == code
    assert message in err[-1] and err[-1].startswith("genrl: error:")


def test_rebel_step_reduction_sum_scales_the_log_ratio_by_the_element_count(tiny_model_dir):
    """rebel.step_reduction: the chain log-ratio with per-step SUMS is D times the one with per-step
    MEANS (D elements per step), on- and off-policy; on-policy both are exactly 0."""
    model = load_model(tiny_model_dir)
    sampler = build_sampler(SamplerConfig(kind="ddim", num_steps=3, eta=1.0), model)
    trajectory = sample_trajectory(model, sampler, ["a red circle at the top"] * 2, torch.Generator().manual_seed(0))
    rows, elements = torch.arange(2), trajectory.sample[0].numel()

    def chain_log_ratio(reduce):
        total = torch.zeros(2)
        for step in range(3):
            step_index = torch.full((2,), step)
            new, _, _ = sampler.log_prob(model.denoiser, trajectory, step_index, reduce=reduce)
            total += new - trajectory.stored_log_prob(rows, step_index, reduce)
        return total

    with torch.no_grad():
        assert torch.equal(chain_log_ratio("mean"), torch.zeros(2))
        assert torch.allclose(chain_log_ratio("sum"), torch.zeros(2), atol=1e-3)  # x D of float32 rounding
        for parameter in model.network.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
        mean_ratio, sum_ratio = chain_log_ratio("mean"), chain_log_ratio("sum")
    assert mean_ratio.abs().min() > 1e-4
    assert torch.allclose(sum_ratio, elements * mean_ratio, rtol=1e-3, atol=1e-2)
