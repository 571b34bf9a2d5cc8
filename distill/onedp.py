"""OneDP: one-step diffusion policy by distribution matching (Wang et al. 2024, "One-Step Diffusion
Policy: Fast Visuomotor Policies via Diffusion Distillation", arXiv 2410.21257).

A one-call generator G (a copy of the teacher policy, warm-started from its weights) is trained to
make the teacher's action distribution, by minimising the reverse KL between the two along the
diffusion chain. One training step, for a batch of observations O:

    A    = G(z, O)                  the generator's action chunk (z ~ N(0, I) for OneDP-S, z = 0 for OneDP-D)
    A_k  = a_k A + s_k e_k          diffused to k ~ U{k_min..k_max} with fresh noise e_k (teacher's schedule,
                                    a_k = sqrt(a_bar_k), s_k = sqrt(1 - a_bar_k))
    g    = w(k) a_k (score_G(A_k) - score_teacher(A_k)),  w(k) = s_k^2,  score = -eps / s_k
         = a_k s_k (eps_teacher(A_k, k, O) - eps_G(A_k, k, O))
    loss = 0.5 * || A - sg(A - g) ||^2   (summed over the chunk, averaged over the batch): dloss/dA = g / batch

The a_k factor is dA_k/dA (the paper's Eq. 5 by the chain rule); w(k) = s_k^2 is the paper's weighting.
Gradient descent moves A along -g, towards the teacher's density and away from the generator's own.
OneDP-D (deterministic): the generator's distribution is a point, whose diffused score is exact,
eps_G = e_k, so no extra network is needed. OneDP-S (stochastic): eps_G comes from an auxiliary
network (another copy of the teacher) trained by denoising score matching on stop-gradient generator
samples, with its own Adam optimizer, once per step BEFORE the generator's update (Algorithm 1).

How the generator's output becomes an action (the paper does not say): the copied network still
takes a timestep, so it is called at a fixed k_init (65 of 100) on x_{k_init} = z and its output is
read in the teacher's own parameterisation and turned into the x0 estimate
A = (z - s eps_hat) / a for an eps-network (DMD2 turns its generator's eps output into x0 the same way).
At initialisation A is then the teacher's own one-call estimate of the action chunk from that noise, a
warm start inside the action range; reading the raw eps output as the action (the other option) would
start from a unit-variance noise estimate that has nothing to do with actions. OneDP-D feeds z = 0.

Reductions and scale: the surrogate is summed over a chunk's elements (the KL gradient of one sample
is a sum over its dimensions) and averaged over the batch (DMD2 averages over elements too, which only
divides the step by the chunk size); Adam makes the overall scale matter little.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from genrl.errors import ConfigError
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy

PAPER_TIMESTEPS = 100  # the paper's k values (k_init 65, k in [2, 95]) are on a 100-step DDPM schedule
AUX_BETAS = (0.0, 0.999)  # the paper's Adam betas for both networks (beta1 = 0 "like GANs")


def scaled_timestep(k: int, num_train_timesteps: int) -> int:
    """A timestep given on the paper's 100-step scale, on a schedule of `num_train_timesteps` steps."""
    return min(num_train_timesteps - 1, round(k * num_train_timesteps / PAPER_TIMESTEPS))


def sample_timesteps(batch: int, k_min: int, k_max: int, generator: torch.Generator, device) -> torch.Tensor:
    """k ~ U{k_min, ..., k_max} (both ends included), one per sample."""
    return torch.randint(k_min, k_max + 1, (batch,), generator=generator, device=device)


def generate(denoiser, generator_net, z: torch.Tensor, k_init: int, condition: dict) -> torch.Tensor:
    """The generator's action chunk: its raw output at (z, k_init) turned into the x0 estimate, unclipped
    (a loss through a clip has no gradient outside the range; the sampler clips as the teacher does)."""
    k = torch.full((z.shape[0],), k_init, device=z.device, dtype=torch.long)
    action, _ = denoiser.predict_x0_eps(generator_net(z, k, condition), z, k, clip=False)
    return action


def predicted_eps(denoiser, network, x_k: torch.Tensor, k: torch.Tensor, condition: dict) -> torch.Tensor:
    """A network's noise estimate at (x_k, k), whatever its parameterisation (eps, v or x0)."""
    return denoiser.predict_x0_eps(network(x_k, k, condition), x_k, k, clip=False)[1]


def kl_gradient(denoiser, eps_teacher: torch.Tensor, eps_generator: torch.Tensor, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """g = w(k) a_k (score_G - score_teacher) with w = s_k^2: a_k s_k (eps_teacher - eps_G), the gradient of the
    k-th KL term with respect to the generated action (no graph)."""
    alpha_bar = denoiser.alpha_bar(k, like)
    return alpha_bar.sqrt() * (1 - alpha_bar).sqrt() * (eps_teacher - eps_generator)


def surrogate_loss(action: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """0.5 ||A - sg(A - g)||^2 per sample, averaged over the batch: its gradient with respect to A is g / batch."""
    target = (action - g).detach()
    return 0.5 * ((action - target) ** 2).flatten(1).sum(1).mean()


def denoising_target(denoiser, clean: torch.Tensor, noise: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """What a network of the denoiser's parameterisation regresses on for x_k = a clean + s noise."""
    if denoiser.prediction_type == "epsilon":
        return noise
    if denoiser.prediction_type == "sample":
        return clean
    alpha_bar = denoiser.alpha_bar(k, clean)
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * clean  # v


def diffuse(denoiser, clean: torch.Tensor, noise: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    alpha_bar = denoiser.alpha_bar(k, clean)
    return alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise


def aux_denoising_step(denoiser, aux, aux_optimizer, action: torch.Tensor, condition: dict, k_min: int, k_max: int,
                       generator: torch.Generator) -> float:
    """One Adam step of the auxiliary network's denoising score matching on the generator's actions
    (stop-gradient: nothing flows back into the generator). Returns the loss before the step.

    Its timesteps come from the generator term's range [k_min, k_max], where its scores are used (the
    paper does not say; DMD2 draws them over the whole schedule)."""
    clean = action.detach()
    k = sample_timesteps(clean.shape[0], k_min, k_max, generator, clean.device)
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    with torch.enable_grad():
        loss = F.mse_loss(aux(diffuse(denoiser, clean, noise, k), k, condition).float(),
                          denoising_target(denoiser, clean, noise, k).float())
        aux_optimizer.zero_grad(set_to_none=True)
        loss.backward()
    aux_optimizer.step()
    aux_optimizer.zero_grad(set_to_none=True)
    return loss.item()


def condition_device(condition: dict) -> torch.device:
    return next(iter(condition.values())).device


def onedp_loss(denoiser, generator_net, teacher, aux, aux_optimizer, shape: tuple, condition: dict, k_init: int,
               k_min: int, k_max: int, stochastic: bool, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """One OneDP step on a batch of conditions: the auxiliary update (OneDP-S) and the generator's surrogate
    loss (backpropagated by the caller). Networks are callables (x_k, k, condition) -> raw output; `denoiser`
    gives the teacher's schedule and parameterisation, shared by all three. `aux` is None for OneDP-D."""
    device = condition_device(condition)
    z = torch.randn(shape, generator=generator, device=device) if stochastic else torch.zeros(shape, device=device)
    action = generate(denoiser, generator_net, z, k_init, condition)
    parts = {}
    if stochastic:  # Algorithm 1: the score of the generator's distribution first, then the generator
        parts["aux_loss"] = aux_denoising_step(denoiser, aux, aux_optimizer, action, condition, k_min, k_max, generator)
    k = sample_timesteps(shape[0], k_min, k_max, generator, device)
    noise = torch.randn(shape, generator=generator, device=device, dtype=action.dtype)
    with torch.no_grad():
        noisy = diffuse(denoiser, action.detach(), noise, k)
        eps_teacher = predicted_eps(denoiser, teacher, noisy, k, condition)
        eps_generator = predicted_eps(denoiser, aux, noisy, k, condition) if stochastic else noise
        g = kl_gradient(denoiser, eps_teacher, eps_generator, k, noisy)
    loss = surrogate_loss(action, g)
    parts["generator_loss"] = loss.item()  # 0.5 E||g||^2: the size of the KL gradient, not a quantity that must fall
    # the teacher's denoising loss on the generator's actions (uniform over [k_min, k_max]): an ELBO-like fit
    parts["teacher_denoising_loss"] = float(((eps_teacher - noise) ** 2).mean())
    return loss, parts


class OneDPDistiller:
    """What `genrl distill` needs from the method (the interface of `ConsistencyDistiller`): the generator
    to train (`make_student`), the loss of one batch (which also updates the auxiliary network of OneDP-S),
    what to update after each optimizer step (nothing), the objects saved with every checkpoint, and the
    constants the student samples with. `teacher_modules` is the teacher's network as one module
    (x_k, k, condition) -> output. The auxiliary network is not wrapped by accelerate: in a multi-process
    run each process would update its own copy on its own batches."""

    def __init__(self, method, teacher_model, teacher_modules: torch.nn.Module):
        if not isinstance(teacher_model, DiffusionPolicy):
            raise ConfigError("OneDP distils Diffusion Policies (action models); the teacher is an image model")
        if teacher_model.family != "diffusion":
            raise ConfigError(f"OneDP needs a DDPM-style teacher (eps, v or x0 prediction); the teacher is a {teacher_model.family} policy")
        self.method = method
        self.stochastic = method.variant == "stochastic"
        steps = teacher_model.num_train_timesteps
        self.k_init, self.k_min, self.k_max = (scaled_timestep(k, steps) for k in (method.k_init, method.k_min, method.k_max))
        self.denoiser = teacher_model.denoiser
        self.teacher = teacher_modules.eval().requires_grad_(False)
        self.aux, self.aux_optimizer = None, None
        if self.stochastic:  # the generator's score network starts as the teacher too (Algorithm 1)
            self.aux = copy.deepcopy(teacher_modules).train().requires_grad_(True)
            self.aux_optimizer = torch.optim.Adam(self.aux.parameters(), lr=method.aux_learning_rate, betas=AUX_BETAS)

    def make_student(self, teacher_model):
        """The generator: the teacher policy itself, copied (its scheduler, normaliser and env come along)."""
        return copy.deepcopy(teacher_model)

    def loss(self, student, clean: torch.Tensor, condition: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        # the data's actions only give the shape: OneDP matches the teacher, it never regresses on demonstrations
        return onedp_loss(self.denoiser, student, self.teacher, self.aux, self.aux_optimizer, tuple(clean.shape), condition,
                          self.k_init, self.k_min, self.k_max, self.stochastic, generator)

    def after_step(self, student: torch.nn.Module) -> None:
        """Nothing: the auxiliary network was updated inside `loss`, before the generator."""

    def checkpointed(self) -> tuple:
        """The auxiliary network and its optimizer (OneDP-S), saved with each checkpoint so resume continues them."""
        return (self.aux, self.aux_optimizer) if self.stochastic else ()

    def student_constants(self) -> dict:
        return {"method": "onedp", "variant": self.method.variant, "k_init": self.k_init}
