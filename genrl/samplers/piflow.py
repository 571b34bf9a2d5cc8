"""pi-Flow's network-free policies and the few-step sampler of a pi-Flow student.

pi-Flow (Chen et al. 2025, "pi-Flow: Policy-Based Few-Step Generation via Imitation Distillation";
the distiller is distill/piflow.py). Flow convention, as genrl/flow_denoiser.py:

    x_sigma = (1 - sigma) x0 + sigma eps,     u = eps - x0,     x0 = x - sigma u.

Time. Segments and sub-steps are laid out in raw time tau in [0, 1]; the noise level is the
time warp of diffusers' FlowMatchEulerDiscreteScheduler (the teacher's own `shift`):

    sigma = shift tau / (1 + (shift - 1) tau),       tau = sigma / (shift + (1 - shift) sigma).

An NFE-n sampler cuts [0, 1] into n segments of length b = 1 / (n - 1 + fs), the last one fs b
long (fs = final_step_size_scale). At each segment's start (x_src, sigma_src) the student makes
ONE network call whose output is a policy pi(x, sigma) -> velocity valid on the whole segment;
the segment is then integrated with cheap Euler sub-steps x <- x + pi(x, sigma) (sigma' - sigma),
`substeps` of them per unit of raw time (the reference: 128), with no further network call.

GMM policy (GMFlow). Per pixel, K means in velocity space mu_u_k (C channels each), K logits
l_k (shared over the channels) and ONE log-std log_s per sample, shared by every component,
channel and pixel. In x0 space they are a Gaussian mixture p(x0 | x_src):

    mu_k = x_src - sigma_src mu_u_k,      v = s^2 sigma_src^2.

At a later state (x, sigma), x is independent of x_src given x0, so
p(x0 | x) ~ p(x0 | x_src) N(x; a x0, sigma^2) / N(x_src; a_src x0, sigma_src^2) (a = 1 - sigma),
a Gaussian factor in x0 with precision zeta and linear term nu:

    zeta = (a / sigma)^2 - (a_src / sigma_src)^2,        nu = a x / sigma^2 - a_src x_src / sigma_src^2
    d = 1 + v zeta,    mu'_k = (mu_k + v nu) / d,    l'_k = l_k + sum_c mu_k (nu - zeta mu_k / 2) / d
    E[x0 | x] = sum_k softmax(l')_k mu'_k,            pi(x, sigma) = (x - E[x0 | x]) / sigma.

The terms dropped from l' do not depend on k only because v is shared by the components. At the
source itself zeta = nu = 0 and pi is the mixture's mean velocity sum_k softmax(l)_k mu_u_k.

DX policy. N predictions u_i give x0_i = x_src - sigma_src u_i on a grid over the segment's raw
time, index 0 at tau_dst and N - 1 at tau_src; x0(sigma) interpolates them linearly at
r (N - 1), r = (tau(sigma) - tau_dst) / (tau_src - tau_dst), and pi = (x - x0(sigma)) / sigma.
Its segment length is intrinsic (the one it was trained for): tau_dst = max(tau_src - b, 0).

A Dirac policy (one x0 whatever sigma) is integrated EXACTLY by Euler steps in sigma: the ODE
dx/dsigma = (x - x0) / sigma keeps x = x0 + sigma c, which Euler steps preserve.

Teachers and students of either family are driven in this flow view: a flow network is called
at (x, sigma T); a DDPM-style network at the variance-preserving state with the same
signal-to-noise ratio, x_vp = x / sqrt((1 - sigma)^2 + sigma^2), and the (fractional) timestep
whose a_bar is (1 - sigma)^2 / ((1 - sigma)^2 + sigma^2) (`network_inputs`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from genrl.denoiser import Denoiser, broadcast_to_batch
from genrl.errors import ConfigError
from genrl.flow_denoiser import FlowDenoiser
from genrl.samplers.gaussian_chain import GaussianChainSampler

EPS = 1e-6  # floor of every sigma a policy divides by
POLICIES = ("gmm", "dx")


# ---------------------------------------------------------------- time
def warp(tau: torch.Tensor, shift: float) -> torch.Tensor:
    """Raw time tau in [0, 1] -> noise level sigma (diffusers' flow `shift`)."""
    return shift * tau / (1 + (shift - 1) * tau)


def unwarp(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Noise level sigma -> raw time tau (the inverse of `warp`)."""
    return sigma / (shift + (1 - shift) * sigma)


def segments(nfe: int, final_step_size_scale: float) -> list[tuple[float, float]]:
    """(tau_src, tau_dst) of each of the `nfe` segments from tau = 1 down to 0."""
    base = 1.0 / (nfe - 1 + final_step_size_scale)
    starts = [1.0 - j * base for j in range(nfe)]
    return [(start, max(start - base, 0.0) if j < nfe - 1 else 0.0) for j, start in enumerate(starts)]


def substep_counts(tau_from: torch.Tensor, tau_to: torch.Tensor, substeps: int) -> torch.Tensor:
    """Euler sub-steps for each span: `substeps` per unit of raw time, rounded, at least 1."""
    return ((tau_from - tau_to) * substeps).round().clamp(min=1).long()


def rollout(velocity, x: torch.Tensor, tau_from: torch.Tensor, tau_to: torch.Tensor, shift: float, substeps: int) -> torch.Tensor:
    """Integrate dx/dsigma = velocity(x, sigma) from raw time tau_from to tau_to (per-sample (B,) tensors)
    with equal raw-time Euler sub-steps; samples whose span needs fewer sub-steps stop early."""
    tau_from, tau_to = tau_from.to(x.dtype), tau_to.to(x.dtype)
    counts = substep_counts(tau_from, tau_to, substeps)
    span = tau_from - tau_to
    for i in range(int(counts.max())):
        active = broadcast_to_batch(i < counts, x)
        fraction_a = (i / counts).clamp(max=1).to(x.dtype)
        fraction_b = ((i + 1) / counts).clamp(max=1).to(x.dtype)
        sigma_a = warp(tau_from - span * fraction_a, shift)
        sigma_b = warp(tau_from - span * fraction_b, shift)
        step = velocity(x, sigma_a) * broadcast_to_batch(sigma_b - sigma_a, x)
        x = torch.where(active, x + step, x)
    return x


# ---------------------------------------------------------------- policies
class GMPolicy:
    """Gaussian-mixture policy: means_u (B, K, C, H, W) velocities, logits (B, K, 1, H, W),
    log_std (B,); x_src (B, C, H, W), sigma_src (B,)."""

    def __init__(self, means_u: torch.Tensor, logits: torch.Tensor, log_std: torch.Tensor, x_src: torch.Tensor,
                 sigma_src: torch.Tensor):
        self.means_u, self.logits, self.log_std = means_u, logits, log_std
        self.x_src, self.sigma_src = x_src, sigma_src.to(x_src.dtype).clamp(min=EPS)
        sigma_src = broadcast_to_batch(self.sigma_src, x_src)
        self.means = x_src.unsqueeze(1) - sigma_src.unsqueeze(1) * means_u  # x0 space
        self.variance = broadcast_to_batch((2 * log_std).exp(), x_src) * sigma_src**2  # (B, 1, 1, 1)

    def x0(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x0 | x] at noise level sigma (scalar or (B,)) <= sigma_src."""
        sigma = broadcast_to_batch(torch.as_tensor(sigma, dtype=x.dtype, device=x.device).clamp(min=EPS), x)
        sigma_src = broadcast_to_batch(self.sigma_src, x)
        alpha, alpha_src = 1 - sigma, 1 - sigma_src
        zeta = (alpha / sigma) ** 2 - (alpha_src / sigma_src) ** 2  # (B, 1, 1, 1), >= 0
        nu = alpha / sigma**2 * x - alpha_src / sigma_src**2 * self.x_src  # (B, C, H, W)
        d = (1 + self.variance * zeta).clamp(min=EPS).unsqueeze(1)
        nu, zeta = nu.unsqueeze(1), zeta.unsqueeze(1)
        means = (self.means + self.variance.unsqueeze(1) * nu) / d
        logits = self.logits + (self.means * (nu - zeta * self.means / 2)).sum(2, keepdim=True) / d
        return (logits.softmax(1) * means).sum(1)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return (x - self.x0(x, sigma)) / broadcast_to_batch(sigma.clamp(min=EPS), x)

    def detached(self, dropout: float = 0.0, generator: torch.Generator | None = None) -> GMPolicy:
        """A copy without gradients, each component dropped with probability `dropout` (its logit set to
        -inf; a pixel that would lose all of them keeps all): the policy the training rollout follows."""
        logits = self.logits.detach()
        if dropout > 0:
            dropped = torch.rand(logits.shape, generator=generator, device=logits.device) < dropout
            dropped &= ~dropped.all(1, keepdim=True)
            logits = logits.masked_fill(dropped, float("-inf"))
        return GMPolicy(self.means_u.detach(), logits, self.log_std.detach(), self.x_src.detach(), self.sigma_src)


class DXPolicy:
    """Grid-of-x0 policy: velocities (B, N, C, H, W) at grid points from tau_dst (index 0) to tau_src."""

    def __init__(self, velocities: torch.Tensor, x_src: torch.Tensor, sigma_src: torch.Tensor, tau_src: torch.Tensor,
                 tau_dst: torch.Tensor, shift: float):
        sigma_src = sigma_src.to(x_src.dtype)
        self.grid = x_src.unsqueeze(1) - broadcast_to_batch(sigma_src, x_src).unsqueeze(1) * velocities
        self.tau_src, self.tau_dst, self.shift = tau_src.to(x_src.dtype), tau_dst.to(x_src.dtype), shift

    def x0(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        points = self.grid.shape[1]
        if points == 1:
            return self.grid[:, 0]
        tau = unwarp(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), self.shift).expand(x.shape[0])
        r = ((tau - self.tau_dst) / (self.tau_src - self.tau_dst).clamp(min=EPS)).clamp(0, 1)
        position = r * (points - 1)
        low = position.floor().long().clamp(max=points - 2)
        fraction = broadcast_to_batch(position - low, x)
        index = low.view(-1, 1, 1, 1, 1).expand(-1, 1, *self.grid.shape[2:])
        below, above = self.grid.gather(1, index)[:, 0], self.grid.gather(1, index + 1)[:, 0]
        return below + fraction * (above - below)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return (x - self.x0(x, sigma)) / broadcast_to_batch(sigma.clamp(min=EPS), x)

    def detached(self, dropout: float = 0.0, generator: torch.Generator | None = None) -> DXPolicy:
        copy = object.__new__(DXPolicy)
        copy.grid, copy.tau_src, copy.tau_dst, copy.shift = self.grid.detach(), self.tau_src, self.tau_dst, self.shift
        return copy


@dataclass(frozen=True)
class PiFlowSpec:
    """What a pi-Flow student's output means and how it is integrated; saved in its distilled.json."""

    policy: str = "gmm"  # "gmm" or "dx"
    num_components: int = 8  # GMM: K
    dx_grid: int = 10  # DX: N
    nfe: int = 4  # segments the student was trained for
    final_step_size_scale: float = 0.5
    shift: float = 1.0
    substeps: int = 128  # Euler sub-steps per unit of raw time

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ConfigError(f"pi-Flow policy must be one of {list(POLICIES)}, got {self.policy!r}")

    @classmethod
    def from_constants(cls, constants: dict) -> PiFlowSpec:
        return cls(**{key: constants[key] for key in cls.__dataclass_fields__ if key in constants})

    def constants(self) -> dict:
        return {"method": "piflow", **asdict(self)}

    def out_channels(self, channels: int) -> int:
        """Network output channels: GMM K*C means + K logits + 1 log-std channel; DX N*C."""
        if self.policy == "gmm":
            return self.num_components * (channels + 1) + 1
        return self.dx_grid * channels

    def segment_length(self) -> float:
        """Raw-time length of the trained segments (the DX grid's intrinsic span)."""
        return 1.0 / (self.nfe - 1 + self.final_step_size_scale)

    def make_policy(self, output: torch.Tensor, x_src: torch.Tensor, sigma_src: torch.Tensor, tau_src: torch.Tensor):
        """The policy a network output (B, out_channels, H, W) at (x_src, sigma_src) stands for."""
        batch, channels, *size = x_src.shape
        if output.shape[1] != self.out_channels(channels):
            raise ConfigError(f"the pi-Flow student's network has {output.shape[1]} output channels; a {self.policy} "
                              f"policy for {channels}-channel samples needs {self.out_channels(channels)}")
        output = output.to(x_src.dtype)
        if self.policy == "gmm":
            k = self.num_components
            means_u = output[:, : k * channels].reshape(batch, k, channels, *size)
            logits = output[:, k * channels: k * (channels + 1)].reshape(batch, k, 1, *size)
            log_std = output[:, -1].mean((1, 2))  # one value per sample: a zero-initialised linear read-out
            return GMPolicy(means_u, logits, log_std, x_src, sigma_src)
        tau_dst = (tau_src - self.segment_length()).clamp(min=0)
        return DXPolicy(output.reshape(batch, self.dx_grid, channels, *size), x_src, sigma_src, tau_src, tau_dst, self.shift)


# ---------------------------------------------------------------- the flow view of a network
def vp_alpha_bar(sigma: torch.Tensor) -> torch.Tensor:
    """a_bar of the variance-preserving state with the signal-to-noise ratio of x_sigma."""
    return (1 - sigma) ** 2 / ((1 - sigma) ** 2 + sigma**2)


def continuous_timestep(denoiser: Denoiser, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The (fractional) DDPM timestep whose a_bar is `alpha_bar`: linear interpolation of the schedule's
    log-SNR, clamped to [0, T - 1]."""
    table = denoiser.alphas(alpha_bar).double()
    log_snr = (table / (1 - table)).log()  # decreasing in t
    target = (alpha_bar.double() / (1 - alpha_bar.double()).clamp(min=1e-30)).clamp(min=1e-30).log()
    ascending = -log_snr
    upper = torch.searchsorted(ascending, -target).clamp(1, len(table) - 1)
    lower = upper - 1
    fraction = ((-target - ascending[lower]) / (ascending[upper] - ascending[lower])).clamp(0, 1)
    return (lower + fraction).clamp(0, len(table) - 1).float()


def network_inputs(denoiser, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(network input, network timestep (B,)) at the flow state (x, sigma) for a flow or DDPM-style network."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(x.shape[0])
    if isinstance(denoiser, FlowDenoiser):
        return x, denoiser.network_timestep(sigma)
    scale = broadcast_to_batch(((1 - sigma) ** 2 + sigma**2).rsqrt(), x)
    return x * scale.to(x.dtype), continuous_timestep(denoiser, vp_alpha_bar(sigma))


def velocity_from_output(denoiser, output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A network's raw output at `network_inputs(denoiser, x, sigma)` as a flow velocity u = (x - x0) / sigma.
    DDPM-style: its x0 estimate (clipped when its schedule clips, as its DDIM sampler does), at the
    a_bar of sigma, floored at the schedule's last a_bar (pure noise has no x0 estimate of its own)."""
    if isinstance(denoiser, FlowDenoiser):
        return output
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    alpha_bar = torch.maximum(vp_alpha_bar(sigma), denoiser.alphas(x)[-1].to(x.dtype))
    alpha_bar = broadcast_to_batch(alpha_bar, x)
    x_vp = x * broadcast_to_batch(((1 - sigma) ** 2 + sigma**2).rsqrt(), x)
    if denoiser.prediction_type == "epsilon":
        x0 = (x_vp - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()
    elif denoiser.prediction_type == "sample":
        x0 = output
    else:  # v_prediction
        x0 = alpha_bar.sqrt() * x_vp - (1 - alpha_bar).sqrt() * output
    if denoiser.clip_sample:
        x0 = x0.clamp(-denoiser.clip_sample_range, denoiser.clip_sample_range)
    return (x - x0) / broadcast_to_batch(sigma.clamp(min=EPS), x)


def call_student(network, x_in: torch.Tensor, timestep: torch.Tensor, condition: dict) -> torch.Tensor:
    """The student network's raw output (all its channels: no learned-sigma split as for a plain denoiser)."""
    return network(x_in, timestep, **condition, return_dict=False)[0]


# ---------------------------------------------------------------- the sampler
class PiFlowSampler(GaussianChainSampler):
    """`num_steps` student calls (NFE), one per segment, each followed by the policy's Euler sub-steps.

    Deterministic: each step of the chain is one whole segment (its std is 0), so the student runs
    through `genrl eval` and the `Trajectory` of every sampler, with the segment ends as states."""

    grid_dtype = torch.float64

    def __init__(self, spec: PiFlowSpec, num_steps: int):
        if num_steps < 1:
            raise ValueError(f"a pi-Flow sampler needs at least 1 step, got {num_steps}")
        self.spec = spec
        self.taus = segments(num_steps, spec.final_step_size_scale)
        self.step_pairs = [(float(warp(torch.tensor(a, dtype=torch.float64), spec.shift)),
                            float(warp(torch.tensor(b, dtype=torch.float64), spec.shift))) for a, b in self.taus]

    def is_stochastic(self, step_index: int) -> bool:
        return False

    def step(self, denoiser, x_t, step_index, condition, guidance_scale=1.0, null_condition=None, paired_condition=None):
        """The state at the segment's end (the 'mean' of a deterministic step) and std 0."""
        index = int(step_index)
        tau_src, tau_dst = (torch.full((x_t.shape[0],), value, dtype=torch.float64, device=x_t.device) for value in self.taus[index])
        sigma_src = warp(tau_src, self.spec.shift)
        x = x_t.float() if x_t.dtype != torch.float64 else x_t
        x_in, timestep = network_inputs(denoiser, x, sigma_src)
        output = call_student(denoiser.network, x_in.to(x_t.dtype), timestep, condition)
        policy = self.spec.make_policy(output.float() if x.dtype == torch.float32 else output.double(), x,
                                       sigma_src.to(x.dtype), tau_src.to(x.dtype))
        x_end = rollout(policy.velocity, x, tau_src, tau_dst, self.spec.shift, self.spec.substeps)
        return x_end.to(x_t.dtype), torch.zeros((), device=x_t.device)

    def step_distribution(self, denoiser, model_output, x_t, t, t_prev):
        raise NotImplementedError("a pi-Flow step is a whole segment; see PiFlowSampler.step")


def build_piflow_sampler(config, model) -> PiFlowSampler:
    """`sampler.kind: piflow` for a pi-Flow student (a model whose distilled.json says method piflow)."""
    student = getattr(model, "distilled", None) or {}
    if student.get("method") != "piflow":
        raise ConfigError("sampler.kind 'piflow' needs a pi-Flow student (made by `genrl distill` with method.kind piflow); "
                          "this model is not one")
    if config.guidance_scale != 1.0:
        raise ConfigError("sampler.guidance_scale must be 1 for a pi-Flow student: it imitates the (guided) teacher "
                          "unguided (set method.teacher_guidance_scale when distilling instead)")
    if config.num_steps > 8:
        raise ConfigError(f"sampler.num_steps {config.num_steps}: a pi-Flow student samples in 1-8 calls (it was trained "
                          f"for {student.get('nfe')})")
    return PiFlowSampler(PiFlowSpec.from_constants(student), config.num_steps)
