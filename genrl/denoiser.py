"""The denoiser: a network plus its noise schedule and parameterisation.

`GuidedNetwork` calls the network with classifier-free guidance on its raw output (as
diffusers pipelines do); every model family shares it. `Denoiser` adds the discrete-time
diffusion schedule: given x_t at timestep t it returns the predicted clean sample x0 and
noise eps for epsilon-, v- and sample-prediction networks, clipping x0 when the schedule
says so. Flow-matching models use `FlowDenoiser` (genrl/flow_denoiser.py) instead.
"""

from __future__ import annotations

import torch

from genrl.condition import cat_conditions
from genrl.models.networks import call_network

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def broadcast_to_batch(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar stays a scalar; a per-sample (B,) vector becomes (B, 1, ..., 1)."""
    if values.ndim == 0:
        return values
    return values.reshape(-1, *([1] * (like.ndim - 1)))


class GuidedNetwork(torch.nn.Module):
    """A network called with a condition dict, optionally with classifier-free guidance."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network

    def model_output(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        condition: dict[str, torch.Tensor],
        guidance_scale: float = 1.0,
        null_condition: dict[str, torch.Tensor] | None = None,
        paired_condition: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Raw network output, with classifier-free guidance when guidance_scale != 1.

        `paired_condition`, if given, is `cat_conditions([null_condition, condition])` made once
        by the caller (a sampling loop calls this with the same conditions at every step)."""
        t = torch.as_tensor(t, device=x_t.device)
        if guidance_scale == 1.0 or null_condition is None:
            return call_network(self.network, x_t, t, condition)
        # One batched call for both branches, as diffusers pipelines do.
        both = paired_condition if paired_condition is not None else cat_conditions([null_condition, condition])
        t_both = t.expand(x_t.shape[0]).repeat(2) if t.ndim == 0 else t.repeat(2)
        uncond, cond = call_network(self.network, torch.cat([x_t, x_t]), t_both, both).chunk(2)
        return uncond + guidance_scale * (cond - uncond)


class Denoiser(GuidedNetwork):
    def __init__(
        self,
        network: torch.nn.Module,
        alphas_cumprod: torch.Tensor,
        prediction_type: str = "epsilon",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
    ):
        super().__init__(network)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        self.register_buffer("alphas_cumprod", alphas_cumprod.double(), persistent=False)
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.clip_sample_range = clip_sample_range
        self._alphas_cache: dict = {}

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def alphas(self, like: torch.Tensor) -> torch.Tensor:
        """alphas_cumprod in float64 if `like` is float64, else float32: converted once per dtype and
        device (again if the buffer is moved or changed), not at every step. Read-only."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        source = self.alphas_cumprod
        entry = self._alphas_cache.get(dtype)
        if entry is None or entry[0] is not source or entry[1] != source._version:
            entry = self._alphas_cache[dtype] = (source, source._version, source.to(dtype))
        return entry[2]

    def alpha_bar(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """a_bar_t in the dtype of `like`, shaped to broadcast against it (t may be per-sample)."""
        alpha_bar = self.alphas(like)[torch.as_tensor(t, device=self.alphas_cumprod.device)]
        return broadcast_to_batch(alpha_bar, like)

    def predict_x0_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor,
                       clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert the network's output to (x0_hat, eps_hat) at timestep t (int or per-sample (B,)).
        `clip=False` skips the schedule's x0 clipping (a sampling device; a loss through it has no gradient
        wherever the prediction is out of range)."""
        alpha_bar = self.alpha_bar(t, x_t)
        sqrt_a, sqrt_1ma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (x_t - sqrt_1ma * eps) / sqrt_a
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (x_t - sqrt_a * x0) / sqrt_1ma
        else:  # v_prediction
            x0 = sqrt_a * x_t - sqrt_1ma * model_output
            eps = sqrt_a * model_output + sqrt_1ma * x_t
        if self.clip_sample and clip:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0, eps
