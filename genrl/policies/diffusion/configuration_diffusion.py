"""Hyperparameters of a Diffusion Policy (Chi et al.), the `model:` section of a policy's pretraining config.

The reference setting: a chunk of `horizon` 16 actions predicted from `n_obs_steps` 2
observations, of which actions [n_obs_steps - 1, n_obs_steps - 1 + n_action_steps) = 8 are
executed; a 1-D temporal UNet with FiLM conditioning. The noise schedule is the shared
`schedule:` section (100 DDPM steps, squaredcos_cap_v2, epsilon, clip_sample for policies).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from genrl.sections import Section


class DiffusionPolicyConfig(Section):
    kind: Literal["diffusion_policy"] = "diffusion_policy"
    horizon: int = Field(16, ge=4)
    n_obs_steps: int = Field(2, ge=1)
    n_action_steps: int = Field(8, ge=1)
    down_dims: list[int] = [32, 64, 128]
    kernel_size: int = Field(5, ge=1)
    n_groups: int = Field(8, ge=1)
    timestep_embed_dim: int = Field(64, ge=8)
    obs_normalization: Literal["limits", "gaussian"] = "limits"  # actions are always min-max scaled to [-1, 1]

    @model_validator(mode="after")
    def _check_shapes(self):
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(f"horizon {self.horizon} must cover n_obs_steps - 1 + n_action_steps "
                             f"({self.n_obs_steps - 1 + self.n_action_steps})")
        levels = len(self.down_dims) - 1
        if self.horizon % 2**levels:
            raise ValueError(f"horizon {self.horizon} must be divisible by 2^{levels} (the UNet halves it {levels} times)")
        if any(d % self.n_groups for d in self.down_dims):
            raise ValueError(f"down_dims {self.down_dims} must be multiples of n_groups ({self.n_groups})")
        return self
