"""Numeric checks of the denoising-MDP core against diffusers and torch.distributions."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from genrl.denoiser import Denoiser
from genrl.log_prob import gaussian_log_prob
from genrl.models.networks import build_network
from genrl.samplers import DDIMSampler, DDPMSampler


class ConstantNet(torch.nn.Module):
    """Returns a fixed output whatever the input: isolates the sampler's arithmetic."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, sample, timestep, return_dict=False, **condition):
        return (self.output.to(sample.dtype),)


def _denoiser(scheduler, output, prediction_type):
    return Denoiser(ConstantNet(output), scheduler.alphas_cumprod, prediction_type, scheduler.config.clip_sample)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_step_matches_diffusers(prediction_type, dtype, tolerance, eta):
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction_type,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    scheduler.set_timesteps(20)
    if dtype == torch.float64:  # let diffusers do its arithmetic in float64 too
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    sampler = DDIMSampler(1000, 20, eta=eta, final_alpha_one=False)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=generator, dtype=dtype)
    worst = 0.0
    for index, t in enumerate(scheduler.timesteps):
        output = torch.randn(2, 3, 8, 8, generator=generator, dtype=dtype)
        noise = torch.randn(2, 3, 8, 8, generator=generator, dtype=dtype)
        reference = scheduler.step(output, t, x, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
        mean, std = sampler.step(_denoiser(scheduler, output, prediction_type), x, index, condition={})
        ours = mean + std * noise if eta > 0 else mean
        worst = max(worst, (ours - reference).abs().max().item())
        x = reference
    assert worst <= tolerance


def test_ddim_eta0_is_deterministic_and_full_chain_matches_diffusers():
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True, set_alpha_to_one=True, steps_offset=0)
    scheduler.set_timesteps(10)
    network = build_network("unet2d", dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                                           layers_per_block=1, norm_num_groups=4)).eval()
    denoiser = Denoiser(network, scheduler.alphas_cumprod, "epsilon", clip_sample=True)
    sampler = DDIMSampler(1000, 10, eta=0.0, final_alpha_one=True, steps_offset=0)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    trajectory = sampler.sample(denoiser, {}, noise.shape, initial_noise=noise)
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(network(x, t).sample, t, x).prev_sample
    assert (trajectory.sample - x).abs().max() <= 1e-5
    assert sampler.stochastic_steps() == []


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_posterior_matches_diffusers(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    scheduler.set_timesteps(50)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # compare in float64
    scheduler.one = scheduler.one.double()
    sampler = DDPMSampler(1000, 50)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    for index, t in enumerate(scheduler.timesteps):
        output = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
        mean, std = sampler.step(_denoiser(scheduler, output, prediction_type), x, index, condition={})
        # diffusers draws its noise from the generator; replay the same draw to compare the full step.
        reference = scheduler.step(output, t, x, generator=torch.Generator().manual_seed(index)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(index), dtype=torch.float64)
        ours = mean + std * noise if t > 0 else mean
        assert (ours - reference).abs().max() <= 1e-6
        if t > 0:  # the variance itself
            assert abs(float(std) ** 2 - float(scheduler._get_variance(int(t)))) <= 1e-9
        x = reference
    assert sampler.stochastic_steps() == list(range(49))


@pytest.mark.parametrize("reduce", ["mean", "sum", "none"])
def test_gaussian_log_prob_matches_torch_distributions(reduce):
    x, mean = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    std = torch.tensor(0.37)
    reference = torch.distributions.Normal(mean, std).log_prob(x)
    if reduce == "mean":
        reference = reference.mean(dim=(1, 2, 3))
    elif reduce == "sum":
        reference = reference.sum(dim=(1, 2, 3))
    assert torch.allclose(gaussian_log_prob(x, mean, std, reduce), reference, atol=1e-5)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
@pytest.mark.parametrize("sampler", [DDIMSampler(1000, 5, eta=1.0), DDPMSampler(1000, 5)], ids=["ddim", "ddpm"])
def test_on_policy_importance_ratio_is_exactly_one(tiny_unet_config, guidance_scale, sampler):
    torch.manual_seed(0)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    network = build_network("unet2d_condition", tiny_unet_config)
    denoiser = Denoiser(network, scheduler.alphas_cumprod, "epsilon", clip_sample=True)
    condition = {"encoder_hidden_states": torch.randn(4, 5, 16)}
    null = {"encoder_hidden_states": torch.zeros(4, 5, 16)}
    trajectory = sampler.sample(denoiser, condition, (4, 3, 8, 8), generator=torch.Generator().manual_seed(3),
                                guidance_scale=guidance_scale, null_condition=null)
    for index in sampler.stochastic_steps():
        log_prob, _, _ = sampler.log_prob(denoiser, trajectory, index)
        ratio = torch.exp(log_prob - trajectory.log_probs[:, index])
        assert torch.equal(ratio, torch.ones_like(ratio)), (index, ratio)


def test_cfg_changes_the_output_and_scale_one_equals_conditional(tiny_unet_config):
    torch.manual_seed(0)
    network = build_network("unet2d_condition", tiny_unet_config)
    denoiser = Denoiser(network, DDPMScheduler().alphas_cumprod)
    x = torch.randn(2, 3, 8, 8)
    condition = {"encoder_hidden_states": torch.randn(2, 5, 16)}
    null = {"encoder_hidden_states": torch.zeros(2, 5, 16)}
    with torch.no_grad():
        conditional = network(x, torch.tensor([500, 500]), **condition).sample
        unconditional = network(x, torch.tensor([500, 500]), **null).sample
        guided = denoiser.model_output(x, 500, condition, 4.0, null)
    assert torch.allclose(denoiser.model_output(x, 500, condition, 1.0, null), conditional, atol=1e-6)
    assert torch.allclose(guided, unconditional + 4.0 * (conditional - unconditional), atol=1e-5)


@pytest.mark.parametrize("sampler", [DDIMSampler(1000, 6, eta=1.0), DDPMSampler(1000, 6)], ids=["ddim", "ddpm"])
def test_per_sample_step_indices_equal_one_step_at_a_time(tiny_unet_config, sampler):
    """DDPO trains each sample's steps in its own shuffled order: a (B,) step index must give
    exactly what scoring each sample at its own step separately gives."""
    torch.manual_seed(0)
    network = build_network("unet2d_condition", tiny_unet_config).eval()
    denoiser = Denoiser(network, DDPMScheduler().alphas_cumprod, "epsilon", clip_sample=True)
    condition = {"encoder_hidden_states": torch.randn(4, 5, 16)}
    trajectory = sampler.sample(denoiser, condition, (4, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    steps = torch.tensor([0, 3, 1, 4])
    with torch.no_grad():
        batched, _, _ = sampler.log_prob(denoiser, trajectory, steps)
        single = [sampler.log_prob(denoiser, trajectory.select(slice(i, i + 1)), int(s))[0] for i, s in enumerate(steps)]
    assert torch.allclose(batched, torch.cat(single), atol=1e-5)
    assert torch.allclose(batched, trajectory.log_probs[torch.arange(4), steps], atol=1e-5)
