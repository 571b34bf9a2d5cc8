"""Random-init models for `genrl pretrain`, built from the config's `model:` and `schedule:` sections.

A prompt model (`model.kind: prompt_diffusion`) is a PromptDiffusionModel: an image network
with cross-attention on a small text encoder over the Shapes vocabulary. A Diffusion Policy
(`model.kind: diffusion_policy`) is sized by its demonstrations (observation and action sizes)
and carries their normalisation statistics and the env it acts in. Both take their noise
schedule from the one `schedule:` section.
"""

from __future__ import annotations

from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from genrl.config import EnvConfig, PretrainConfig, ScheduleConfig
from genrl.data.demonstrations import Demonstrations
from genrl.errors import ConfigError
from genrl.models.networks import build_network
from genrl.models.prompt_diffusion_model import PromptDiffusionModel
from genrl.models.temporal_unet import TemporalUnet1D
from genrl.models.text_encoder import PromptEncoder, WordTokenizer
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.policies.diffusion.normalizer import Normalizer
from genrl.shapes import VOCABULARY


def build_scheduler(schedule: ScheduleConfig) -> DDPMScheduler | FlowMatchEulerDiscreteScheduler:
    if schedule.family == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=schedule.num_train_timesteps, shift=schedule.shift)
    return DDPMScheduler(num_train_timesteps=schedule.num_train_timesteps, beta_schedule=schedule.beta_schedule,
                         prediction_type=schedule.prediction_type, clip_sample=schedule.clip_sample)


def build_prompt_model(config: PretrainConfig) -> PromptDiffusionModel:
    spec = config.model
    tokenizer = WordTokenizer(VOCABULARY, spec.text_encoder.max_length)
    text_encoder = PromptEncoder(vocab_size=len(tokenizer.words), max_length=spec.text_encoder.max_length,
                                 hidden_size=spec.text_encoder.hidden_size, num_layers=spec.text_encoder.num_layers,
                                 num_heads=spec.text_encoder.num_heads)
    network_config = dict(spec.network.config)
    if spec.network.kind == "unet2d_condition":
        network_config.setdefault("cross_attention_dim", spec.text_encoder.hidden_size)
    network = build_network(spec.network.kind, network_config)
    return PromptDiffusionModel(network, text_encoder, tokenizer, build_scheduler(config.schedule))


def policy_env(config: PretrainConfig, demos: Demonstrations) -> EnvConfig:
    """The env the policy acts in: `eval.env` if set, else the one the demonstrations were collected in.
    A dataset from another env than `eval.env` is refused."""
    collected = demos.attrs.get("env")
    if config.eval.env is None:
        if collected is None:
            raise ConfigError(f"dataset {config.data.path} does not record its env; set eval.env")
        return EnvConfig.model_validate(collected)
    if collected is not None and collected.get("id") != config.eval.env.id:
        raise ConfigError(f"dataset {config.data.path} was collected in {collected.get('id')!r}, "
                          f"but eval.env.id is {config.eval.env.id!r}")
    return config.eval.env


def build_policy(config: PretrainConfig, demos: Demonstrations) -> DiffusionPolicy:
    """A random-init policy sized for the dataset, with the dataset's normalisation statistics."""
    spec = config.model
    obs_dim, action_dim = demos.obs.shape[1], demos.action.shape[1]
    network = TemporalUnet1D(action_dim=action_dim, global_cond_dim=obs_dim * spec.n_obs_steps, down_dims=tuple(spec.down_dims),
                             kernel_size=spec.kernel_size, n_groups=spec.n_groups, timestep_embed_dim=spec.timestep_embed_dim)
    policy_config = {"horizon": spec.horizon, "n_obs_steps": spec.n_obs_steps, "n_action_steps": spec.n_action_steps,
                     "obs_dim": obs_dim, "action_dim": action_dim, "env": policy_env(config, demos).model_dump(mode="json")}
    normalizer = Normalizer.fit(demos.obs, demos.action, spec.obs_normalization)
    return DiffusionPolicy(network, build_scheduler(config.schedule), normalizer, policy_config)


def build_model(config: PretrainConfig, demos: Demonstrations | None = None) -> PromptDiffusionModel | DiffusionPolicy:
    """The random-init model of `config.model.kind`; a Diffusion Policy needs its demonstrations."""
    if config.model.kind == "diffusion_policy":
        if demos is None:
            raise ValueError("a diffusion_policy is sized by its demonstrations: pass demos")
        return build_policy(config, demos)
    return build_prompt_model(config)
