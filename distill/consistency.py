"""Consistency distillation (Song et al. 2023, "Consistency Models"; for actions, Consistency Policy).

The student's consistency function f (genrl/samplers/consistency.py) must give the same x0 for
every point of one probability-flow ODE trajectory of the teacher. One training step:

    pick adjacent grid times t_lo < t_hi (the grid runs from t_min, where f is the identity, up to T-1)
    x_hi   = sqrt(a_bar_hi) x0 + sqrt(1 - a_bar_hi) eps          (x0 from the data)
    x_lo   = one deterministic DDIM step of the TEACHER from x_hi to t_lo   (no gradient)
    loss   = || f_student(x_hi, t_hi) - f_target(x_lo, t_lo) ||^2 + dsm_weight * || f_student(x_hi, t_hi) - x0 ||^2

The target network is an exponential moving average of the student (decay 0.95 in the paper's
distillation runs); at the bottom pair the target is the boundary x_lo / sqrt(a_bar_t_min),
which anchors the chain of consistencies to the data. The teacher's ODE must be deterministic:
DDIM with eta 0 is the first-order solver of the probability-flow ODE of any DDPM-style (eps, v
or sample prediction) model; a flow-matching teacher is refused.

The student predicts x0 directly (its scheduler says prediction_type "sample"), whatever the
teacher predicts. Measured on an eps-teacher: x0 = (x_t - sqrt(1 - a_bar) eps) / sqrt(a_bar)
multiplies eps errors by up to ~2000 at the top of a 100-step cosine schedule, where the one-step
student does all its work; an eps-student's self-consistency loss fell while its one-step
samples moved away from the teacher's ODE. The student starts from the teacher's weights (its
features), and the second term (Consistency Policy's denoising term: regression of the whole jump
f on the data) teaches its output layer the new meaning from the first step on. The term is put
on f, not on the network's x0 estimate inside f: measured on PushT, regressing the x0 estimate on
the data made it the posterior mean, and f = c_skip x~ + (1 - c_skip) x0 then kept c_skip's share
of the noise (2- and 3-call samples 0.070 and 0.097 from the data in mean square, against 0.023
and 0.026 with the term on f).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from genrl.errors import ConfigError
from genrl.models.consistency_head import ConsistencyHead, HeadedNetwork
from genrl.models.temporal_unet import TemporalUnet1D
from genrl.pretraining.loop import TrainedModules
from genrl.samplers.consistency import consistency_x0


def distillation_grid(num_train_timesteps: int, num_intervals: int) -> torch.Tensor:
    """Ascending timesteps t_min = 0 < ... < T-1: `num_intervals` steps of the teacher's ODE, evenly spaced."""
    if not 1 <= num_intervals < num_train_timesteps:
        raise ConfigError(f"method.num_intervals must be in [1, {num_train_timesteps - 1}], got {num_intervals}")
    return torch.linspace(0, num_train_timesteps - 1, num_intervals + 1).round().long()


def teacher_ode_step(denoiser, teacher_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM step x_t -> x_{t_prev} (per-sample t, t_prev) from the teacher's raw output at (x_t, t)."""
    x0, eps = denoiser.predict_x0_eps(teacher_output, x_t, t)
    alpha_prev = denoiser.alpha_bar(t_prev, x_t)
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


def consistency_distillation_loss(teacher_denoiser, student_denoiser, student, target, teacher, clean: torch.Tensor,
                                  condition: dict, grid: torch.Tensor, generator: torch.Generator, sigma_data: float,
                                  dsm_weight: float) -> tuple[torch.Tensor, dict]:
    """Consistency residual (+ the weighted data-denoising term) over a batch of clean samples, one random
    grid interval each. Networks are callables (x_t, t, condition) -> raw output; the denoisers give the
    schedule arithmetic (shared) and each side's parameterisation. Returns (loss, its parts)."""
    device = clean.device
    grid = grid.to(device)
    interval = torch.randint(0, len(grid) - 1, (clean.shape[0],), generator=generator, device=device)
    t_hi, t_lo = grid[interval + 1], grid[interval]
    noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    alpha_hi = teacher_denoiser.alpha_bar(t_hi, clean)
    x_hi = alpha_hi.sqrt() * clean + (1 - alpha_hi).sqrt() * noise
    t_min = int(grid[0])
    with torch.no_grad():
        x_lo = teacher_ode_step(teacher_denoiser, teacher(x_hi, t_hi, condition), x_hi, t_hi, t_lo)
        goal = consistency_x0(student_denoiser, target(x_lo, t_lo, condition), x_lo, t_lo, t_min, sigma_data)
    output = student(x_hi, t_hi, condition)
    prediction = consistency_x0(student_denoiser, output, x_hi, t_hi, t_min, sigma_data)
    consistency = F.mse_loss(prediction.float(), goal.float())
    denoising = F.mse_loss(prediction.float(), clean.float())
    return consistency + dsm_weight * denoising, {"consistency_loss": consistency.item(), "denoising_loss": denoising.item()}


def as_x0_student(teacher_model):
    """A copy of the teacher whose scheduler says prediction_type "sample": same network weights, the output
    now read as x0 (and trained to be)."""
    student = copy.deepcopy(teacher_model)
    scheduler = type(student.scheduler).from_config(student.scheduler.config, prediction_type="sample")
    student.scheduler = scheduler  # re-attaches the denoiser, which now reads the output as x0
    return student


class ConsistencyDistiller:
    """What `genrl distill` needs from the method: the student to train (`make_student`), the loss of one
    batch, the target network's update after each optimizer step, and the constants the student samples
    with. `teacher_modules` is the teacher's trainable part as one module (x_t, t, condition) -> output."""

    def __init__(self, method, teacher_model, teacher_modules: torch.nn.Module):
        if teacher_model.family != "diffusion":
            raise ConfigError("consistency distillation needs a DDPM-style teacher with a deterministic DDIM ODE; "
                              f"the teacher is a {teacher_model.family} model")
        self.method = method
        self.teacher_denoiser = teacher_model.denoiser
        if method.student == "head" and not isinstance(teacher_model.network, TemporalUnet1D):
            raise ConfigError("method.student 'head' needs a Diffusion Policy teacher (a temporal UNet trunk); "
                              "use method.student 'full' for an image model")
        self.teacher = teacher_modules.eval().requires_grad_(False)
        self.target = None  # made with the student: the same architecture, an EMA of its weights
        self.grid = distillation_grid(teacher_model.num_train_timesteps, method.num_intervals)
        self.student_denoiser = None

    def make_student(self, teacher_model):
        """The full student: the teacher's network, read as x0. The head: the teacher's network frozen as a
        trunk under a new light head (only the head trains)."""
        student = as_x0_student(teacher_model)
        if self.method.student == "head":
            student.network = HeadedNetwork(student.network, ConsistencyHead.for_trunk(student.network, self.method.head_channels))
        self.student_denoiser = student.denoiser
        self.target = copy.deepcopy(TrainedModules.of(student)).eval().requires_grad_(False)
        return student

    def loss(self, student, clean: torch.Tensor, condition: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return consistency_distillation_loss(self.teacher_denoiser, self.student_denoiser, student, self.target, self.teacher,
                                             clean, condition, self.grid, generator, self.method.sigma_data,
                                             self.method.dsm_weight)

    @torch.no_grad()
    def after_step(self, student: torch.nn.Module) -> None:
        """target <- decay * target + (1 - decay) * student."""
        decay = self.method.target_ema_decay
        for mine, theirs in zip(self.target.parameters(), student.parameters()):
            mine.lerp_(theirs.detach(), 1 - decay)

    def checkpointed(self) -> tuple:
        """Saved with each checkpoint beside the student and its optimizer (resume restores them)."""
        return (self.target,)

    def student_constants(self) -> dict:
        return {"method": "consistency", "t_min": int(self.grid[0]), "sigma_data": self.method.sigma_data,
                "student": self.method.student}
