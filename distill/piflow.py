"""pi-Flow: policy-based few-step generation by imitation distillation (Chen et al. 2025).

The student makes ONE network call per segment of the time axis; its output is not a sample but
the parameters of a network-free policy pi(x, sigma) that gives the velocity at every later state
of the segment, integrated with many cheap Euler sub-steps (the policies, the time warp and the
rollout are in genrl/samplers/piflow.py, which also samples the student). Training is imitation
distillation (pi-ID), one step:

    pick a segment [tau_dst, tau_src] of the student's NFE layout (with probability its length)
    x_src  = (1 - sigma_src) x0 + sigma_src eps                   (x0 from the data)
    pi     = policy of student(x_src, sigma_src)                  (WITH gradient)
    for m in 1..M, at sorted random raw times tau_1 >= ... >= tau_M inside the segment:
        x_m  = rollout of pi (detached; GMM: components dropped with prob. gm_dropout) to tau_m
        u_T  = teacher velocity at (x_m, sigma_m)                 (no gradient; CFG if asked)
    loss   = mean_m || pi(x_m, sigma_m) - u_T ||^2

so the policy learns the teacher's velocity on the states its own rollout visits (on-policy), and
the gradient reaches the network only through pi's parameters at the query points. (The paper's
FLUX recipe also mixes teacher Euler steps into the rollout and averages the policy over a window
of sub-steps; this is its ImageNet setting, where both are off.)

Teachers. A flow-matching model gives its velocity directly. A DDPM-style model is used in its
flow view (`network_inputs` / `velocity_from_output`): called at the variance-preserving state of
the same signal-to-noise ratio, its x0 estimate (clipped as its DDIM sampler clips) becomes the
velocity u = (x - x0) / sigma, the direction of its deterministic DDIM ODE.

The student. A copy of the teacher whose output layer is widened for the policy's parameters: GMM
K velocity means (C channels each), K logits per pixel and one channel whose spatial mean is the
shared log-std; DX N velocity predictions. Warm start: every mean (DX: every grid point) copies the
teacher's output layer, so at the first step the policy's velocity at the source is the teacher's
own; the GMM means get a small perturbation with zero sum over the components (it breaks their
symmetry without moving the mixture's mean velocity); the logit and log-std channels start at zero
(equal weights; std = sigma_src in x0 space, GMFlow's initialisation). For a DDPM-style teacher the
output layer is copied too, but its meaning changes from noise to velocity (as the consistency
student's changes to x0): there only the features are a warm start, and the first steps relearn it.
The student keeps the teacher's scheduler and input convention and saves with `save_pretrained`
(a diffusers UNet config with the new out_channels) plus distilled.json.
"""

from __future__ import annotations

import copy

import torch

from genrl.errors import ConfigError
from genrl.samplers.piflow import PiFlowSpec, network_inputs, rollout, segments, velocity_from_output, warp

# Relative size of the perturbation that separates the GMM means at initialisation (of the teacher's
# output-layer weights' std): large enough for the components to receive different gradients, small
# enough that they start close to the teacher's prediction.
MEAN_SPREAD = 0.1


def widen_output_layer(network: torch.nn.Module, spec: PiFlowSpec, generator: torch.Generator) -> None:
    """Replace the UNet's `conv_out` by one with the policy's channels, warm-started from it (in place)."""
    old = getattr(network, "conv_out", None)
    if not isinstance(old, torch.nn.Conv2d):
        raise ConfigError(f"pi-Flow needs a UNet teacher (its output layer conv_out is widened); {type(network).__name__} has none")
    channels = old.out_channels
    new = torch.nn.Conv2d(old.in_channels, spec.out_channels(channels), old.kernel_size, padding=old.padding).to(old.weight)
    with torch.no_grad():
        new.weight.zero_()
        new.bias.zero_()
        copies = spec.num_components if spec.policy == "gmm" else spec.dx_grid
        weight = old.weight.unsqueeze(0).repeat(copies, 1, 1, 1, 1)
        if spec.policy == "gmm" and copies > 1:
            noise = torch.randn(weight.shape, generator=generator).to(weight) * (MEAN_SPREAD * old.weight.std())
            weight += noise - noise.mean(0, keepdim=True)
        new.weight[: copies * channels] = weight.flatten(0, 1)
        new.bias[: copies * channels] = old.bias.repeat(copies)
    network.conv_out = new
    network.register_to_config(out_channels=new.out_channels)


class PiFlowDistiller:
    """What `genrl distill` needs from the method (see distill/consistency.py for the interface)."""

    def __init__(self, method, teacher_model, teacher_modules: torch.nn.Module):
        if not hasattr(teacher_model, "tokenizer") or not hasattr(teacher_model.network, "conv_out"):
            raise ConfigError(f"pi-Flow distils an image model (a Shapes model with a UNet); the teacher "
                              f"{type(teacher_model).__name__} is not one")
        self.method = method
        self.teacher = teacher_modules.eval().requires_grad_(False)
        self.teacher_denoiser = teacher_model.denoiser
        shift = method.shift or (teacher_model.shift if teacher_model.family == "flow" else 1.0)
        self.spec = PiFlowSpec(policy=method.policy, num_components=method.num_components, dx_grid=method.dx_grid,
                               nfe=method.nfe, final_step_size_scale=method.final_step_size_scale, shift=shift,
                               substeps=method.substeps)
        self.null_ids = teacher_model.tokenizer([""])  # the empty prompt of classifier-free guidance

    def make_student(self, teacher_model):
        student = copy.deepcopy(teacher_model)
        widen_output_layer(student.network, self.spec, torch.Generator().manual_seed(0))
        return student

    def teacher_velocity(self, x: torch.Tensor, sigma: torch.Tensor, condition: dict) -> torch.Tensor:
        """The teacher's velocity at (x, sigma), with classifier-free guidance of `teacher_guidance_scale`."""
        x_in, timestep = network_inputs(self.teacher_denoiser, x, sigma)
        scale = self.method.teacher_guidance_scale
        if scale == 1.0:
            output = self.teacher(x_in, timestep, condition)
        else:
            ids = condition["input_ids"]
            both = {"input_ids": torch.cat([self.null_ids.to(ids.device).expand_as(ids), ids])}
            unconditional, conditional = self.teacher(torch.cat([x_in, x_in]), timestep.repeat(2), both).chunk(2)
            output = unconditional + scale * (conditional - unconditional)
        return velocity_from_output(self.teacher_denoiser, output.float(), x, sigma)

    def loss(self, student, clean: torch.Tensor, condition: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        # the student keeps the teacher's scheduler, so it is called in the teacher's input convention
        return piflow_imitation_loss(student, self.teacher_denoiser, self.teacher_velocity, self.spec, clean, condition,
                                     generator, self.method.num_intermediate_states, self.method.gm_dropout)

    def after_step(self, student: torch.nn.Module) -> None:
        """pi-ID has no target network."""

    def checkpointed(self) -> tuple:
        return ()

    def student_constants(self) -> dict:
        return self.spec.constants()


def sample_segments(spec: PiFlowSpec, batch: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, (tau_src, tau_dst) of one segment of the student's layout, drawn with probability
    proportional to its length (= the segment holding a raw time drawn uniformly from [0, 1])."""
    layout = torch.tensor(segments(spec.nfe, spec.final_step_size_scale), dtype=torch.float32)
    lengths = layout[:, 0] - layout[:, 1]
    chosen = torch.multinomial(lengths, batch, replacement=True, generator=generator)
    return layout[chosen, 0].to(device), layout[chosen, 1].to(device)


def piflow_imitation_loss(student, input_denoiser, teacher_velocity, spec: PiFlowSpec, clean: torch.Tensor,
                          condition: dict, generator: torch.Generator, num_intermediate_states: int,
                          gm_dropout: float) -> tuple[torch.Tensor, dict]:
    """pi-ID over a batch of clean samples. `student` is a callable (x_in, timestep, condition) -> raw
    output, called at `network_inputs(input_denoiser, ...)`; `teacher_velocity(x, sigma, condition)` the teacher's
    (guided) velocity. Returns (loss, parts)."""
    batch, device = clean.shape[0], clean.device
    x0 = clean.float()
    tau_src, tau_dst = sample_segments(spec, batch, generator, device)
    sigma_src = warp(tau_src, spec.shift)
    noise = torch.randn(x0.shape, generator=generator, device=device)
    s = sigma_src.view(-1, 1, 1, 1)
    x_src = (1 - s) * x0 + s * noise
    x_in, timestep = network_inputs(input_denoiser, x_src, sigma_src)
    policy = spec.make_policy(student(x_in.to(clean.dtype), timestep, condition).float(), x_src, sigma_src, tau_src)
    follower = policy.detached(gm_dropout, generator)
    # M sorted query times inside the segment (offsets from its start)
    offsets = torch.rand(batch, num_intermediate_states, generator=generator, device=device).sort(1).values
    offsets = offsets * (tau_src - tau_dst).unsqueeze(1)
    x, tau, losses = x_src, tau_src, []
    for m in range(num_intermediate_states):
        tau_m = tau_src - offsets[:, m]
        sigma_m = warp(tau_m, spec.shift)
        with torch.no_grad():
            x = rollout(follower.velocity, x, tau, tau_m, spec.shift, spec.substeps)
            target = teacher_velocity(x, sigma_m, condition)
        losses.append(((policy.velocity(x, sigma_m) - target) ** 2).mean())
        tau = tau_m
    loss = torch.stack(losses).mean()
    parts = {"imitation_loss": loss.item()}
    if spec.policy == "gmm":
        parts["gm_log_std"] = policy.log_std.mean().item()
    return loss, parts
