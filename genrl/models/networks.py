"""Build a denoiser network (a diffusers ModelMixin) from a config, and call it uniformly.

Three families are supported; they differ only in how the condition reaches them:
- `unet2d`            UNet2DModel: optional `class_labels` (class-conditional or unconditional);
- `unet2d_condition`  UNet2DConditionModel: `encoder_hidden_states` through cross-attention;
- `dit`               DiTTransformer2DModel: `class_labels` through adaptive layer norm.
The condition travels as a dict of keyword arguments, so the sampler never needs to know
which family it is driving.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from diffusers import DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel

from genrl.errors import ConfigError

NETWORK_CLASSES = {
    "unet2d": UNet2DModel,
    "unet2d_condition": UNet2DConditionModel,
    "dit": DiTTransformer2DModel,
}


def build_network(kind: str, config: dict[str, Any]) -> torch.nn.Module:
    """Random-init network of the given family; `config` goes to the diffusers constructor."""
    if kind not in NETWORK_CLASSES:
        raise ConfigError(f"model.network.kind {kind!r} is unknown; choose one of {sorted(NETWORK_CLASSES)}")
    try:
        return NETWORK_CLASSES[kind](**config)
    except TypeError as error:  # an unexpected constructor argument
        raise ConfigError(f"model.network.config for {kind!r}: {error}") from None


def network_kind(network: torch.nn.Module) -> str:
    for kind, cls in NETWORK_CLASSES.items():
        if isinstance(network, cls):
            return kind
    raise ConfigError(f"network of type {type(network).__name__} is not a supported denoiser")


@functools.lru_cache(maxsize=None)
def _sample_argument(network_class: type) -> str:
    """Name of the forward argument that takes the noisy sample: `sample` for UNets,
    `hidden_states` for transformers (whose second positional argument is not the timestep)."""
    return list(inspect.signature(network_class.forward).parameters)[1]  # [0] is self


def call_network(network: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, condition: dict) -> torch.Tensor:
    """Run the network on a batch; returns its raw output in its own parameterisation."""
    if t.ndim == 0:
        t = t.expand(x_t.shape[0])
    module = network.module if hasattr(network, "module") else network  # DDP wrapper
    sample_name = _sample_argument(type(module))
    output = network(**{sample_name: x_t}, timestep=t, **condition, return_dict=False)[0]
    if output.shape[1] == 2 * x_t.shape[1]:
        # Learned-sigma networks (DiT's default) predict [mean part, variance]; samplers use the mean part.
        output = output[:, : x_t.shape[1]]
    return output
