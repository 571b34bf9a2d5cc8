"""One typed config schema for every command: YAML files plus dotted `key=value` overrides.

Each concept has one name and each section is defined once; images and actions differ only in
the `rollout:` section (`kind: prompts` or `kind: env`), in the pretraining `data:`/`model:`
sections (`kind: shapes` / `kind: demonstrations`), and in what the model directory holds.
Every section forbids unknown keys, so a typo such as `optimizer.learning_rat=1e-4` is an error
naming the key instead of a silently ignored setting. The fully resolved config is written to
`<output_dir>/config.yaml` by every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pydantic
import yaml
from pydantic import BeforeValidator, Discriminator, Field, Tag, model_validator

from genrl.errors import ConfigError
from genrl.policies.diffusion.configuration_diffusion import DiffusionPolicyConfig
from genrl.sections import Section

__all__ = ["Section", "load_config", "save_config"]

# YAML 1.1 reads a bare `no` as False; accept it for "no mixed precision".
MixedPrecision = Annotated[Literal["no", "fp16", "bf16"], BeforeValidator(lambda v: "no" if v is False else v)]


# ================================================================ shared sections
class SamplerConfig(Section):
    # ddim / ddpm for diffusion models; flow_sde for flow-matching models (noise_level 0 = Euler ODE);
    # consistency for a consistency student (`genrl distill`), num_steps its 1-3 calls; onedp for a OneDP
    # student (one call, num_steps 1); piflow for a pi-Flow student (num_steps = its NFE, 1-4)
    kind: Literal["ddim", "ddpm", "flow_sde", "consistency", "onedp", "piflow"] = "ddim"
    num_steps: int = Field(20, ge=1)
    eta: float = Field(1.0, ge=0.0)  # DDIM only: 0 deterministic, 1 DDPM-like variance (DDPO)
    noise_level: float = Field(0.7, ge=0.0)  # flow_sde only: the SDE's a (Flow-GRPO uses 0.7)
    guidance_scale: float = 1.0  # classifier-free guidance; 1.0 = off
    final_alpha_one: bool = False  # False keeps the last DDIM step stochastic (as SD/DDPO do)
    steps_offset: int = 1  # DDIM grid ends at t=1 (SD's scheduler setting)
    min_std: float = Field(0.0, ge=0)  # DPPO: floor on every step's std when sampling
    # DPPO: floor on the std a step's log-prob is scored with (sampling unchanged); keeps the
    # near-deterministic last steps from dominating the gradient with noise. 0 = off.
    min_logprob_std: float = Field(0.0, ge=0)
    noise_clip: float | None = Field(None, gt=0)  # DPPO: clamp the standard-normal sampling noise to +-noise_clip
    # DPPO: clamp each element's log-density to [low, high] before reducing (the reference uses [-5, 2]); None = off
    logprob_clamp: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _clamp_is_a_range(self):
        if self.logprob_clamp is not None and not self.logprob_clamp[0] < self.logprob_clamp[1]:
            raise ValueError(f"logprob_clamp must be (low, high) with low < high, got {list(self.logprob_clamp)}")
        return self


class OptimizerConfig(Section):
    learning_rate: float = Field(3e-4, gt=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0


class LoraConfig(Section):
    enabled: bool = True
    rank: int = Field(4, ge=1)
    alpha: float = 4.0
    target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]


class ModelConfig(Section):
    """The model to fine-tune or evaluate: a genrl model or policy directory, or a diffusers pipeline."""

    path: str = "models/shapes-diffusion"
    resolution: int | None = None  # pipelines: image size in pixels (default: the network's native size)
    decode_chunk_size: int = Field(8, ge=1)  # pipelines: latents decoded by the VAE at a time
    gradient_checkpointing: bool = False  # trade compute for memory in the trained network
    save_merged_model: bool = True  # also write the whole fine-tuned model (LoRA merged) to output_dir/model


class PromptConfig(Section):
    source: Literal["shapes", "list"] = "shapes"
    num_objects: tuple[int, int] = (1, 1)  # shapes: inclusive range of objects per prompt
    prompts: list[str] = []  # source=list: prompts drawn uniformly

    @model_validator(mode="after")
    def _list_needs_prompts(self):
        if self.source == "list" and not self.prompts:
            raise ValueError("source 'list' needs at least one prompt in prompts")
        return self


class RewardComponent(Section):
    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = {}


class RewardConfig(Section):
    """One reward (`name`: registered, or `my_module:function`), or a weighted sum of `components`."""

    name: str | None = "jpeg_compressibility"
    kwargs: dict[str, Any] = {}
    components: list[RewardComponent] = []

    @property
    def label(self) -> str:
        return "weighted_reward" if self.components else self.name


class EnvConfig(Section):
    """A gymnasium environment with a flat (state) observation and a Box action space.

    Any registered id works: `gym_pusht/...` and gymnasium-robotics ids are registered by genrl;
    your own env plugs in as `my_package.module:MyEnv-v0` (gymnasium imports the module first).
    """

    id: str = "PointMaze_UMaze-v3"
    kwargs: dict[str, Any] = {}  # passed to gym.make
    obs_keys: list[str] | None = None  # dict observations: these keys, concatenated in this order
    success_key: str = "success"  # info key that is true once the task is solved
    score_key: str | None = None  # an extra info value reported per episode (PushT: coverage)
    max_episode_steps: int | None = Field(None, ge=1)  # None: the env's registered limit
    render_kwargs: dict[str, Any] = {}  # passed to gym.make only for envs that record videos


class EpisodeEvalConfig(Section):
    """Seeded evaluation episodes: success rate, return, length (and the env's score) over N episodes."""

    num_episodes: int = Field(50, ge=1)
    num_envs: int = Field(10, ge=1)  # vectorised envs per wave
    seed: int = 100_000  # episode i resets with seed + i; far from collection and training seeds
    num_videos: int = Field(2, ge=0)  # episodes recorded (the first ones)
    video_format: Literal["gif", "mp4"] = "gif"
    video_fps: int = Field(20, ge=1)
    sampler: SamplerConfig | None = None  # None: the run's own sampler


# ================================================================ rollouts: what differs between images and actions
class PromptRollout(Section):
    """Images: sample chains for prompts, score the final images with a reward."""

    kind: Literal["prompts"] = "prompts"
    prompts: PromptConfig = PromptConfig()
    reward: RewardConfig = RewardConfig()
    metric_rewards: list[str] = ["shapes_alignment"]  # logged beside the reward, not optimised
    batch_size: int = Field(16, ge=1)  # chains sampled at once (per process)
    num_batches: int = Field(2, ge=1)  # sampling batches per epoch (per process)
    # Consecutive samples share a prompt in groups of this size: REBEL's pairs (2), B^2-DiffuRL's
    # children of one prefix (its branch factor), the diversity metric's groups.
    group_size: int = Field(1, ge=1)
    eval_samples: int = Field(64, ge=1)  # fixed samples scored before and after training
    eval_every: int = Field(0, ge=0)  # epochs between evaluations of the same fixed samples during training (0: before and after only)
    eval_group_size: int = Field(4, ge=1)  # repeats per evaluation prompt, for the diversity metric
    diversity_metric: Literal["pixel", "lpips"] = "pixel"  # distance among samples of one prompt
    diversity_lpips_weights: str | None = None  # lpips: the AlexNet backbone's weights (a torchvision state dict file)
    grid_prompts: int = Field(8, ge=1)  # prompts in the before/after sample grid

    @model_validator(mode="after")
    def _groups_fit(self):
        if self.batch_size % self.group_size:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of group_size ({self.group_size})")
        return self


class EnvRollout(Section):
    """Actions: run seeded episodes of the policy in vectorised environments; an episode is the reward."""

    kind: Literal["env"] = "env"
    env: EnvConfig = EnvConfig()
    num_envs: int = Field(16, ge=1)  # episodes per epoch (per process)
    # Consecutive envs share an initial state (reset seed) in groups of this size: advantages are then
    # standardised within the group, as DDPO's per-prompt statistics do; REBEL's pairs need 2.
    group_size: int = Field(1, ge=1)
    # The reward trained on: "env" the env's own; "success" 1 when the task is first solved; "score" the
    # step's increase of info[score_key] (an episode sums to its final score: PushT's final coverage).
    # "score" counts from the score at reset (PushT: coverage no action caused is not paid).
    reward: Literal["env", "success", "score"] = "env"
    success_bonus: float = 0.0  # added to the reward of the decision that first solves the task
    # Log-probs score only the executed actions of a chunk ([n_obs_steps - 1, + n_action_steps)), as
    # DPPO's reference does; the other predicted actions never reach the env and carry no reward signal.
    score_executed_only: bool = True
    eval: EpisodeEvalConfig = EpisodeEvalConfig()  # before/after
    eval_every: int = Field(0, ge=0)  # epochs between evaluations during training (0: before and after only)

    @model_validator(mode="after")
    def _groups_fit(self):
        if self.num_envs % self.group_size:
            raise ValueError(f"num_envs {self.num_envs} must be a multiple of group_size ({self.group_size})")
        if self.reward == "score" and self.env.score_key is None:
            raise ValueError("reward 'score' needs env.score_key (the info value to reward, e.g. coverage)")
        return self


def _kind_or(default: str):
    """A union's member chosen by its `kind` key; a section that leaves `kind` out gets `default`."""
    return Discriminator(lambda value: value.get("kind", default) if isinstance(value, dict) else getattr(value, "kind", default))


Rollout = Annotated[Union[Annotated[PromptRollout, Tag("prompts")], Annotated[EnvRollout, Tag("env")]], _kind_or("prompts")]


# ================================================================ algorithm sections (defined once)
class PPOConfig(Section):
    """The PPO-clip update of ddpo, pxpo, dppo (and the per-step update of sft_pg), and the advantages' statistics."""

    clip_range: float = Field(1e-4, gt=0)  # DDPO's reference: 1e-4 (the ratios of ~20 steps compound)
    adv_clip_max: float = Field(5.0, gt=0)
    timestep_fraction: float = Field(1.0, gt=0, le=1)  # share of each chain's steps trained, drawn per chain
    update_epochs: int = Field(1, ge=1)  # passes over the epoch's (chain, step) items
    per_group_advantages: bool = True  # standardise rewards within their group key (prompt / initial state)
    stat_buffer_size: int = Field(32, ge=1)  # rewards remembered per group key
    stat_min_count: int = Field(16, ge=1)  # below this many, the batch's statistics stand in
    kl_coef: float = Field(0.0, ge=0)  # KL to the frozen reference per step (Flow-GRPO form)


class RebelConfig(Section):
    """REBEL: regress the pair's relative log-ratio onto its relative reward."""

    # 1/eta scales the log-ratio difference. Its meaning depends on the per-step reduction: with
    # "mean" (the reference image code) a step's log-prob is the mean over its D elements; "sum"
    # multiplies every log-ratio by D, so the same 1/eta is D times stronger.
    eta_inverse: float = Field(1.0, gt=0)
    step_reduction: Literal["mean", "sum"] = "mean"
    standardize_rewards: bool = True  # rewards standardised with the group statistics (ppo.stat_*)
    pairs_per_update: int = Field(16, ge=1)  # pairs per optimizer step


class DPPOConfig(Section):
    """DPPO ("Diffusion Policy Policy Optimization"): GAE over env decisions, discounted along the chain."""

    gamma: float = Field(0.99, ge=0, le=1)  # per env decision (one executed action chunk)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    gamma_denoise: float = Field(0.99, ge=0, le=1)  # step k's advantage is discounted by gamma_denoise^(K-1-k)
    ft_denoising_steps: int | None = Field(None, ge=1)  # train only the chain's last k steps (None: all)
    clip_start: float = Field(1e-3, gt=0)  # clip range of the chain's first trained (noisiest) step
    clip_end: float = Field(1e-2, gt=0)  # clip range of its last (cleanest) step
    clip_rate: float = Field(3.0, gt=0)  # exponential rise from clip_start to clip_end
    value_learning_rate: float = Field(1e-3, gt=0)
    critic_warmup_epochs: int = Field(2, ge=0)  # first epochs train only the value net (a fresh V gives noise advantages)
    value_hidden: int = Field(256, ge=8)


class B2DiffuRLConfig(Section):
    """B^2-DiffuRL: backward progressive stages and branch-based sampling around DDPO or REBEL.
    Each prefix branches into `rollout.group_size` children."""

    enabled: bool = False
    num_stages: int | None = Field(None, ge=1)  # None: one stage per epoch
    split_step_start: int = Field(14, ge=1)  # steps trained at the first stage (the chain's last ones)
    split_step_end: int = Field(20, ge=1)  # steps trained at the last stage
    positive_threshold: float = 0.5  # keep a branch's best child if its z-score is at least this
    negative_threshold: float = -0.5  # keep a branch's worst child if its z-score is at most this


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


# ================================================================ genrl train
class TrainConfig(Section):
    """`genrl train`: RL fine-tuning of an image model (rollout.kind prompts) or a policy (rollout.kind env)."""

    trainer: Literal["ddpo", "pxpo", "rebel", "sft_pg", "dppo"] = "ddpo"
    seed: int = 0
    output_dir: str = "runs/train"
    resume: bool = False
    resume_allow_changes: bool = False  # resume even if settings other than RESUMABLE_KEYS changed
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig()
    rollout: Rollout = PromptRollout()
    ppo: PPOConfig = PPOConfig()
    rebel: RebelConfig = RebelConfig()
    dppo: DPPOConfig = DPPOConfig()
    b2diffurl: B2DiffuRLConfig = B2DiffuRLConfig()
    sft_pg: SFTPGConfig = SFTPGConfig()
    lora: LoraConfig = LoraConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    num_epochs: int = Field(10, ge=1)
    train_batch_size: int = Field(8, ge=1)  # (chain, denoising step) items per backward pass
    gradient_accumulation_steps: int = Field(1, ge=1)  # backward passes per optimizer step
    ema_decay: float = Field(0.0, ge=0, lt=1)  # 0 disables EMA of the trained weights
    mixed_precision: MixedPrecision = "no"
    checkpoint_every: int = Field(5, ge=1)  # epochs
    keep_checkpoints: int | None = Field(3, ge=1)  # the newest N are kept (None: all)
    log_with: list[Literal["tensorboard"]] = ["tensorboard"]


#: Settings a resumed run may change without `resume_allow_changes` (they do not alter what was learnt).
RESUMABLE_KEYS = ("resume", "resume_allow_changes", "num_epochs", "checkpoint_every", "keep_checkpoints", "log_with",
                  "rollout.eval_every")


# ================================================================ genrl pretrain
class ShapesData(Section):
    """The Shapes world, generated on the fly (never the same image twice)."""

    kind: Literal["shapes"] = "shapes"
    image_size: int = 32
    num_objects: tuple[int, int] = (1, 3)
    condition_dropout: float = Field(0.1, ge=0.0, le=1.0)  # captions dropped to "" (trains the null prompt for CFG)


class DemonstrationData(Section):
    """Windows of a demonstration dataset (zarr, Diffusion Policy layout; `genrl collect` writes one)."""

    kind: Literal["demonstrations"] = "demonstrations"
    path: str = "data/pointmaze_umaze.zarr"
    max_episodes: int | None = Field(None, ge=1)  # train on the first N episodes only (None: all)


class TokenShapesData(Section):
    """Single-object Shapes scenes as token grids (8 tokens), labelled by the object's position (9 classes)."""

    kind: Literal["token_shapes"] = "token_shapes"
    grid: int = Field(8, ge=4)
    condition_dropout: float = Field(0.1, ge=0.0, le=1.0)  # labels dropped to the null class (denoisers only)


class MarkovSequenceData(Section):
    """Token sequences whose class is a fixed sparse transition matrix (a "grammar")."""

    kind: Literal["markov_sequences"] = "markov_sequences"
    length: int = Field(32, ge=2)
    vocab_size: int = Field(8, ge=3)
    num_classes: int = Field(4, ge=2)
    world_seed: int = 0  # which grammars
    condition_dropout: float = Field(0.1, ge=0.0, le=1.0)


class DiscreteDiffusionConfig(Section):
    """A discrete denoiser (genrl/discrete/): MDLM (masking noise) or UDLM (uniform noise), class-conditional."""

    kind: Literal["discrete_diffusion"] = "discrete_diffusion"
    process: Literal["mdlm", "udlm"] = "mdlm"
    hidden: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)


class TokenClassifierConfig(Section):
    """A classifier of token sequences: of an MDLM's or UDLM's noisy tokens (D-CBG), or of clean ones ("none")."""

    kind: Literal["token_classifier"] = "token_classifier"
    noise: Literal["mdlm", "udlm", "none"] = "none"
    hidden: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)


class UFCEpisodeData(Section):
    """Episodes of one spatial condition type each (genrl/guidance/ufc_training.py): a support set and queries."""

    kind: Literal["ufc_episodes"] = "ufc_episodes"
    tasks: list[Literal["mask", "edges", "centres", "boxes"]] = ["mask", "centres", "boxes"]
    shots: int = Field(4, ge=1)  # support pairs per episode
    image_size: int = Field(32, ge=8)
    pool_size: int | None = Field(None, ge=2)  # a fixed pool of examples (few-shot: 30); None: fresh scenes
    pool_seed: int = 0


class UFCAdapterConfig(Section):
    """A UFC control adapter for a frozen prompt model (genrl/guidance/ufc.py)."""

    kind: Literal["ufc_adapter"] = "ufc_adapter"
    mode: Literal["meta", "few_shot", "fine_tune", "scratch"] = "meta"
    base_model: str = "models/shapes-diffusion"
    init_adapter: str | None = None  # few_shot / fine_tune: the meta-trained adapter
    match_channels: int = Field(32, ge=4)


class NetworkConfig(Section):
    kind: Literal["unet2d", "unet2d_condition", "dit"] = "unet2d_condition"
    config: dict[str, Any] = {}


class TextEncoderConfig(Section):
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    max_length: int = 24


class PromptModelConfig(Section):
    """A prompt-conditioned image denoiser with its own small text encoder (the Shapes models)."""

    kind: Literal["prompt_diffusion"] = "prompt_diffusion"
    network: NetworkConfig = NetworkConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()


class ScheduleConfig(Section):
    family: Literal["diffusion", "flow"] = "diffusion"
    shift: float = Field(1.0, gt=0)  # flow only: sigma shift of the sampling grid (SD3 uses 3.0)
    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    clip_sample: bool = True


class PretrainEvalConfig(Section):
    """What is measured at the end of pretraining: prompt match of `num_samples` images (Shapes), or
    `episodes` seeded episodes in `env` (policies; 0 skips)."""

    num_samples: int = Field(64, ge=1)
    env: EnvConfig | None = None
    episodes: EpisodeEvalConfig = EpisodeEvalConfig(num_episodes=50, sampler=SamplerConfig(kind="ddpm", num_steps=100))
    skip: bool = False


class PretrainConfig(Section):
    """`genrl pretrain`: train a base model from scratch on generated images or demonstrations."""

    seed: int = 0
    output_dir: str = "runs/pretrain"
    resume: bool = False
    data: Annotated[Union[Annotated[ShapesData, Tag("shapes")], Annotated[DemonstrationData, Tag("demonstrations")],
                          Annotated[TokenShapesData, Tag("token_shapes")], Annotated[MarkovSequenceData, Tag("markov_sequences")],
                          Annotated[UFCEpisodeData, Tag("ufc_episodes")]],
                    _kind_or("shapes")] = ShapesData()
    model: Annotated[Union[Annotated[PromptModelConfig, Tag("prompt_diffusion")],
                           Annotated[DiffusionPolicyConfig, Tag("diffusion_policy")],
                           Annotated[DiscreteDiffusionConfig, Tag("discrete_diffusion")],
                           Annotated[TokenClassifierConfig, Tag("token_classifier")],
                           Annotated[UFCAdapterConfig, Tag("ufc_adapter")]], _kind_or("prompt_diffusion")] = PromptModelConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, weight_decay=0.0)
    max_steps: int = Field(5000, ge=1)
    batch_size: int = Field(32, ge=1)
    warmup_steps: int = Field(200, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_warmup: bool = False  # diffusers' EMA warm-up (power 0.75), as Diffusion Policy trains
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int | None = Field(3, ge=1)
    eval: PretrainEvalConfig = PretrainEvalConfig()
    mixed_precision: MixedPrecision = "no"

    @model_validator(mode="after")
    def _model_fits_data(self):
        tokens = ("discrete_diffusion", "token_classifier")
        expected = {"shapes": ("prompt_diffusion",), "demonstrations": ("diffusion_policy",), "token_shapes": tokens,
                    "markov_sequences": tokens, "ufc_episodes": ("ufc_adapter",)}[self.data.kind]
        if self.model.kind not in expected:
            raise ValueError(f"data kind {self.data.kind!r} trains a model of kind {' or '.join(map(repr, expected))}, "
                             f"not {self.model.kind!r}")
        return self


# ================================================================ genrl distill
class ConsistencyMethod(Section):
    """Consistency distillation (distill/consistency.py): the student maps every point of the teacher's
    probability-flow ODE to its origin, so 1-3 calls sample. Warm-started from the teacher."""

    kind: Literal["consistency"] = "consistency"
    num_intervals: int = Field(20, ge=1)  # teacher ODE steps (DDIM, eta 0) the schedule is cut into
    target_ema_decay: float = Field(0.95, ge=0, lt=1)  # the target network's EMA of the student (0: the student, detached)
    sigma_data: float = Field(0.5, gt=0)
    dsm_weight: float = Field(1.0, ge=0)  # weight of the data-denoising term ||f(x_t, t) - x0||^2 (Consistency Policy's DSM)
    # "full": the whole network trains (warm-started from the teacher); "head" (policies): the teacher's
    # network stays frozen as a trunk and only a light head on its features trains (RL-100 style)
    student: Literal["full", "head"] = "full"
    head_channels: int = Field(64, ge=8)  # width of the head's two FiLM residual blocks


class PiFlowMethod(Section):
    """pi-Flow (distill/piflow.py; the policies in genrl/samplers/piflow.py): per segment ONE student call
    outputs a network-free policy (velocity at any later state), integrated by cheap Euler sub-steps;
    trained by imitation (pi-ID) of the teacher's velocity along the policy's own rollout. Image
    teachers (flow or DDPM-style, the latter through its flow view); warm-started from the teacher."""

    kind: Literal["piflow"] = "piflow"
    # gmm: a Gaussian mixture over x0 per pixel, velocity from its closed-form posterior mean (GMFlow);
    # dx: a grid of x0 predictions across the segment, interpolated in time
    policy: Literal["gmm", "dx"] = "gmm"
    num_components: int = Field(8, ge=1)  # GMM: K (the paper: 32 ImageNet, 8 FLUX); more fits multi-modal x0
    dx_grid: int = Field(10, ge=1)  # DX: N x0 predictions per segment (the paper's FLUX DX: 10)
    # segments = student calls the student is trained for (sampler.num_steps should match); a few-step method
    nfe: Literal[1, 2, 4] = 4
    final_step_size_scale: float = Field(0.5, gt=0, le=1)  # the last segment's length relative to the others
    substeps: int = Field(128, ge=1)  # Euler sub-steps of the policy per unit of raw time (the reference: 128)
    num_intermediate_states: int = Field(2, ge=1)  # teacher queries per segment along the rollout (ImageNet 2, FLUX 4)
    gm_dropout: float = Field(0.05, ge=0, lt=1)  # GMM: components dropped from the training rollout (wider coverage)
    teacher_guidance_scale: float = Field(1.0, ge=0)  # CFG on the teacher only (1: off); the student is unguided
    shift: float | None = Field(None, gt=0)  # time warp of the segments and sub-steps (None: the teacher's flow shift, else 1)


class OneDPMethod(Section):
    """OneDP (distill/onedp.py): a one-call generator, a copy of the teacher policy, trained to match the
    teacher's action distribution (reverse KL along the diffusion chain). Timesteps are on the paper's
    100-step scale and scaled to the teacher's schedule (k * T / 100)."""

    kind: Literal["onedp"] = "onedp"
    # stochastic (OneDP-S): noise in, an auxiliary score network tracks the generator's distribution;
    # deterministic (OneDP-D): no noise (z = 0), no auxiliary network
    variant: Literal["stochastic", "deterministic"] = "stochastic"
    k_init: int = Field(65, ge=0, le=99)  # the fixed timestep the generator is called at (the paper's 65)
    k_min: int = Field(2, ge=0, le=99)  # range the generator's actions are diffused over (the paper's [2, 95]):
    k_max: int = Field(95, ge=0, le=99)  # tiny and near-pure-noise timesteps carry no useful gradient
    aux_learning_rate: float = Field(2e-5, gt=0)  # OneDP-S: the auxiliary network's Adam (betas 0, 0.999), the paper's 2e-5

    @model_validator(mode="after")
    def _k_range(self):
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must not exceed k_max ({self.k_max})")
        return self


class DistillEvalConfig(Section):
    """Measured at the end: the student over seeded episodes (policies) or prompt match of samples (images),
    with `num_steps` student calls."""

    num_steps: int = Field(1, ge=1)
    num_samples: int = Field(64, ge=1)
    episodes: EpisodeEvalConfig = EpisodeEvalConfig(num_episodes=50)
    skip: bool = False


class DistillConfig(Section):
    """`genrl distill`: turn a multi-step teacher into a few-step student."""

    seed: int = 0
    output_dir: str = "runs/distill"
    resume: bool = False
    teacher: ModelConfig = ModelConfig()
    method: Annotated[Union[Annotated[ConsistencyMethod, Tag("consistency")], Annotated[OneDPMethod, Tag("onedp")],
                            Annotated[PiFlowMethod, Tag("piflow")]],
                      _kind_or("consistency")] = ConsistencyMethod()
    data: Annotated[Union[Annotated[ShapesData, Tag("shapes")], Annotated[DemonstrationData, Tag("demonstrations")]],
                    _kind_or("shapes")] = ShapesData()
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-4, weight_decay=0.0)
    max_steps: int = Field(2000, ge=1)
    batch_size: int = Field(64, ge=1)
    warmup_steps: int = Field(100, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)  # the saved student's EMA (apart from the method's target network)
    ema_warmup: bool = True
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int | None = Field(3, ge=1)
    eval: DistillEvalConfig = DistillEvalConfig()
    mixed_precision: MixedPrecision = "no"

    @model_validator(mode="after")
    def _onedp_is_one_call(self):
        if self.method.kind == "onedp" and self.eval.num_steps != 1:  # refused before training, not after it
            raise ValueError(f"method.kind onedp makes a one-call student: eval.num_steps must be 1, got {self.eval.num_steps}")
        return self


# ================================================================ genrl eval / genrl collect
class SketchConfig(Section):
    """The user input of ITPS steering, per evaluation episode (genrl/guidance/sketch.py)."""

    # detour: a path from the ball through another corridor to the goal, drawn from the episode's seed;
    # points: `points` for every episode (one point = a click, several = a sketch), in maze coordinates
    kind: Literal["detour", "points"] = "detour"
    points: list[tuple[float, float]] | None = None
    min_extra_cells: int = Field(2, ge=0)  # detour: how many cells longer than the shortest route
    max_extra_cells: int = Field(6, ge=0)
    spacing: float = Field(0.05, gt=0)  # the sketch is resampled to points this far apart
    lookahead: float = Field(0.5, gt=0)  # path length of the sketch the cost looks at past the ball's progress

    @model_validator(mode="after")
    def _points_given(self):
        if self.kind == "points" and not self.points:
            raise ValueError("sketch.kind 'points' needs sketch.points: a list of [x, y] in maze coordinates")
        if self.min_extra_cells > self.max_extra_cells:
            raise ValueError(f"sketch.min_extra_cells {self.min_extra_cells} exceeds max_extra_cells {self.max_extra_cells}")
        return self


class ITPSGuidance(Section):
    """Inference-time policy steering of a frozen Diffusion Policy (genrl/guidance/itps.py)."""

    kind: Literal["itps"] = "itps"
    method: Literal["unsteered", "output_perturbation", "post_hoc_ranking", "biased_init", "guided", "stochastic"] = "stochastic"
    scale: float = Field(1.0, ge=0, allow_inf_nan=False)  # guidance strength / gradient step size
    num_candidates: int = Field(16, ge=1)  # post_hoc_ranking
    perturb_steps: int = Field(10, ge=1)  # output_perturbation, biased_init
    init_fraction: float = Field(0.5, ge=0, lt=1)  # biased_init: share of the chain skipped
    mcmc_steps: int = Field(3, ge=0)  # stochastic: extra re-noise/denoise passes per step
    sketch: SketchConfig = SketchConfig()


class DiscreteGuidanceConfig(Section):
    """D-CFG / D-CBG for a discrete model (genrl/guidance/discrete.py)."""

    kind: Literal["discrete"] = "discrete"
    method: Literal["cfg", "cbg"] = "cfg"
    gamma: float = Field(1.0, ge=0, allow_inf_nan=False)  # 0: the unconditional model
    classifier_path: str | None = None  # cbg: a token classifier trained on the model's noisy tokens
    first_order: bool = True  # cbg: one gradient instead of L x K classifier rows per sample

    @model_validator(mode="after")
    def _classifier_given(self):
        if self.method == "cbg" and not self.classifier_path:
            raise ValueError("guidance.method 'cbg' needs guidance.classifier_path (a token classifier of the model's noisy tokens)")
        return self


class TokensRollout(Section):
    """A discrete model: `samples_per_class` samples of every class in `num_steps` steps, read back by
    `reader_path` (a clean token classifier) into the class hit rate."""

    kind: Literal["tokens"] = "tokens"
    samples_per_class: int = Field(16, ge=1)
    num_steps: int = Field(32, ge=1)
    reader_path: str | None = None


class SpatialControlRollout(Section):
    """Control fidelity on one spatial condition type (genrl/evaluation/spatial_control.py): `num_conditions`
    conditions of fresh scenes, the support set from the few-shot pool (`pool_size`, `pool_seed`)."""

    kind: Literal["spatial_control"] = "spatial_control"
    task: Literal["mask", "edges", "centres", "boxes"] = "edges"
    num_conditions: int = Field(32, ge=1)
    shots: int = Field(4, ge=1)
    pool_size: int = Field(30, ge=1)
    pool_seed: int = 0

    @model_validator(mode="after")
    def _support_fits_pool(self):
        if self.shots > self.pool_size:
            raise ValueError(f"rollout.shots {self.shots} exceeds rollout.pool_size {self.pool_size}")
        return self


class UFCGuidance(Section):
    """A UFC adapter steering a frozen prompt model toward spatial conditions (None: the base model alone)."""

    kind: Literal["ufc"] = "ufc"
    adapter_path: str | None = None


EvalRollout = Annotated[Union[Annotated[PromptRollout, Tag("prompts")], Annotated[EnvRollout, Tag("env")],
                              Annotated[TokensRollout, Tag("tokens")], Annotated[SpatialControlRollout, Tag("spatial_control")]],
                        _kind_or("prompts")]


class EvalConfig(Section):
    """`genrl eval`: sample a model and score it: images on `rollout.eval_samples` prompts (the reward
    and metric_rewards), or a policy over `rollout.eval` seeded episodes."""

    seed: int = 0
    output_dir: str = "runs/eval"
    model: ModelConfig = ModelConfig()
    sampler: SamplerConfig = SamplerConfig(eta=0.0)
    rollout: EvalRollout = PromptRollout(eval_samples=256, metric_rewards=["shapes_alignment"])
    batch_size: int = Field(32, ge=1)  # images sampled at once
    # steer sampling: ITPS for a policy (rollout.kind env), D-CFG / D-CBG for a discrete model (rollout.kind tokens)
    guidance: Annotated[Union[Annotated[ITPSGuidance, Tag("itps")], Annotated[DiscreteGuidanceConfig, Tag("discrete")],
                              Annotated[UFCGuidance, Tag("ufc")]], _kind_or("itps")] | None = None

    @model_validator(mode="after")
    def _guidance_fits_rollout(self):
        wanted = {"itps": "env", "discrete": "tokens", "ufc": "spatial_control"}
        if self.guidance is not None and wanted[self.guidance.kind] != self.rollout.kind:
            raise ValueError(f"guidance.kind {self.guidance.kind!r} steers a rollout.kind {wanted[self.guidance.kind]!r} "
                             f"evaluation, not {self.rollout.kind!r}")
        return self


class ExportModel(Section):
    path: str = "models/policy-pusht"  # a saved Diffusion Policy: a teacher, a fine-tuned policy or a distilled student


class ExportConfig(Section):
    """`genrl export`: a policy as ONNX + numpy runtime for a robot stack (genrl/export/)."""

    output_dir: str = "runs/export"
    model: ExportModel = ExportModel()
    # the chain the runtime runs: the teacher's DDPM / DDIM, or the student's own (consistency / onedp)
    sampler: SamplerConfig = SamplerConfig(kind="ddim", num_steps=10, eta=0.0)
    opset: int = Field(17, ge=13, le=21)  # ONNX opset of policy.onnx


class CollectSection(Section):
    expert: Literal["pointmaze_planner", "pusht_pusher"] = "pointmaze_planner"
    expert_kwargs: dict[str, Any] = {}  # e.g. {noise: 0.3}
    num_episodes: int = Field(100, ge=1)
    only_successful: bool = False  # keep failed expert episodes too (they are recorded as such)
    seed: int = 0  # episode i resets the env with seed + i


class DatasetConfig(Section):
    path: str = "data/pointmaze_umaze.zarr"


class CollectConfig(Section):
    """`genrl collect`: run a scripted expert and write a demonstration dataset."""

    env: EnvConfig = EnvConfig()
    collect: CollectSection = CollectSection()
    dataset: DatasetConfig = DatasetConfig()


# ================================================================ genrl demo
class DemoImageModel(Section):
    """One image model of the demo: a Shapes model, a fine-tuned run's model/ or a distilled student."""

    name: str
    path: str
    sampler: SamplerConfig = SamplerConfig(eta=0.0)  # its default sampler (a student: its own kind)
    notes: str = ""  # shown on the page, e.g. the command that made it


class DemoPolicy(Section):
    """One policy of the demo: a teacher, an RL fine-tuned policy or a distilled student, and its env."""

    name: str
    path: str
    env: EnvConfig = EnvConfig()
    sampler: SamplerConfig = SamplerConfig(kind="ddim", num_steps=10, eta=0.0)


class DemoConfig(Section):
    """`genrl demo`: a gradio page that samples the image models side by side and runs policy episodes
    (with ITPS steering on PointMaze); genrl/demo/."""

    output_dir: str = "runs/demo"  # rollout videos and pictures the page shows
    host: str = "127.0.0.1"  # 0.0.0.0 exposes the page to the network: only do so on a trusted one
    port: int = Field(7860, ge=0, le=65535)  # 0: gradio picks the first free port from 7860
    image_models: list[DemoImageModel] = []
    policies: list[DemoPolicy] = []
    rewards: list[str] = ["shapes_alignment", "jpeg_compressibility"]  # scored under every sample
    max_samples: int = Field(8, ge=1, le=64)  # per model and click
    max_episode_steps: int = Field(600, ge=1)  # a demo episode is cut here so a click answers in seconds

    @model_validator(mode="after")
    def _something_to_show(self):
        if not self.image_models and not self.policies:
            raise ValueError("the demo needs at least one entry in image_models or policies")
        for entries, what in ((self.image_models, "image_models"), (self.policies, "policies")):
            names = [entry.name for entry in entries]
            if len(set(names)) != len(names):
                raise ValueError(f"{what} has two entries with the same name")
        return self


COMMAND_CONFIGS: dict[str, type[Section]] = {
    "collect": CollectConfig, "pretrain": PretrainConfig, "train": TrainConfig, "eval": EvalConfig, "export": ExportConfig,
    "distill": DistillConfig, "demo": DemoConfig,
}


# ================================================================ loading
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


UNION_SECTIONS = ("rollout", "data", "model", "method", "guidance")
UNION_TAGS = ("prompts", "env", "tokens", "shapes", "demonstrations", "token_shapes", "markov_sequences", "prompt_diffusion",
              "diffusion_policy", "discrete_diffusion", "token_classifier", "ufc_episodes", "ufc_adapter", "spatial_control", "ufc", "consistency", "onedp", "piflow", "itps", "discrete")


def _first_error(error: pydantic.ValidationError) -> str:
    first = error.errors()[0]
    # pydantic names the chosen member of a tagged union (rollout.prompts.batch_size): drop the tag.
    loc = [str(part) for part in first["loc"]]
    parts = [part for i, part in enumerate(loc) if not (i > 0 and loc[i - 1] in UNION_SECTIONS and "tagged-union" not in part
                                                        and part in UNION_TAGS)]
    location = ".".join(parts) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown config key {location!r}"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error":
        return f"config {location!r}: {message}" if parts else f"config: {message}"
    return f"config key {location!r}: {message} (got {first.get('input')!r})"


def load_config(command: str, path: str | Path | None, overrides: list[str] = ()) -> Section:
    """Read YAML, apply overrides, validate. Raises ConfigError with a one-line message."""
    if command not in COMMAND_CONFIGS:
        raise ConfigError(f"unknown command {command!r}; choose one of {sorted(COMMAND_CONFIGS)}")
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
    try:
        return COMMAND_CONFIGS[command].model_validate(tree)
    except pydantic.ValidationError as error:
        raise ConfigError(_first_error(error)) from None


def save_config(config: Section, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved config trees."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed
