"""Typed run configs: YAML files plus dotted `key=value` overrides, validated by pydantic.

Every section forbids unknown keys, so a typo such as `train.learning_rat=1e-4` is an
error naming the key instead of a silently ignored setting. The fully resolved config
is written to `<output_dir>/config.yaml` by every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from genrl.errors import ConfigError


# YAML 1.1 reads a bare `no` as False; accept it for "no mixed precision".
MixedPrecision = Annotated[Literal["no", "fp16", "bf16"], BeforeValidator(lambda v: "no" if v is False else v)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- shared sections
class SamplerConfig(Section):
    # ddim / ddpm for diffusion models; flow_sde for flow-matching models (noise_level 0 = Euler ODE)
    kind: Literal["ddim", "ddpm", "flow_sde"] = "ddim"
    num_steps: int = Field(20, ge=1)
    eta: float = Field(1.0, ge=0.0)  # DDIM only: 0 deterministic, 1 DDPM-like variance (DDPO)
    noise_level: float = Field(0.7, ge=0.0)  # flow_sde only: the SDE's a (Flow-GRPO uses 0.7)
    guidance_scale: float = 1.0  # classifier-free guidance; 1.0 = off
    final_alpha_one: bool = False  # False keeps the last DDIM step stochastic (as SD/DDPO do)
    steps_offset: int = 1  # DDIM grid ends at t=1 (SD's scheduler setting)
    min_std: float = Field(0.0, ge=0)  # DPPO: floor on every step's std, in sampling and re-scoring alike
    noise_clip: float | None = Field(None, gt=0)  # DPPO: clamp the standard-normal sampling noise to +-noise_clip


class PromptConfig(Section):
    source: Literal["shapes", "list"] = "shapes"
    num_objects: tuple[int, int] = (1, 1)  # shapes: inclusive range of objects per prompt
    prompts: list[str] = []  # source=list: prompts drawn uniformly


class LoraConfig(Section):
    enabled: bool = True
    rank: int = Field(4, ge=1)
    alpha: float = 4.0
    target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]


class OptimizerConfig(Section):
    learning_rate: float = Field(3e-4, gt=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0


# ---------------------------------------------------------------- pretraining
class ShapesDataConfig(Section):
    image_size: int = 32
    num_objects: tuple[int, int] = (1, 3)


class NetworkConfig(Section):
    kind: Literal["unet2d", "unet2d_condition", "dit"] = "unet2d_condition"
    config: dict[str, Any] = {}


class TextEncoderConfig(Section):
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    max_length: int = 24


class ScheduleConfig(Section):
    family: Literal["diffusion", "flow"] = "diffusion"
    shift: float = Field(1.0, gt=0)  # flow only: sigma shift of the sampling grid (SD3 uses 3.0)
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    clip_sample: bool = True


class PretrainConfig(Section):
    seed: int = 0
    output_dir: str = "runs/pretrain"
    data: ShapesDataConfig = ShapesDataConfig()
    network: NetworkConfig = NetworkConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, weight_decay=0.0)
    max_steps: int = Field(5000, ge=1)
    batch_size: int = Field(32, ge=1)
    warmup_steps: int = 200
    condition_dropout: float = Field(0.1, ge=0.0, le=1.0)  # trains the null prompt for CFG
    ema_decay: float = 0.999
    log_every: int = 50
    checkpoint_every: int = 1000
    eval_samples: int = 64  # prompt-match share measured at the end (20 DDIM steps)
    mixed_precision: MixedPrecision = "no"
    resume: bool = False


# ---------------------------------------------------------------- RL fine-tuning
class ModelConfig(Section):
    path: str = "models/shapes-diffusion"  # a genrl model directory or a diffusers pipeline directory
    resolution: int | None = None  # pipelines: image size in pixels (default: the network's native size)
    decode_chunk_size: int = Field(8, ge=1)  # pipelines: latents decoded by the VAE at a time
    gradient_checkpointing: bool = False  # trade compute for memory in the trained network
    save_merged_model: bool = True  # also write the whole fine-tuned model (LoRA merged) to output_dir/model


class RewardComponent(Section):
    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = {}


class RewardConfig(Section):
    """One registered reward (`name`, `kwargs`), or a weighted sum of `components`."""

    name: str | None = "jpeg_compressibility"
    kwargs: dict[str, Any] = {}
    components: list[RewardComponent] = []

    @property
    def label(self) -> str:
        return "weighted_reward" if self.components else self.name


class DDPOConfig(Section):
    clip_range: float = Field(1e-4, gt=0)
    adv_clip_max: float = Field(5.0, gt=0)
    timestep_fraction: float = Field(1.0, gt=0, le=1)
    num_inner_epochs: int = Field(1, ge=1)
    per_prompt_stat_tracking: bool = True
    stat_buffer_size: int = 32
    stat_min_count: int = 16
    kl_coef: float = Field(0.0, ge=0)  # KL to the frozen reference per step (Flow-GRPO form)


class RebelConfig(Section):
    """REBEL: regress the pair's relative log-ratio onto its relative reward."""

    eta_inverse: float = Field(1.0, gt=0)  # 1/eta scales the log-ratio difference (reference images: 1)
    standardize_rewards: bool = True  # per-prompt standardised rewards, as the reference image setting


class B2DiffuRLConfig(Section):
    """B^2-DiffuRL: backward progressive stages and branch-based sampling around DDPO or REBEL."""

    enabled: bool = False
    num_stages: int | None = Field(None, ge=1)  # None: one stage per epoch
    split_step_start: int = Field(14, ge=1)  # steps trained at the first stage (the chain's last ones)
    split_step_end: int = Field(20, ge=1)  # steps trained at the last stage
    branch_factor: int = Field(5, ge=2)  # children sampled from each shared prefix
    positive_threshold: float = 0.5  # keep a branch's best child if its z-score is at least this
    negative_threshold: float = -0.5  # keep a branch's worst child if its z-score is below this


class SFTPGConfig(Section):
    """Shortcut Fine-Tuning: an IPM critic against real data and a policy gradient on a few-step sampler."""

    real_data: str = "shapes"  # "shapes" (the Shapes generator) or a directory of images
    critic_steps: int = Field(5, ge=1)  # critic updates per epoch
    critic_warmup_steps: int = Field(100, ge=0)  # extra critic updates in the first epoch: a fresh critic's scores are noise
    critic_batch_size: int = Field(32, ge=2)
    critic_learning_rate: float = Field(1e-4, gt=0)
    gradient_penalty: float = Field(10.0, ge=0)  # WGAN-GP weight (keeps the critic ~1-Lipschitz)
    critic_width: int = Field(32, ge=4)
    value_steps: int = Field(10, ge=1)  # baseline V(x_t, t) regression updates per epoch
    value_learning_rate: float = Field(1e-3, gt=0)
    normalize_advantages: bool = True  # divide f(x0) - V by their std (the critic's scale is arbitrary)


class TrainConfig(Section):
    trainer: Literal["ddpo", "pxpo", "rebel", "sft_pg"] = "ddpo"
    seed: int = 0
    output_dir: str = "runs/train"
    resume: bool = False
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    prompts: PromptConfig = PromptConfig()
    reward: RewardConfig = RewardConfig()
    metric_rewards: list[str] = ["shapes_alignment"]  # logged beside the reward, not optimised
    ddpo: DDPOConfig = DDPOConfig()  # PPO settings, shared by ddpo, pxpo and b2diffurl
    rebel: RebelConfig = RebelConfig()
    b2diffurl: B2DiffuRLConfig = B2DiffuRLConfig()
    sft_pg: SFTPGConfig = SFTPGConfig()
    lora: LoraConfig = LoraConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    num_epochs: int = Field(10, ge=1)
    samples_per_prompt: int = Field(1, ge=1)  # consecutive samples share a prompt (REBEL's pairs: 2)
    sample_batch_size: int = Field(16, ge=1)
    num_sample_batches: int = Field(2, ge=1)  # per epoch (per process)
    train_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)  # minibatches per optimizer step (x trained steps)
    eval_samples: int = Field(64, ge=1)  # fixed samples scored before and after training
    eval_samples_per_prompt: int = Field(4, ge=1)  # repeats per evaluation prompt, for the diversity metric
    diversity_metric: Literal["pixel", "lpips"] = "pixel"  # distance among samples of one prompt
    ema_decay: float = 0.0  # 0 disables EMA of the trained weights
    mixed_precision: MixedPrecision = "no"
    checkpoint_every: int = 5  # epochs
    grid_prompts: int = 8  # prompts in the before/after sample grids
    log_with: list[Literal["tensorboard"]] = ["tensorboard"]


# ---------------------------------------------------------------- evaluation
class EvalConfig(Section):
    seed: int = 0
    output_dir: str = "runs/eval"
    resume: bool = False  # eval writes nothing resumable; true only allows reusing output_dir
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig(eta=0.0)
    prompts: PromptConfig = PromptConfig()
    num_samples: int = Field(256, ge=1)
    batch_size: int = Field(32, ge=1)
    rewards: list[str] = ["shapes_alignment", "jpeg_compressibility"]


COMMAND_CONFIGS: dict[str, type[Section]] = {"pretrain": PretrainConfig, "train": TrainConfig, "eval": EvalConfig}


def _schema(command: str, domain: Any) -> type[Section]:
    """Image configs (no `domain` key) or action-policy configs (`domain: action`)."""
    if domain == "action":
        from genrl.policy.config import PolicyConfig, PolicyRLConfig

        return {"collect": PolicyConfig, "pretrain": PolicyConfig, "eval": PolicyConfig, "train": PolicyRLConfig}[command]
    if domain is not None:
        raise ConfigError(f"config key 'domain': 'action' is the only domain to name (image configs leave it out); got {domain!r}")
    if command not in COMMAND_CONFIGS:
        raise ConfigError(f"`genrl {command}` works on action-policy configs (domain: action), not image configs")
    return COMMAND_CONFIGS[command]


# ---------------------------------------------------------------- loading
def _set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    *parents, leaf = dotted_key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted_key!r}: {part!r} is not a section")
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def _first_error(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown config key {location!r}"
    return f"config key {location!r}: {first['msg']} (got {first.get('input')!r})"


def load_config(command: str, path: str | Path | None, overrides: list[str] = ()) -> Section:
    """Read YAML, apply overrides, validate. Raises ConfigError with a one-line message."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(tree, key, value)
    schema = _schema(command, tree.get("domain"))
    try:
        return schema.model_validate(tree)
    except pydantic.ValidationError as error:
        raise ConfigError(_first_error(error)) from None


def save_config(config: Section, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
