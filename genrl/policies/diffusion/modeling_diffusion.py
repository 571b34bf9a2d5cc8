"""A Diffusion Policy (Chi et al.): a denoiser of action chunks conditioned on an observation history.

Directory layout (diffusers' formats, like the image models):
    model_index.json     {"_class_name": "DiffusionPolicy"}
    unet/                TemporalUnet1D (safetensors + config.json)
    base_unet/           only after DPPO with ft_denoising_steps: the frozen network of the early steps
                         (policy_config.json's finetuned_below_timestep says where the chain switches)
    consistency_head/    only for a consistency-head student: the trained head (genrl/models/consistency_head.py);
                         unet/ is then the teacher's frozen trunk
    scheduler/           DDPMScheduler (shipped: 100 steps, squaredcos_cap_v2, epsilon, clip_sample; any
                         prediction_type), or FlowMatchEulerDiscreteScheduler for a flow-matching policy
    normalizer.json      observation / action statistics (required: see normalizer.py)
    policy_config.json   horizon, n_obs_steps, n_action_steps, obs_dim, action_dim, the env, and for a
                         distilled student ("distilled") the method and its sampling constants

Acting: the last `n_obs_steps` observations are normalised and flattened into the FiLM
condition, a chain samples a chunk of `horizon` normalised actions, and the env executes
actions [n_obs_steps - 1, n_obs_steps - 1 + n_action_steps) of it, un-normalised. Sampling goes
through the same samplers (DDPM, DDIM-eta) and `Trajectory` as the image models, so every RL
trainer applies unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from genrl.errors import CheckpointError, ConfigError
from genrl.models.scheduled_model import ScheduledModel
from genrl.models.consistency_head import ConsistencyHead, HeadedNetwork
from genrl.models.step_routed_network import StepRoutedNetwork
from genrl.models.temporal_unet import TemporalUnet1D
from genrl.policies.diffusion.normalizer import Normalizer

MODEL_INDEX = "model_index.json"
POLICY_CONFIG = "policy_config.json"
SCHEDULERS = {"DDPMScheduler": DDPMScheduler, "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler}


class DiffusionPolicy(ScheduledModel):
    def __init__(self, network: TemporalUnet1D, scheduler: DDPMScheduler | FlowMatchEulerDiscreteScheduler, normalizer: Normalizer, policy_config: dict):
        super().__init__()
        self.network = network
        self.scheduler = scheduler
        self.normalizer = normalizer
        self.policy_config = dict(policy_config)
        self.horizon = int(policy_config["horizon"])
        self.n_obs_steps = int(policy_config["n_obs_steps"])
        self.n_action_steps = int(policy_config["n_action_steps"])
        self.obs_dim = int(policy_config["obs_dim"])
        self.action_dim = int(policy_config["action_dim"])
        self._attach_denoiser(clip_sample=scheduler.config.get("clip_sample", False))

    @property
    def sample_shape(self) -> tuple[int, int]:
        return (self.horizon, self.action_dim)

    @property
    def distilled(self) -> dict | None:
        """What a distiller made of this policy ({"method": ..., and the method's sampling constants}), None for a teacher."""
        return self.policy_config.get("distilled")

    @property
    def env_config(self) -> dict:
        """The environment the policy was trained for (id, kwargs, observation keys)."""
        return self.policy_config.get("env", {})

    def condition(self, obs_history: torch.Tensor) -> dict[str, torch.Tensor]:
        """FiLM condition from raw observations (B, n_obs_steps, obs_dim)."""
        expected = (self.n_obs_steps, self.obs_dim)
        if obs_history.ndim != 3 or tuple(obs_history.shape[1:]) != expected:
            raise ConfigError(
                f"observation history has shape {tuple(obs_history.shape)}, but the policy expects (batch, {expected[0]}, "
                f"{expected[1]}): n_obs_steps={expected[0]} observations of {expected[1]} values"
            )
        normalized = self.normalizer.obs.normalize(obs_history.to(self.device, torch.float32))
        return {"global_cond": normalized.flatten(1)}

    def executed_actions(self, chunk: torch.Tensor) -> torch.Tensor:
        """The env actions (B, n_action_steps, action_dim) of a sampled normalised chunk."""
        start = self.n_obs_steps - 1
        return self.normalizer.action.unnormalize(chunk[:, start : start + self.n_action_steps].float())

    def executed_mask(self) -> torch.Tensor:
        """(horizon, 1) 0/1 mask of the chunk's executed actions, for scoring only what the env ran."""
        mask = torch.zeros(self.horizon, 1)
        mask[self.n_obs_steps - 1 : self.n_obs_steps - 1 + self.n_action_steps] = 1.0
        return mask

    # ---------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        policy_config = dict(self.policy_config)
        if isinstance(self.network, StepRoutedNetwork):  # DPPO partial fine-tuning: both halves of the chain
            self.network.finetuned.save_pretrained(directory / "unet")
            self.network.base.save_pretrained(directory / "base_unet")
            policy_config["finetuned_below_timestep"] = self.network.switch_timestep
        elif isinstance(self.network, HeadedNetwork):  # a consistency head on the teacher's frozen trunk
            self.network.trunk.save_pretrained(directory / "unet")
            self.network.head.save_pretrained(directory / "consistency_head")
        else:
            self.network.save_pretrained(directory / "unet")
            policy_config.pop("finetuned_below_timestep", None)
        self.scheduler.save_pretrained(directory / "scheduler")
        self.normalizer.save(directory)
        (directory / POLICY_CONFIG).write_text(json.dumps(policy_config, indent=1))
        (directory / MODEL_INDEX).write_text(json.dumps({"_class_name": "DiffusionPolicy"}, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "DiffusionPolicy":
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"policy directory {directory} does not exist")
        for part in (MODEL_INDEX, POLICY_CONFIG, "unet", "scheduler"):
            if not (directory / part).exists():
                raise CheckpointError(f"policy directory {directory} is missing {part} (not a saved genrl policy)")
        normalizer = Normalizer.load(directory)
        try:
            policy_config = json.loads((directory / POLICY_CONFIG).read_text())
            network = TemporalUnet1D.from_pretrained(directory / "unet")
            if (directory / "base_unet").is_dir():  # fine-tuned late steps, frozen early ones
                base = TemporalUnet1D.from_pretrained(directory / "base_unet")
                network = StepRoutedNetwork(base, network, policy_config["finetuned_below_timestep"])
            if (directory / "consistency_head").is_dir():  # a light student on the teacher's trunk
                network = HeadedNetwork(network, ConsistencyHead.from_pretrained(directory / "consistency_head"))
            scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
            scheduler = SCHEDULERS[scheduler_config["_class_name"]].from_pretrained(directory / "scheduler")
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"could not load policy from {directory}: {message}") from None
        policy = cls(network, scheduler, normalizer, policy_config)
        if normalizer.obs.dim != policy.obs_dim or normalizer.action.dim != policy.action_dim:
            raise CheckpointError(f"{directory}: normalizer.json does not match the policy's obs_dim/action_dim")
        return policy
