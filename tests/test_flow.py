"""Flow-matching sampler: ODE equals diffusers' FlowMatchEulerDiscreteScheduler; SDE is consistent."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from genrl.flow_denoiser import FlowDenoiser
from genrl.log_prob import gaussian_log_prob
from genrl.samplers.flow_sde import FlowSDESampler


class LinearVelocity(torch.nn.Module):
    """u = x * w + t/1000: depends on input and timestep, so a wrong timestep or state shows."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, sample, timestep, return_dict=False, **condition):
        x, t = sample, timestep
        return (x * self.w + t.reshape(-1, 1, 1, 1).to(x.dtype) / 1000,)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_ode_matches_flow_match_euler_scheduler(shift):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(12)
    network = LinearVelocity()
    denoiser = FlowDenoiser(network, 1000)
    sampler = FlowSDESampler(12, noise_level=0.0, shift=shift)
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = sampler.sample(denoiser, {}, noise.shape, initial_noise=noise).sample
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(network(x, t.expand(2))[0], t, x).prev_sample
    assert (ours - x).abs().max() <= 1e-5
    assert sampler.stochastic_steps() == []


def test_flow_sde_step_formula_and_on_policy_ratio():
    sampler = FlowSDESampler(10, noise_level=0.7)
    denoiser = FlowDenoiser(LinearVelocity(), 1000)
    trajectory = sampler.sample(denoiser, {}, (3, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    assert sampler.stochastic_steps() == list(range(9))
    for index in sampler.stochastic_steps():
        log_prob, mean, std = sampler.log_prob(denoiser, trajectory, index)
        assert torch.equal(log_prob, trajectory.log_probs[:, index])
        # Formula written out independently for one step.
        sigma, sigma_next = sampler.step_pairs[index]
        x = trajectory.states[:, index]
        with torch.no_grad():
            u = denoiser.network(x, torch.full((3,), sigma * 1000))[0]
        denominator = 1 - (sampler.step_pairs[1][0] if sigma >= 1 else sigma)
        g = 0.7 * (sigma / denominator) ** 0.5
        dt = sigma_next - sigma
        expected_mean = x + (u + g**2 / (2 * sigma) * (x + (1 - sigma) * u)) * dt
        assert torch.allclose(mean, expected_mean, atol=1e-5)
        assert abs(float(std.flatten()[0]) - g * (-dt) ** 0.5) < 1e-6
        expected = gaussian_log_prob(trajectory.states[:, index + 1], expected_mean, g * (-dt) ** 0.5)
        assert torch.allclose(log_prob, expected, atol=1e-4)


def test_flow_sde_keeps_the_ode_marginals_on_gaussian_data():
    """With the exact velocity of N(0, s^2) data, SDE samples must end with std s, like the ODE."""
    data_std = 0.5

    class ExactVelocity(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # samplers read the device off a parameter

        def forward(self, sample, timestep, return_dict=False, **condition):
            x, t = sample, timestep
            sigma = (t / 1000).reshape(-1, 1, 1, 1)
            # x = (1-sigma) x0 + sigma eps with x0 ~ N(0, s^2): E[eps - x0 | x] = x * (sigma - (1-sigma) s^2) / var
            var = (1 - sigma) ** 2 * data_std**2 + sigma**2
            return (x * (sigma - (1 - sigma) * data_std**2) / var,)

    denoiser = FlowDenoiser(ExactVelocity(), 1000)
    for noise_level in (0.0, 0.8):
        sampler = FlowSDESampler(50, noise_level=noise_level)
        sample = sampler.sample(denoiser, {}, (4000, 1, 1, 1), generator=torch.Generator().manual_seed(1)).sample
        assert abs(sample.std().item() - data_std) < 0.03, (noise_level, sample.std().item())
