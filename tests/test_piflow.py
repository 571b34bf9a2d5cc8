"""pi-Flow: the policies' closed forms, the Euler rollout, the pi-ID loss, the student and `genrl distill`."""

import copy
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli

from distill.piflow import PiFlowDistiller, piflow_imitation_loss
from genrl.config import PiFlowMethod, ShapesData
from genrl.flow_denoiser import FlowDenoiser
from genrl.models.loading import load_model
from genrl.pretraining.data import ShapesBatches
from genrl.pretraining.loop import TrainedModules
from genrl.run_dir import read_metrics
from genrl.samplers.ddim import DDIMSampler
from genrl.samplers.piflow import (
    DXPolicy,
    GMPolicy,
    PiFlowSampler,
    PiFlowSpec,
    continuous_timestep,
    network_inputs,
    rollout,
    segments,
    substep_counts,
    unwarp,
    velocity_from_output,
    warp,
)

F64 = torch.float64


def random_gm(batch=3, k=4, channels=2, size=(2, 3), sigma_src=(0.9, 0.6, 1.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    means_u = torch.randn(batch, k, channels, *size, generator=g, dtype=F64)
    logits = torch.randn(batch, k, 1, *size, generator=g, dtype=F64)
    log_std = torch.randn(batch, generator=g, dtype=F64) * 0.3 - 0.5
    x_src = torch.randn(batch, channels, *size, generator=g, dtype=F64)
    return GMPolicy(means_u, logits, log_std, x_src, torch.tensor(sigma_src, dtype=F64))


def test_gm_posterior_mean_matches_numerical_integration():
    """E[x0 | x] of the GM policy against brute force: the density p(x0 | x_src) N(x; a x0, s^2) /
    N(x_src; a_src x0, s_src^2) integrated on a fine 1-D grid (one channel, one pixel)."""
    policy = random_gm(channels=1, size=(1, 1))
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.5, 0.2, 0.7], dtype=F64)
    x = torch.randn(3, 1, 1, 1, generator=g, dtype=F64)
    got = policy.x0(x, sigma).flatten()
    grid = torch.linspace(-15, 15, 200001, dtype=F64)
    for b in range(3):
        means, variance = policy.means[b].flatten(), float(policy.variance[b])
        weights = policy.logits[b].flatten().softmax(0)
        density = sum(w * torch.exp(-(grid - m) ** 2 / (2 * variance)) for w, m in zip(weights, means))
        a, a_src, s, s_src = 1 - sigma[b], 1 - policy.sigma_src[b], sigma[b], policy.sigma_src[b]
        ratio = torch.exp(-(x[b].item() - a * grid) ** 2 / (2 * s**2) + (policy.x_src[b].item() - a_src * grid) ** 2 / (2 * s_src**2))
        posterior = density * ratio
        assert float((posterior * grid).sum() / posterior.sum()) == pytest.approx(float(got[b]), abs=1e-8)


def test_gm_from_pure_noise_is_the_ordinary_mixture_posterior():
    """sigma_src = 1: the GM is a prior over x0, and E[x0 | x] follows from per-component Gaussian
    likelihoods N(x; a mu_k, a^2 v + s^2) (product over channels) and per-component posteriors."""
    policy = random_gm(sigma_src=(1.0, 1.0, 1.0))
    sigma = torch.tensor([0.3, 0.8, 0.05], dtype=F64)
    x = torch.randn(3, 2, 2, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    a, s = (1 - sigma).view(-1, 1, 1, 1, 1), sigma.view(-1, 1, 1, 1, 1)
    v = policy.variance.unsqueeze(1)
    means = policy.means  # (B, K, C, H, W)
    marginal_var = a**2 * v + s**2
    log_lik = (-(x.unsqueeze(1) - a * means) ** 2 / (2 * marginal_var) - 0.5 * torch.log(2 * math.pi * marginal_var)).sum(2, keepdim=True)
    weights = (policy.logits.log_softmax(1) + log_lik).softmax(1)
    component_means = means + a * v * (x.unsqueeze(1) - a * means) / marginal_var
    expected = (weights * component_means).sum(1)
    assert torch.allclose(policy.x0(x, sigma), expected, atol=1e-10)
    # K = 1: the plain Gaussian posterior (mu s^2 + v a x) / (s^2 + v a^2)
    single = GMPolicy(policy.means_u[:, :1], policy.logits[:, :1], policy.log_std, policy.x_src, policy.sigma_src)
    mu, a, s, v = single.means[:, 0], (1 - sigma).view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1), single.variance
    assert torch.allclose(single.x0(x, sigma), (mu * s**2 + v * a * x) / (s**2 + v * a**2), atol=1e-12)


def test_gm_velocity_at_the_source_is_the_mixture_mean_velocity():
    policy = random_gm()
    expected = (policy.logits.softmax(1) * policy.means_u).sum(1)
    assert torch.allclose(policy.velocity(policy.x_src, policy.sigma_src), expected, atol=1e-10)


def dirac_gm(target: torch.Tensor, x_src: torch.Tensor, sigma_src: float) -> GMPolicy:
    """K = 1 with a vanishing std: every state's x0 is `target`."""
    batch = target.shape[0]
    means_u = ((x_src - target) / sigma_src).unsqueeze(1)
    return GMPolicy(means_u, torch.zeros(batch, 1, 1, *target.shape[2:], dtype=F64), torch.full((batch,), -40.0, dtype=F64),
                    x_src, torch.full((batch,), sigma_src, dtype=F64))


@pytest.mark.parametrize("substeps", [1, 3, 128])
def test_dirac_policy_rollout_lands_exactly_on_its_mean(substeps):
    """dx/dsigma = (x - x0) / sigma keeps x = x0 + sigma c, which Euler steps in sigma preserve: any number
    of sub-steps, any warp, lands on x0 exactly. A DX policy with all grid points equal is the same Dirac."""
    g = torch.Generator().manual_seed(3)
    target, x_src = torch.randn(2, 3, 4, 4, generator=g, dtype=F64), torch.randn(2, 3, 4, 4, generator=g, dtype=F64)
    tau_src, shift = 0.8, 3.0
    sigma_src = float(warp(torch.tensor(tau_src), shift))
    ones = torch.ones(2, dtype=F64)
    end = rollout(dirac_gm(target, x_src, sigma_src).velocity, x_src, tau_src * ones, 0 * ones, shift, substeps)
    assert torch.allclose(end, target, atol=1e-9)
    velocities = ((x_src - target) / sigma_src).unsqueeze(1).repeat(1, 5, 1, 1, 1)
    dx = DXPolicy(velocities, x_src, sigma_src * ones, tau_src * ones, 0 * ones, shift)
    assert torch.allclose(rollout(dx.velocity, x_src, tau_src * ones, 0 * ones, shift, substeps), target, atol=1e-9)


def test_dx_policy_interpolates_its_grid_in_raw_time():
    g = torch.Generator().manual_seed(4)
    x_src = torch.randn(1, 1, 2, 2, generator=g, dtype=F64)
    velocities = torch.randn(1, 3, 1, 2, 2, generator=g, dtype=F64)
    tau_src, tau_dst, shift = torch.tensor([0.9], dtype=F64), torch.tensor([0.3], dtype=F64), 2.0
    sigma_src = warp(tau_src, shift)
    policy = DXPolicy(velocities, x_src, sigma_src, tau_src, tau_dst, shift)
    grid = x_src - sigma_src.view(-1, 1, 1, 1) * velocities[:, [0, 1, 2]].transpose(0, 1)  # x0_i, (3, 1, 2, 2)
    x = torch.randn(1, 1, 2, 2, generator=g, dtype=F64)
    assert torch.allclose(policy.x0(x, sigma_src), grid[2])  # r = 1: the source end
    assert torch.allclose(policy.x0(x, warp(tau_dst, shift)), grid[0])  # r = 0: the destination end
    assert torch.allclose(policy.x0(x, warp(torch.tensor([0.45], dtype=F64), shift)), (grid[0] + grid[1]) / 2)


def test_gaussian_policy_rollout_is_the_probability_flow_of_its_gaussian():
    """K = 1, std s, sigma_src = 1: the policy's flow maps noise z to mu + s z (the PF-ODE of N(mu, s^2))."""
    g = torch.Generator().manual_seed(5)
    mu, z = torch.randn(4, 1, 3, 3, generator=g, dtype=F64), torch.randn(4, 1, 3, 3, generator=g, dtype=F64)
    std = 0.6
    policy = GMPolicy((z - mu).unsqueeze(1), torch.zeros(4, 1, 1, 3, 3, dtype=F64), torch.full((4,), math.log(std), dtype=F64),
                      z, torch.ones(4, dtype=F64))
    ones = torch.ones(4, dtype=F64)
    errors = [float((rollout(policy.velocity, z, ones, 0 * ones, 1.0, n) - (mu + std * z)).abs().max()) for n in (128, 512)]
    assert errors[0] < 0.03 and errors[1] < errors[0] / 3  # first-order Euler: 4x the sub-steps, ~1/4 the error


def test_segments_substeps_and_time_warp():
    assert segments(1, 0.5) == [(1.0, 0.0)]
    layout = segments(4, 0.5)
    assert [round(a * 3.5, 6) for a, _ in layout] == [3.5, 2.5, 1.5, 0.5] and layout[-1][1] == 0.0
    taus = torch.tensor(layout, dtype=F64)
    assert substep_counts(taus[:, 0], taus[:, 1], 128).tolist() == [37, 37, 37, 18]
    assert substep_counts(torch.ones(1), torch.zeros(1), 128).tolist() == [128]
    tau = torch.linspace(0, 1, 11, dtype=F64)
    assert torch.allclose(unwarp(warp(tau, 3.0), 3.0), tau)
    # the warp is diffusers' flow shift: the 4-step student's first segment ends where FlowMatchEuler's shifted grid would
    sampler = PiFlowSampler(PiFlowSpec(nfe=4, shift=3.0), num_steps=4)
    assert sampler.num_steps == 4 and sampler.step_pairs[0][0] == 1.0 and sampler.step_pairs[-1][1] == 0.0
    assert sampler.step_pairs[1][0] == pytest.approx(3 * (2.5 / 3.5) / (1 + 2 * (2.5 / 3.5)))


def test_ddpm_teacher_flow_view_steps_exactly_like_ddim(tiny_model_dir):
    """A DDPM teacher's flow-view velocity: one Euler step from sigma(t) to sigma(t_prev) is the
    deterministic DDIM step from t to t_prev (after mapping x_flow <-> x_vp), and the continuous
    timestep of an integer t's a_bar is t."""
    model = load_model(tiny_model_dir).eval()
    denoiser = model.denoiser
    denoiser.clip_sample = False  # DDIM with a clipped x0 keeps the unclipped eps (not a single velocity)
    condition = model.encode_prompts(["a red circle at the top left"] * 2)
    ddim = DDIMSampler(model.num_train_timesteps, num_steps=5, eta=0.0)
    t, t_prev = ddim.step_pairs[1]
    a, a_prev = denoiser.alphas(torch.zeros(1))[[t, t_prev]].double()
    flow_sigma = lambda ab: (1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt())
    sigma, sigma_prev = flow_sigma(a), flow_sigma(a_prev)
    x_vp = torch.randn(2, *model.sample_shape, generator=torch.Generator().manual_seed(6))
    x = x_vp / (a.sqrt() + (1 - a).sqrt()).float()
    with torch.no_grad():
        x_in, timestep = network_inputs(denoiser, x, sigma.float())
        assert torch.allclose(x_in, x_vp, atol=1e-5) and torch.allclose(timestep, torch.full((2,), float(t)), atol=1e-2)
        u = velocity_from_output(denoiser, denoiser.model_output(x_in, timestep, condition), x, sigma.float())
        x_next = x + u * float(sigma_prev - sigma)
        expected, _ = ddim.step(denoiser, x_vp, 1, condition)
    assert torch.allclose(x_next * (a_prev.sqrt() + (1 - a_prev).sqrt()).float(), expected, atol=1e-4)
    assert continuous_timestep(denoiser, denoiser.alphas(x)[[0, 500, 999]]).tolist() == pytest.approx([0, 500, 999], abs=1e-3)


def analytic_student_and_teacher(offset: float):
    """A 1-NFE GMM 'student' whose policy is a fixed Gaussian mixture over x0 (means m_k, shared std),
    a `shift` parameter as its only weight, and the exact velocity of that mixture as the teacher."""
    k, channels = 3, 2
    g = torch.Generator().manual_seed(7)
    data_means = torch.randn(1, k, channels, 4, 4, generator=g)
    logits = torch.randn(1, k, 1, 4, 4, generator=g)
    log_std = math.log(0.3)
    spec = PiFlowSpec(policy="gmm", num_components=k, nfe=1, shift=1.0, substeps=16)
    parameter = torch.nn.Parameter(torch.tensor(offset))

    def student(x_in, timestep, condition):  # at sigma_src = 1, x0 means = x_src - mu_u: mu_u = x_src - m_k
        batch = x_in.shape[0]
        means_u = (x_in.unsqueeze(1) - data_means - parameter).reshape(batch, k * channels, 4, 4)
        return torch.cat([means_u, logits.expand(batch, -1, -1, -1, -1).reshape(batch, k, 4, 4),
                          torch.full((batch, 1, 4, 4), log_std)], 1)

    def teacher_velocity(x, sigma, condition):
        batch = x.shape[0]
        prior = GMPolicy((x.new_zeros(batch, 1, 1, 1, 1) - data_means).expand(batch, -1, -1, -1, -1), logits.expand(batch, -1, -1, -1, -1),
                         torch.full((batch,), log_std), torch.zeros_like(x), torch.ones(batch))
        return prior.velocity(x, sigma)

    return spec, student, teacher_velocity, parameter


def test_imitation_loss_is_zero_when_the_policy_is_the_teacher():
    spec, student, teacher, parameter = analytic_student_and_teacher(offset=0.0)
    denoiser = FlowDenoiser(torch.nn.Identity())
    clean = torch.rand(6, 2, 4, 4) * 2 - 1
    loss, parts = piflow_imitation_loss(student, denoiser, teacher, spec, clean, {}, torch.Generator().manual_seed(0), 3, 0.0)
    assert loss.item() < 1e-9 and parts["imitation_loss"] == loss.item()
    spec, student, teacher, parameter = analytic_student_and_teacher(offset=0.2)
    wrong, _ = piflow_imitation_loss(student, denoiser, teacher, spec, clean, {}, torch.Generator().manual_seed(0), 3, 0.0)
    assert wrong.item() > 1e-3
    wrong.backward()
    assert parameter.grad.item() > 0  # the gradient moves the offset back towards 0


def test_imitation_loss_trains_only_the_student(tiny_flow_model_dir):
    teacher = load_model(tiny_flow_model_dir).eval()
    teacher_modules = TrainedModules.of(copy.deepcopy(teacher))
    distiller = PiFlowDistiller(PiFlowMethod(policy="gmm", num_components=2, nfe=2, substeps=16, teacher_guidance_scale=3.0),
                                teacher, teacher_modules)
    student_model = distiller.make_student(teacher)
    assert student_model.network.conv_out.out_channels == 2 * 4 + 1 and teacher.network.conv_out.out_channels == 3
    student = TrainedModules.of(student_model)
    clean, condition = ShapesBatches(ShapesData(image_size=32), teacher.tokenizer, 4).sample(np.random.default_rng(0), "cpu")
    # warm start: at the source the policy's velocity is the teacher's (unguided) velocity
    x, sigma = torch.randn(4, *teacher.sample_shape), torch.tensor([1.0, 0.7, 0.4, 0.1])
    with torch.no_grad():
        x_in, timestep = network_inputs(student_model.denoiser, x, sigma)
        policy = distiller.spec.make_policy(student(x_in, timestep, condition), x, sigma, sigma)
        assert torch.allclose(policy.velocity(x, sigma), teacher_modules(x_in, timestep, condition), atol=1e-5)
    loss, parts = distiller.loss(student, clean, condition, torch.Generator().manual_seed(0))
    loss.backward()
    assert parts["gm_log_std"] == 0.0  # zero-initialised log-std channel
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.network.conv_out.parameters())
    assert all(p.grad is None for p in teacher_modules.parameters())


def imitation_loss(distiller, student_model, teacher, batches: int = 3) -> float:
    """The pi-ID loss on fixed batches, noise and query times."""
    total = 0.0
    for seed in range(batches):
        clean, condition = ShapesBatches(ShapesData(image_size=32), teacher.tokenizer, 8).sample(np.random.default_rng(100 + seed), "cpu")
        with torch.no_grad():
            loss, _ = distiller.loss(TrainedModules.of(student_model), clean, condition, torch.Generator().manual_seed(seed))
        total += loss.item() / batches
    return total


@pytest.mark.parametrize("teacher_fixture,overrides", [
    ("tiny_flow_model_dir", ["method.policy=gmm", "method.num_components=4"]),
    # the warm-started DX student already imitates the unguided random teacher closely (loss 0.003): it learns the
    # guided one (measured: 0.065 untrained, 0.046 after the run)
    ("tiny_flow_model_dir", ["method.policy=dx", "method.dx_grid=4", "method.teacher_guidance_scale=6.0", "optimizer.learning_rate=5e-4"]),
    ("tiny_model_dir", ["method.policy=gmm", "method.num_components=2", "method.nfe=2"]),
])
def test_distill_cli_lowers_the_imitation_loss_and_samples_through_eval(teacher_fixture, overrides, request, tmp_path):
    """A short real `genrl distill` on a flow teacher (GMM, DX) and on a DDPM teacher through its flow
    view: the saved student reloads as a pi-Flow student, imitates its teacher better than the
    untrained (warm-started) student, reloads with identical outputs, and samples through `genrl eval`."""
    teacher_dir = request.getfixturevalue(teacher_fixture)
    out = tmp_path / "run"
    args = ["configs/distill/piflow_gmm_shapes_flow.yaml", f"teacher.path={teacher_dir}", f"output_dir={out}",
            "method.substeps=16", "max_steps=30", "batch_size=8", "warmup_steps=2", "optimizer.learning_rate=2e-3",
            "ema_decay=0.5", "checkpoint_every=30", "log_every=10", "eval.num_samples=4", "eval.num_steps=2", *overrides]
    assert run_cli("distill", *args) == 0
    student = load_model(out / "model").eval()
    assert student.distilled["method"] == "piflow" and student.distilled["policy"] == overrides[0].split("=")[1]
    teacher = load_model(teacher_dir).eval()
    method = PiFlowMethod.model_validate({key.removeprefix("method."): yaml.safe_load(value) for key, value in
                                          (o.split("=") for o in overrides) if key.startswith("method.")} | {"substeps": 16})
    distiller = PiFlowDistiller(method, teacher, TrainedModules.of(copy.deepcopy(teacher)))
    untrained = distiller.make_student(teacher)
    assert student.network.conv_out.out_channels == untrained.network.conv_out.out_channels
    trained_loss, untrained_loss = imitation_loss(distiller, student, teacher), imitation_loss(distiller, untrained, teacher)
    assert trained_loss < 0.8 * untrained_loss, (trained_loss, untrained_loss)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "imitation_loss" in r] == [10, 20, 30]
    # save/load round trip: the same samples from the same noise
    student.save_pretrained(tmp_path / "again")
    again = load_model(tmp_path / "again").eval()
    sampler = PiFlowSampler(PiFlowSpec.from_constants(student.distilled), 2)
    condition, shape = student.encode_prompts(["a blue square at the center"] * 2), (2, *student.sample_shape)
    first = sampler.sample(student.denoiser, condition, shape, generator=torch.Generator().manual_seed(0)).sample
    second = sampler.sample(again.denoiser, again.encode_prompts(["a blue square at the center"] * 2), shape,
                            generator=torch.Generator().manual_seed(0)).sample
    assert torch.equal(first, second) and torch.isfinite(first).all()
    assert run_cli("eval", "configs/eval/shapes.yaml", f"model.path={out / 'model'}", f"output_dir={tmp_path / 'e'}",
                   "sampler.kind=piflow", "sampler.num_steps=2", "rollout.eval_samples=4") == 0


def test_piflow_refuses_bad_input(tiny_flow_model_dir, tiny_policy_dir, umaze_demos, tmp_path, capsys):
    recipe = "configs/distill/piflow_gmm_shapes_flow.yaml"
    cases = [
        (["method.num_components=0"], "method.num_components"),
        (["method.nfe=3"], "method.nfe"),
        ([f"teacher.path={tiny_policy_dir}", "data={kind: demonstrations}", f"data.path={umaze_demos}"], "image model"),
    ]
    for overrides, culprit in cases:
        assert run_cli("distill", recipe, f"teacher.path={tiny_flow_model_dir}", f"output_dir={tmp_path / 'run'}", *overrides) == 2
        error = capsys.readouterr().err.strip()
        assert culprit in error and len(error.splitlines()) == 1, error
    # a model that is not a pi-Flow student cannot be sampled as one
    assert run_cli("eval", "configs/eval/shapes.yaml", f"model.path={tiny_flow_model_dir}", f"output_dir={tmp_path / 'e'}",
                   "sampler.kind=piflow", "sampler.num_steps=2") == 2
    assert "pi-Flow student" in capsys.readouterr().err
