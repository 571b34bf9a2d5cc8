"""UFC ("Universal Few-Shot Spatial Control for Diffusion Models"): a control adapter for a frozen
diffusers UNet2DConditionModel that learns a NEW kind of spatial condition from a few examples.

`UFCAdapter` holds
- a condition encoder: a copy of the frozen UNet's input convolution, time embedding and down blocks
  (shared by every task; a condition map enters through a small stem that makes it image-like), plus small
  PER-TASK parameters: one bias per channel of each encoder level, added to the condition features;
- a matching module per encoder level: the query condition's features attend to the support conditions'
  features (keys), and take their values from the support IMAGES' features (the support images noised to
  the current timestep, so the values are timestep-modulated); keys and values are pooled to at most
  16 x 16 positions per shot;
- zero-initialised 1 x 1 convolutions that turn the matched features into residuals for the UNet's down
  blocks and middle block (ControlNet-style), so an untrained adapter leaves the base model unchanged.

Meta-training (`trainable(...)` = everything of the adapter, tasks = the known condition types) learns the
encoder and matching; few-shot training on a new condition type adds its task biases (`add_task`) and
trains only them and the matching module (`trainable(task, few_shot=True)`).
`ControlledUNet` puts the adapter in front of the frozen UNet with a fixed support set, as a network the
genrl samplers call with the query condition in the condition dict (`control`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from genrl.errors import ConfigError

MAX_KEY_SIDE = 16


class UFCAdapter(torch.nn.Module):
    def __init__(self, unet, tasks: list[str], match_channels: int = 32):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.SiLU(),
                                        torch.nn.Conv2d(16, unet.config.in_channels, 3, padding=1))
        self.time_proj, self.time_embedding = copy.deepcopy(unet.time_proj), copy.deepcopy(unet.time_embedding)
        self.conv_in, self.down_blocks = copy.deepcopy(unet.conv_in), copy.deepcopy(unet.down_blocks)
        self.requires_grad_(True)
        self.level_channels = self._level_channels(unet)
        self.task_bias = torch.nn.ParameterDict({task: torch.nn.Parameter(torch.zeros(sum(self.level_channels))) for task in tasks})
        d = match_channels
        self.query = torch.nn.ModuleList([torch.nn.Conv2d(c, d, 1) for c in self.level_channels])
        self.key = torch.nn.ModuleList([torch.nn.Conv2d(c, d, 1) for c in self.level_channels])
        self.value = torch.nn.ModuleList([torch.nn.Conv2d(c, c, 1) for c in self.level_channels])
        self.out = torch.nn.ModuleList([torch.nn.Conv2d(c, c, 1) for c in self.level_channels])
        self.mid_out = torch.nn.Conv2d(self.level_channels[-1], unet.config.block_out_channels[-1], 1)
        for conv in [*self.out, self.mid_out]:  # zero-initialised: the base model is untouched at the start
            torch.nn.init.zeros_(conv.weight)
            torch.nn.init.zeros_(conv.bias)

    @staticmethod
    def _level_channels(unet) -> list[int]:
        """Channels of each residual the UNet's down path hands to its up path (conv_in, each resnet, each downsampler)."""
        channels = [unet.config.block_out_channels[0]]
        for block, out in zip(unet.down_blocks, unet.config.block_out_channels):
            channels += [out] * len(block.resnets) + ([out] if block.downsamplers is not None else [])
        return channels

    def add_task(self, task: str) -> None:
        """A new condition type: zero biases, to be learnt from its few examples."""
        if task in self.task_bias:
            raise ConfigError(f"the adapter already has a task named {task!r}")
        self.task_bias[task] = torch.nn.Parameter(torch.zeros(sum(self.level_channels), device=self.conv_in.weight.device))

    def trainable(self, task: str, few_shot: bool) -> list[torch.nn.Parameter]:
        """Meta-training: every adapter parameter. Few-shot: the task's biases and the matching module only."""
        if not few_shot:
            return list(self.parameters())
        matching = [*self.query.parameters(), *self.key.parameters(), *self.value.parameters(), *self.out.parameters(),
                    *self.mid_out.parameters()]
        return [self.task_bias[task], *matching]

    def encode(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, bias: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The encoder's features at every residual level, the task's biases added (for condition inputs)."""
        emb = self.time_embedding(self.time_proj(t).to(x.dtype))
        h = self.conv_in(x)
        features = [h]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=text)
            else:
                h, res = block(hidden_states=h, temb=emb)
            features += list(res)
        if bias is not None:
            parts = torch.split(bias, self.level_channels)
            features = [f + b[None, :, None, None] for f, b in zip(features, parts)]
        return features

    def forward(self, query_condition: torch.Tensor, support_conditions: torch.Tensor, noisy_support_images: torch.Tensor,
                t: torch.Tensor, text: torch.Tensor, task: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Residuals for the UNet (down blocks, middle block) for query conditions (B, 1, H, W) from a support set
        of S conditions (S, 1, H, W) and their images noised to t (S, C, H, W); t: (B,) timesteps."""
        if task not in self.task_bias:
            raise ConfigError(f"the adapter has no task {task!r} (it knows {', '.join(self.task_bias)}); add_task first")
        if support_conditions.shape[-2:] != noisy_support_images.shape[-2:] or support_conditions.shape[0] != noisy_support_images.shape[0]:
            raise ConfigError(f"the support set's conditions {tuple(support_conditions.shape)} and images "
                              f"{tuple(noisy_support_images.shape)} differ in number or size")
        batch, shots = query_condition.shape[0], support_conditions.shape[0]
        bias = self.task_bias[task]
        query = self.encode(self.stem(query_condition), t, text, bias)
        t_support = t[:1].expand(shots)  # every query shares the chain's timestep
        text_support = text[:1].expand(shots, *text.shape[1:])
        keys = self.encode(self.stem(support_conditions), t_support, text_support, bias)
        values = self.encode(noisy_support_images, t_support, text_support)
        residuals = []
        for level, (q, k, v) in enumerate(zip(query, keys, values)):
            if k.shape[-1] > MAX_KEY_SIDE:
                k, v = F.adaptive_avg_pool2d(k, MAX_KEY_SIDE), F.adaptive_avg_pool2d(v, MAX_KEY_SIDE)
            q_flat = self.query[level](q).flatten(2).transpose(1, 2)  # (B, HW, d)
            k_flat = self.key[level](k).flatten(2).transpose(1, 2).reshape(1, -1, q_flat.shape[-1])  # (1, S*hw, d)
            v_flat = self.value[level](v).flatten(2).transpose(1, 2).reshape(1, -1, v.shape[1])  # (1, S*hw, C)
            matched = F.scaled_dot_product_attention(q_flat, k_flat.expand(batch, -1, -1), v_flat.expand(batch, -1, -1))
            matched = matched.transpose(1, 2).reshape(q.shape)
            residuals.append(self.out[level](matched))
        return tuple(residuals), self.mid_out(matched)


class ControlledUNet(torch.nn.Module):
    """The frozen UNet steered by the adapter toward `control` (query condition maps, in the condition dict),
    using a fixed support set; noising the support images to each call's timestep uses `scheduler`."""

    def __init__(self, unet, adapter: UFCAdapter, task: str, support_conditions: torch.Tensor, support_images: torch.Tensor,
                 scheduler, generator_seed: int = 0):
        super().__init__()
        self.unet, self.adapter, self.task, self.scheduler = unet, adapter, task, scheduler
        self.register_buffer("support_conditions", support_conditions)
        self.register_buffer("support_images", support_images)
        self.noise = torch.randn(support_images.shape, generator=torch.Generator().manual_seed(generator_seed))

    def forward(self, sample, timestep, encoder_hidden_states=None, control=None, return_dict=False):
        if control is None:
            output = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states).sample
        else:
            t = timestep.expand(sample.shape[0]) if timestep.ndim == 0 else timestep
            noisy = self.scheduler.add_noise(self.support_images, self.noise.to(sample), t[:1].expand(len(self.support_images)).cpu())
            down, mid = self.adapter(control, self.support_conditions, noisy, t, encoder_hidden_states, self.task)
            output = self.unet(sample, t, encoder_hidden_states=encoder_hidden_states, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid).sample
        return (output,)


@torch.no_grad()
def sample_controlled(model, adapter: UFCAdapter | None, task: str, conditions: torch.Tensor, support_conditions: torch.Tensor,
                      support_images: torch.Tensor, sampler, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (B, C, H, W) from the frozen prompt model `model` with the empty prompt, steered toward the
    condition maps (B, 1, H, W) by `adapter` and its support set (None: the base model alone)."""
    import copy as _copy

    controlled = _copy.copy(model)  # shares the frozen weights; only the network seen by the sampler changes
    condition = model.null_condition(len(conditions))
    if adapter is not None:
        # a shallow copy shares the submodule table: give it its own before swapping the network in
        torch.nn.Module.__setattr__(controlled, "_modules", dict(model._modules))
        controlled.network = ControlledUNet(model.network, adapter, task, support_conditions, support_images, model.scheduler)
        condition = {**condition, "control": conditions}
    shape = (len(conditions), *model.sample_shape)
    return sampler.sample(controlled.denoiser, condition, shape, generator=generator).sample
