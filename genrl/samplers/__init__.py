"""Samplers run a denoising chain and return a Trajectory with per-step log-probs."""

from genrl.samplers.ddim import DDIMSampler
from genrl.samplers.ddpm import DDPMSampler
from genrl.samplers.gaussian_chain import GaussianChainSampler

__all__ = ["DDIMSampler", "DDPMSampler", "GaussianChainSampler", "build_sampler"]


def build_sampler(config, num_train_timesteps: int) -> GaussianChainSampler:
    """Sampler from a `SamplerConfig`."""
    if config.kind == "ddim":
        return DDIMSampler(num_train_timesteps, config.num_steps, eta=config.eta, final_alpha_one=config.final_alpha_one,
                           steps_offset=config.steps_offset)
    return DDPMSampler(num_train_timesteps, config.num_steps)
