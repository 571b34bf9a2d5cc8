"""Samplers run a denoising chain and return a Trajectory with per-step log-probs."""

from genrl.errors import ConfigError
from genrl.samplers.consistency import ConsistencySampler
from genrl.samplers.ddim import DDIMSampler
from genrl.samplers.ddpm import DDPMSampler
from genrl.samplers.flow_sde import FlowSDESampler
from genrl.samplers.gaussian_chain import GaussianChainSampler
from genrl.samplers.onedp import OneDPSampler
from genrl.samplers.piflow import PiFlowSampler, build_piflow_sampler

__all__ = ["ConsistencySampler", "DDIMSampler", "DDPMSampler", "FlowSDESampler", "GaussianChainSampler", "OneDPSampler", "PiFlowSampler",
           "build_sampler"]

FAMILY_OF_SAMPLER = {"ddim": "diffusion", "ddpm": "diffusion", "consistency": "diffusion", "onedp": "diffusion", "flow_sde": "flow",
                     "piflow": "any"}  # a pi-Flow student of either family samples in its flow view


def build_sampler(config, model) -> GaussianChainSampler:
    """Sampler from a `SamplerConfig` for `model` (anything with `family`, `num_train_timesteps`
    and, for flow models, `shift`)."""
    student = getattr(model, "distilled", None) or {}
    if student.get("method") in FAMILY_OF_SAMPLER and config.kind != student["method"]:
        # a few-step student is not a denoiser of every noise level: another chain would run it off its training
        raise ConfigError(f"the model is a {student['method']} student (made by `genrl distill`): sample it with "
                          f"sampler.kind={student['method']}" + (" sampler.num_steps=1" if student["method"] == "onedp" else "")
                          + f", not {config.kind!r}")
    if config.kind == "piflow":
        return build_piflow_sampler(config, model)
    if FAMILY_OF_SAMPLER[config.kind] != model.family:
        raise ConfigError(
            f"sampler.kind {config.kind!r} needs a {FAMILY_OF_SAMPLER[config.kind]} model, but the model is a "
            f"{model.family} model; use " + ("'flow_sde'" if model.family == "flow" else "'ddim' or 'ddpm'")
        )
    if config.kind != "flow_sde" and config.num_steps > model.num_train_timesteps:
        raise ConfigError(f"sampler.num_steps {config.num_steps} exceeds the model's {model.num_train_timesteps} training timesteps")
    if config.kind == "consistency":
        student = getattr(model, "distilled", None) or {}
        if student.get("method") != "consistency":
            raise ConfigError("sampler.kind 'consistency' needs a consistency student (made by `genrl distill` with "
                              "method.kind consistency); this model is not one")
        return ConsistencySampler(model.num_train_timesteps, config.num_steps, t_min=student["t_min"],
                                  sigma_data=student["sigma_data"])
    if config.kind == "onedp":
        student = getattr(model, "distilled", None) or {}
        if student.get("method") != "onedp":
            raise ConfigError("sampler.kind 'onedp' needs a OneDP student (made by `genrl distill` with method.kind onedp); "
                              "this model is not one")
        if config.num_steps != 1:
            raise ConfigError(f"sampler.kind 'onedp' samples in one call: sampler.num_steps must be 1, got {config.num_steps}")
        return OneDPSampler(student["k_init"], stochastic=student["variant"] == "stochastic")
    if config.kind == "ddim":
        sampler = DDIMSampler(model.num_train_timesteps, config.num_steps, eta=config.eta,
                              final_alpha_one=config.final_alpha_one, steps_offset=config.steps_offset)
    elif config.kind == "ddpm":
        sampler = DDPMSampler(model.num_train_timesteps, config.num_steps)
    else:
        sampler = FlowSDESampler(config.num_steps, noise_level=config.noise_level, shift=model.shift,
                                 num_train_timesteps=model.num_train_timesteps)
    sampler.min_std, sampler.min_logprob_std, sampler.noise_clip = config.min_std, config.min_logprob_std, config.noise_clip
    sampler.logprob_clamp = tuple(config.logprob_clamp) if config.logprob_clamp is not None else None
    return sampler
