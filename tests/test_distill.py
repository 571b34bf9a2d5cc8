"""Distillers: the consistency student's parameterisation, sampler and loss."""

import copy

import pytest
import torch

from distill.consistency import consistency_distillation_loss, distillation_grid, teacher_ode_step
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.samplers.consistency import ConsistencySampler, consistency_x0
from genrl.samplers.ddim import DDIMSampler


@pytest.fixture()
def policy(tiny_policy_dir):
    return DiffusionPolicy.from_pretrained(tiny_policy_dir).eval()


def test_boundary_condition_holds_exactly_at_t_min_for_any_weights(policy):
    denoiser = policy.denoiser
    x = torch.randn(5, *policy.sample_shape)
    output = torch.randn_like(x) * 3  # any network output
    t_min = 2
    f = consistency_x0(denoiser, output, x, t_min, t_min)
    # exact up to float rounding: c_skip is exactly 1, so the network's output has weight exactly 0
    assert torch.allclose(f, x / denoiser.alphas(x)[t_min].sqrt(), rtol=1e-6, atol=0)
    # away from t_min the network's prediction enters
    assert not torch.allclose(consistency_x0(denoiser, output, x, 10, t_min), x / denoiser.alphas(x)[10].sqrt())


def test_multistep_sampler_is_f_then_renoise_then_f(policy):
    denoiser, condition = policy.denoiser, policy.condition(torch.randn(3, policy.n_obs_steps, policy.obs_dim))
    sampler = ConsistencySampler(policy.num_train_timesteps, num_steps=2, t_min=0)
    (t0, t1), (t1_again, end) = sampler.step_pairs
    assert t1 == t1_again and end == -1 and t0 == policy.num_train_timesteps - 1
    trajectory = sampler.sample(denoiser, condition, (3, *policy.sample_shape), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, *policy.sample_shape, generator=generator)
    with torch.no_grad():
        x0 = consistency_x0(denoiser, denoiser.model_output(x, t0, condition), x, t0, 0)
        a1 = denoiser.alphas(x)[t1]
        x = a1.sqrt() * x0 + (1 - a1).sqrt() * torch.randn(x0.shape, generator=generator)
        x0 = consistency_x0(denoiser, denoiser.model_output(x, t1, condition), x, t1, 0)
    assert torch.allclose(trajectory.states[:, -1], x0, atol=1e-5)
    assert trajectory.log_probs.shape == (3, 2) and sampler.stochastic_steps() == [0]
    with pytest.raises(ValueError, match="at least 1 step"):
        ConsistencySampler(policy.num_train_timesteps, num_steps=0)


def test_teacher_ode_step_is_ddim_with_eta_zero(policy):
    denoiser, condition = policy.denoiser, policy.condition(torch.randn(4, policy.n_obs_steps, policy.obs_dim))
    ddim = DDIMSampler(policy.num_train_timesteps, num_steps=5, eta=0.0)
    x = torch.randn(4, *policy.sample_shape)
    t, t_prev = ddim.step_pairs[1]
    with torch.no_grad():
        expected, _ = ddim.step(denoiser, x, 1, condition)
        got = teacher_ode_step(denoiser, x, torch.full((4,), t), torch.full((4,), t_prev), condition)
    assert torch.allclose(got, expected, atol=1e-6)


def test_distillation_loss_trains_only_the_student(policy):
    student, target, teacher = policy, copy.deepcopy(policy), copy.deepcopy(policy)
    for frozen in (target, teacher):
        frozen.requires_grad_(False)
    clean = torch.rand(6, *policy.sample_shape) * 2 - 1
    condition = policy.condition(torch.randn(6, policy.n_obs_steps, policy.obs_dim))
    grid = distillation_grid(policy.num_train_timesteps, 4)
    assert grid[0] == 0 and grid[-1] == policy.num_train_timesteps - 1 and torch.all(grid.diff() > 0)
    loss = consistency_distillation_loss(student.denoiser, target.denoiser, teacher.denoiser, clean, condition, grid,
                                         torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in [*target.parameters(), *teacher.parameters()])
    with pytest.raises(ValueError, match="num_intervals"):
        distillation_grid(policy.num_train_timesteps, 0)
