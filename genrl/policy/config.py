"""Typed configs for action policies (`domain: action`).

One file per task serves `genrl collect`, `genrl pretrain` and `genrl eval`
(`configs/policy/<task>.yaml`: the env, the expert, the dataset, the policy, its training
and its evaluation); RL fine-tuning has its own files (`configs/policy_rl/`) for `genrl train`.
`genrl.config.load_config` picks these schemas when the YAML says `domain: action`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from genrl.config import MixedPrecision, OptimizerConfig, SamplerConfig, Section


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


class CollectConfig(Section):
    expert: Literal["pointmaze_planner", "pusht_pusher"] = "pointmaze_planner"
    expert_kwargs: dict[str, Any] = {}  # e.g. {noise: 0.3}
    num_episodes: int = Field(100, ge=1)
    only_successful: bool = False  # keep failed expert episodes too (they are recorded as such)
    seed: int = 0  # episode i resets the env with seed + i


class DatasetConfig(Section):
    path: str = "data/pointmaze_umaze.zarr"


class PolicyNetworkConfig(Section):
    horizon: int = Field(16, ge=4)
    n_obs_steps: int = Field(2, ge=1)
    n_action_steps: int = Field(8, ge=1)
    down_dims: list[int] = [32, 64, 128]
    kernel_size: int = Field(5, ge=1)
    n_groups: int = Field(8, ge=1)
    timestep_embed_dim: int = Field(64, ge=8)
    num_train_timesteps: int = Field(100, ge=2)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    clip_sample: bool = True
    obs_normalization: Literal["limits", "gaussian"] = "limits"


class BCConfig(Section):
    """Behaviour cloning: DDPM denoising loss on (observation history, action chunk) windows."""

    max_steps: int = Field(10000, ge=1)
    batch_size: int = Field(256, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-4, weight_decay=1e-6)
    warmup_steps: int = Field(500, ge=0)
    ema_decay: float = Field(0.9999, ge=0, lt=1)  # with diffusers' EMA warm-up (power 0.75), as Diffusion Policy
    log_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(2000, ge=1)
    eval_episodes: int = Field(50, ge=0)  # evaluated at the end with `eval`'s settings (0: skip)


class EpisodeEvalConfig(Section):
    """Seeded evaluation episodes: success rate, return, length (and the env's score) over N episodes."""

    num_episodes: int = Field(50, ge=1)
    num_envs: int = Field(10, ge=1)  # vectorised envs per wave
    seed: int = 100_000  # episode i resets with seed + i; far from the collection seeds
    num_videos: int = Field(2, ge=0)  # episodes recorded (the first ones)
    video_format: Literal["gif", "mp4"] = "gif"
    video_fps: int = Field(20, ge=1)


class PolicyEvalConfig(EpisodeEvalConfig):
    sampler: SamplerConfig = SamplerConfig(kind="ddpm", num_steps=100)  # Diffusion Policy's reference sampler


class PolicyConfig(Section):
    """`genrl collect | pretrain | eval` for an action policy."""

    domain: Literal["action"] = "action"
    seed: int = 0
    output_dir: str = "runs/policy"
    resume: bool = False
    env: EnvConfig = EnvConfig()
    collect: CollectConfig = CollectConfig()
    dataset: DatasetConfig = DatasetConfig()
    policy: PolicyNetworkConfig = PolicyNetworkConfig()
    pretrain: BCConfig = BCConfig()
    eval: PolicyEvalConfig = PolicyEvalConfig()
    policy_path: str = "models/policy-pointmaze-umaze"  # what `genrl eval` evaluates
    mixed_precision: MixedPrecision = "no"


# ---------------------------------------------------------------- RL fine-tuning
class PolicyPPOConfig(Section):
    """The PPO-clip update shared by the `ddpo` and `dppo` trainers."""

    clip_range: float = Field(1e-2, gt=0)  # ddpo: one clip range for every step
    adv_clip_max: float = Field(5.0, gt=0)
    update_epochs: int = Field(4, ge=1)  # passes over the iteration's (chain, denoising step) pairs


class DPPOConfig(Section):
    """DPPO ("Diffusion Policy Policy Optimization"): GAE over env steps, discounted along the chain."""

    gamma: float = Field(0.99, ge=0, le=1)  # per env decision (one executed action chunk)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    gamma_denoise: float = Field(0.99, ge=0, le=1)  # the advantage of step k is discounted by gamma_denoise^(K-1-k)
    ft_denoising_steps: int | None = Field(None, ge=1)  # train only the chain's last k steps (None: all)
    clip_start: float = Field(1e-3, gt=0)  # clip range of the chain's first trained (noisiest) step
    clip_end: float = Field(1e-2, gt=0)  # clip range of its last (cleanest) step
    clip_rate: float = Field(3.0, gt=0)  # exponential rise from clip_start to clip_end
    value_learning_rate: float = Field(1e-3, gt=0)
    critic_warmup_iterations: int = Field(2, ge=0)  # first iterations train only the value net (a fresh V gives noise advantages)
    value_hidden: int = Field(256, ge=8)
    value_coef: float = Field(0.5, ge=0)


class PolicyRebelConfig(Section):
    """REBEL on actions: pairs of episodes from the same initial state (envs 2j and 2j+1)."""

    eta_inverse: float = Field(1.0, gt=0)  # 1/eta scales the episodes' relative log-ratio
    standardize_rewards: bool = True  # episode rewards divided by the batch's std, centred
    pairs_per_update: int = Field(4, ge=1)  # pairs per optimizer step


class PolicyRLConfig(Section):
    """`genrl train` for an action policy: DDPO (episode-level), DPPO or REBEL."""

    domain: Literal["action"] = "action"
    trainer: Literal["ddpo", "dppo", "rebel"] = "dppo"
    seed: int = 0
    output_dir: str = "runs/policy_rl"
    resume: bool = False
    policy_path: str = "models/policy-pointmaze-medium"
    env: EnvConfig = EnvConfig(id="PointMaze_Medium-v3")
    # DPPO's stabilisers are sampler settings, so they hold for every trainer and for evaluation:
    # min_std floors each denoising step's std (without it the near-deterministic final steps, std
    # ~1e-2, dominate the gradient with noise), noise_clip clamps the sampling noise.
    sampler: SamplerConfig = SamplerConfig(kind="ddim", num_steps=10, eta=1.0, min_std=0.1, noise_clip=3.0)
    num_iterations: int = Field(50, ge=1)
    num_envs: int = Field(16, ge=1)  # episodes per iteration, per process
    # Consecutive envs share an initial state (reset seed) in groups of this size. DDPO then
    # standardises each episode's reward within its group, as DDPO's per-prompt statistics do:
    # otherwise easy and hard start states, not actions, decide the advantages. REBEL needs 2.
    episodes_per_state: int = Field(1, ge=1)
    # The reward trained on: "env" the env's own; "success" 1 when the task is first solved; "score" the
    # step's increase of info[score_key] (an episode sums to its final score: PushT's final coverage).
    # DDPO and REBEL use the episode's sum, DPPO the per-decision values.
    reward: Literal["env", "success", "score"] = "env"
    ppo: PolicyPPOConfig = PolicyPPOConfig()
    dppo: DPPOConfig = DPPOConfig()
    rebel: PolicyRebelConfig = PolicyRebelConfig()
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-5, weight_decay=0.0)
    train_batch_size: int = Field(512, ge=1)  # (chain, denoising step) pairs per optimizer step
    ema_decay: float = 0.0
    eval: EpisodeEvalConfig = EpisodeEvalConfig()  # before/after, with the sampler the policy is trained with
    eval_every: int = Field(0, ge=0)  # iterations between evaluations during training (0: before and after only)
    checkpoint_every: int = Field(10, ge=1)
    mixed_precision: MixedPrecision = "no"
    log_with: list[Literal["tensorboard"]] = ["tensorboard"]
