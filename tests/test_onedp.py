"""OneDP (distill/onedp.py, genrl/samplers/onedp.py): the KL gradient and its surrogate, the auxiliary
network's separate update, matching an analytic teacher, the sampler, and `genrl distill`/`genrl eval`."""

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_POLICY_OVERRIDES, UMAZE_PRETRAIN, assert_distill_resumes_exactly, run_cli
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from distill.onedp import OneDPDistiller, generate, kl_gradient, onedp_loss, sample_timesteps, scaled_timestep, surrogate_loss
from genrl.config import OneDPMethod, SamplerConfig, load_config
from genrl.data.demonstrations import load_demonstrations
from genrl.denoiser import Denoiser
from genrl.errors import ConfigError
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.pretraining.data import DemonstrationWindows
from genrl.pretraining.loop import TrainedModules
from genrl.run_dir import read_metrics
from genrl.samplers import build_sampler
from genrl.samplers.ddpm import DDPMSampler
from genrl.samplers.onedp import OneDPSampler

RECIPE_D = "configs/distill/onedp_d_pointmaze_umaze.yaml"


@pytest.fixture()
def policy(tiny_policy_dir):
    return DiffusionPolicy.from_pretrained(tiny_policy_dir).eval()


def observations(policy, batch: int, seed: int = 0) -> dict:
    return policy.condition(torch.randn(batch, policy.n_obs_steps, policy.obs_dim, generator=torch.Generator().manual_seed(seed)))


def same_normalizer(a: DiffusionPolicy, b: DiffusionPolicy) -> bool:
    fields = [(x.normalizer.action.offset, x.normalizer.action.scale, x.normalizer.obs.offset, x.normalizer.obs.scale) for x in (a, b)]
    return all(np.array_equal(u, v) for u, v in zip(*fields))


def distiller_for(policy, variant: str, **fields) -> OneDPDistiller:
    method = OneDPMethod(variant=variant, **fields)
    return OneDPDistiller(method, policy, TrainedModules.of(copy.deepcopy(policy)))


# ------------------------------------------------------------------ the gradient
def test_surrogate_gradient_is_g_and_the_generator_update_follows_the_formula(policy):
    """OneDP-D end to end: the gradient `genrl distill` applies to the generator's weights equals the chain rule
    through the generated action of g = a_k s_k (eps_teacher(A_k, k) - e_k), computed here from the scheduler's
    own table (not the code under test)."""
    action = torch.randn(3, 4, 2, requires_grad=True)
    g = torch.randn(3, 4, 2)
    (grad,) = torch.autograd.grad(surrogate_loss(action, g), action)
    assert torch.allclose(grad, g / 3, atol=1e-7)  # summed over a chunk, averaged over the batch

    distiller = distiller_for(policy, "deterministic")
    student = TrainedModules.of(distiller.make_student(policy))
    batch, condition = 5, observations(policy, 5)
    loss, parts = distiller.loss(student, torch.zeros(batch, *policy.sample_shape), condition, torch.Generator().manual_seed(3))
    loss.backward()
    got = [p.grad.clone() for p in student.parameters()]
    assert set(parts) == {"generator_loss", "teacher_denoising_loss"}

    # the same step by hand: z = 0, then k and e_k drawn in the loss's order from the same seed
    student.zero_grad()
    rng = torch.Generator().manual_seed(3)
    k_init = distiller.k_init
    z = torch.zeros(batch, *policy.sample_shape)
    alphas = torch.as_tensor(policy.scheduler.alphas_cumprod, dtype=torch.float32)
    eps_hat = student(z, torch.full((batch,), k_init), condition)
    action = (z - (1 - alphas[k_init]).sqrt() * eps_hat) / alphas[k_init].sqrt()
    k = torch.randint(distiller.k_min, distiller.k_max + 1, (batch,), generator=rng)
    noise = torch.randn(action.shape, generator=rng)
    a, s = alphas[k].sqrt().view(-1, 1, 1), (1 - alphas[k]).sqrt().view(-1, 1, 1)
    with torch.no_grad():
        eps_teacher = distiller.teacher(a * action + s * noise, k, condition)
    g = a * s * (eps_teacher - noise)
    (action * g).sum().div(batch).backward()
    mine, theirs = torch.cat([p.flatten() for p in got]), torch.cat([p.grad.flatten() for p in student.parameters()])
    assert theirs.norm() > 0 and (mine - theirs).norm() < 1e-3 * theirs.norm()  # float32 schedule tables differ in the last bits


ALPHAS = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2").alphas_cumprod.float()
GAUSS_DENOISER = Denoiser(torch.nn.Identity(), ALPHAS, "epsilon")


def gaussian_eps(x, k, mean, var):
    """Exact eps-prediction for data ~ N(mean, var) (per element) at timestep k."""
    a, s = ALPHAS[k].sqrt().view(-1, 1, 1), (1 - ALPHAS[k]).sqrt().view(-1, 1, 1)
    return s * (x - a * mean) / (a * a * var + s * s)


def test_deterministic_kl_gradient_matches_the_analytic_gaussian_teacher():
    """Teacher N(m, v), generator a point at A: E_e[g_D] = a^2 s^2 (A - m) / (a^2 v + s^2) (pushes A towards m)."""
    m, v, point = 0.3, 0.05, 0.8
    k = torch.full((200_000,), 40)
    noise = torch.randn(200_000, 1, 1, generator=torch.Generator().manual_seed(0))
    action = torch.full((200_000, 1, 1), point)
    a, s = ALPHAS[40].sqrt(), (1 - ALPHAS[40]).sqrt()
    noisy = a * action + s * noise
    g = kl_gradient(GAUSS_DENOISER, gaussian_eps(noisy, k, m, v), noise, k, noisy)
    expected = a * a * s * s * (point - m) / (a * a * v + s * s)
    assert float(g.mean()) == pytest.approx(float(expected), rel=0.02)
    assert expected > 0  # A > m: gradient descent lowers A


class AffineGenerator(torch.nn.Module):
    """A 'network' whose output, read as eps at k_init, gives the action A = mean + scale * z."""

    def __init__(self, dims: int):
        super().__init__()
        self.mean = torch.nn.Parameter(torch.zeros(dims))
        self.scale = torch.nn.Parameter(torch.full((dims,), 0.5))

    def forward(self, z, k, condition):
        a, s = ALPHAS[k].sqrt().view(-1, 1, 1), (1 - ALPHAS[k]).sqrt().view(-1, 1, 1)
        return (z - a * (self.mean + self.scale * z)) / s


class GaussianScore(torch.nn.Module):
    """An auxiliary 'network' of the exact family of the generator's distributions: eps of N(mu, var)."""

    def __init__(self, dims: int):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros(dims))
        self.log_var = torch.nn.Parameter(torch.full((dims,), float(np.log(0.25))))

    def forward(self, x, k, condition):
        return gaussian_eps(x, k, self.mu, self.log_var.exp())


@pytest.mark.parametrize("stochastic", [False, True])
def test_onedp_matches_an_analytic_gaussian_teacher(stochastic):
    """Teacher N(m, v) per element. OneDP-D (z = 0) finds the mean; OneDP-S, with its auxiliary score network
    trained on its samples, finds the mean AND the spread sqrt(v) (it starts at 0.5)."""
    torch.manual_seed(0)
    m, v = torch.tensor([0.5, -0.3]), torch.tensor([0.04, 0.09])
    generator_net, aux = AffineGenerator(2), GaussianScore(2)
    optimizer = torch.optim.Adam(generator_net.parameters(), lr=0.02, betas=(0.0, 0.999))
    aux_optimizer = torch.optim.Adam(aux.parameters(), lr=0.05, betas=(0.0, 0.999))
    rng, condition = torch.Generator().manual_seed(0), {"global_cond": torch.zeros(256, 1)}
    scales = []
    for step in range(400):
        loss, _ = onedp_loss(GAUSS_DENOISER, generator_net, lambda x, k, c: gaussian_eps(x, k, m, v), aux if stochastic else None,
                             aux_optimizer, (256, 1, 2), condition, 65, 2, 95, stochastic, rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 300:
            scales.append(generator_net.scale.detach().abs().clone())
    assert torch.allclose(generator_net.mean.detach(), m, atol=0.04)
    if stochastic:
        assert torch.allclose(torch.stack(scales).mean(0), v.sqrt(), rtol=0.2)
        assert torch.allclose(aux.mu.detach(), m, atol=0.06)  # the auxiliary network tracks the generator
    else:
        assert torch.equal(generator_net.scale.detach(), torch.full((2,), 0.5))  # z = 0: the scale never matters


# ------------------------------------------------------------------ who trains what
def test_aux_update_comes_first_and_touches_neither_generator_nor_teacher(policy):
    distiller = distiller_for(policy, "stochastic", aux_learning_rate=1e-3)
    student = TrainedModules.of(distiller.make_student(policy))
    before = {name: [p.detach().clone() for p in module.parameters()]
              for name, module in [("generator", student), ("aux", distiller.aux), ("teacher", distiller.teacher)]}
    loss, parts = distiller.loss(student, torch.zeros(6, *policy.sample_shape), observations(policy, 6),
                                 torch.Generator().manual_seed(0))
    assert "aux_loss" in parts
    same = lambda name, module: all(torch.equal(a, b) for a, b in zip(before[name], module.parameters()))
    assert same("generator", student) and same("teacher", distiller.teacher)
    assert not same("aux", distiller.aux)  # the auxiliary network took its Adam step inside the loss
    assert all(p.grad is None for p in student.parameters())  # its backward left nothing on the generator
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in [*distiller.aux.parameters(), *distiller.teacher.parameters()])
    assert not any(p.requires_grad for p in distiller.teacher.parameters())
    assert distiller.checkpointed() == (distiller.aux, distiller.aux_optimizer)
    deterministic = distiller_for(policy, "deterministic")
    assert deterministic.aux is None and deterministic.checkpointed() == ()


def test_timesteps_are_scaled_and_drawn_inside_the_range(policy):
    assert (scaled_timestep(65, 100), scaled_timestep(2, 100), scaled_timestep(95, 100)) == (65, 2, 95)
    assert (scaled_timestep(65, 1000), scaled_timestep(95, 20), scaled_timestep(99, 20)) == (650, 19, 19)
    k = sample_timesteps(20_000, 2, 95, torch.Generator().manual_seed(0), "cpu")
    assert k.min() == 2 and k.max() == 95 and len(k.unique()) == 94
    distiller = distiller_for(policy, "deterministic")  # the tiny policy has 20 training steps
    assert (distiller.k_init, distiller.k_min, distiller.k_max) == (13, 0, 19)
    assert distiller.student_constants() == {"method": "onedp", "variant": "deterministic", "k_init": 13}


# ------------------------------------------------------------------ the sampler and saving
def one_call(sampler, model, condition, shape, seed):
    return sampler.sample(model.denoiser, condition, shape, generator=torch.Generator().manual_seed(seed))


def test_student_round_trip_and_sampler(policy, tmp_path):
    """A trained-looking student saves and reloads with its constants and the teacher's normaliser, and gives the
    same actions: from the same noise (S), always (D); the one call is the generator's clipped x0 estimate."""
    condition = observations(policy, 4)
    shape = (4, *policy.sample_shape)
    for variant in ["stochastic", "deterministic"]:
        distiller = distiller_for(policy, variant)
        student = distiller.make_student(policy)
        with torch.no_grad():  # move it away from the teacher
            for p in student.network.parameters():
                p.add_(0.05 * torch.randn_like(p))
        student.policy_config["distilled"] = distiller.student_constants()
        student.save_pretrained(tmp_path / variant)
        loaded = DiffusionPolicy.from_pretrained(tmp_path / variant).eval()
        assert loaded.distilled == {"method": "onedp", "variant": variant, "k_init": 13}
        assert same_normalizer(loaded, policy)
        sampler = build_sampler(SamplerConfig(kind="onedp", num_steps=1), loaded)
        assert isinstance(sampler, OneDPSampler) and sampler.num_steps == 1 and sampler.stochastic_steps() == []
        trajectory = one_call(sampler, loaded, condition, shape, seed=0)
        assert torch.equal(trajectory.states[:, -1], one_call(sampler, student.eval(), condition, shape, seed=0).states[:, -1])
        z = torch.zeros(shape) if variant == "deterministic" else torch.randn(shape, generator=torch.Generator().manual_seed(0))
        assert torch.equal(trajectory.states[:, 0], z)
        with torch.no_grad():
            by_hand = generate(loaded.denoiser, TrainedModules.of(loaded), z, 13, condition).clamp(-1, 1)
        assert torch.allclose(trajectory.states[:, -1], by_hand, atol=1e-6)
        other = one_call(sampler, loaded, condition, shape, seed=1).states[:, -1]
        assert torch.equal(other, trajectory.states[:, -1]) == (variant == "deterministic")
    with pytest.raises(ConfigError, match="num_steps must be 1"):
        build_sampler(SamplerConfig(kind="onedp", num_steps=2), loaded)
    with pytest.raises(ConfigError, match="not one"):
        build_sampler(SamplerConfig(kind="onedp", num_steps=1), policy)
    with pytest.raises(ConfigError, match="onedp student .* sampler.kind=onedp sampler.num_steps=1"):
        build_sampler(SamplerConfig(kind="ddpm", num_steps=10), loaded)  # a teacher's chain would run the student off its training


# ------------------------------------------------------------------ bad input
def test_bad_config_gives_one_line_errors(tiny_policy_dir, tiny_model_dir, tiny_flow_model_dir, tmp_path, capsys):
    for override, words in [("method.k_min=50", "k_min (50) must not exceed k_max (40)"),
                            ("method.k_max=100", "method.k_max"),
                            ("method.variant=both", "method.variant"),
                            ("eval.num_steps=2", "eval.num_steps must be 1")]:
        extra = ["method.k_max=40"] if override == "method.k_min=50" else []
        with pytest.raises(ConfigError) as error:
            load_config("distill", RECIPE_D, [override, *extra])
        assert words in str(error.value) and "\n" not in str(error.value)
    for teacher, words in [(tiny_flow_model_dir, "Diffusion Policies"), (tiny_model_dir, "Diffusion Policies")]:
        assert run_cli("distill", RECIPE_D, f"teacher.path={teacher}", "data={kind: shapes}", f"output_dir={tmp_path / 'x'}") == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1
    # a flow-matching policy: the teacher saved with a flow scheduler
    flow_policy = DiffusionPolicy.from_pretrained(tiny_policy_dir)
    flow_policy = DiffusionPolicy(flow_policy.network, FlowMatchEulerDiscreteScheduler(num_train_timesteps=20),
                                  flow_policy.normalizer, flow_policy.policy_config)
    with pytest.raises(ConfigError, match="DDPM-style teacher"):
        distiller_for(flow_policy, "deterministic")


# ------------------------------------------------------------------ genrl distill / genrl eval
@pytest.fixture(scope="module")
def teacher_dir(umaze_demos, tmp_path_factory):
    """The tiny U-maze policy after 150 pretraining steps. The session's random-init tiny policy cannot serve: its
    eps output hardly depends on x (its denoising loss is ~1.2 on any action), so no measure of fit can move."""
    out = tmp_path_factory.mktemp("onedp_teacher")
    assert run_cli("pretrain", UMAZE_PRETRAIN, f"data.path={umaze_demos}", f"output_dir={out}", *TINY_POLICY_OVERRIDES,
                   "eval.skip=true", "max_steps=150", "batch_size=64", "warmup_steps=10", "optimizer.learning_rate=3e-3",
                   "ema_decay=0.9", "log_every=50", "checkpoint_every=150") == 0
    return out / "model"


def teacher_misfit(actions: torch.Tensor, teacher: DiffusionPolicy, condition: dict) -> float:
    """The teacher's denoising loss on actions (mean over every timestep of its schedule, fixed noise): low where the
    teacher's density is high; what OneDP-D's KL gradient descends."""
    rng, total = torch.Generator().manual_seed(2), 0.0
    with torch.no_grad():
        for k in range(teacher.num_train_timesteps):
            noise = torch.randn(actions.shape, generator=rng)
            a_bar = teacher.denoiser.alphas(actions)[k]
            noisy = a_bar.sqrt() * actions + (1 - a_bar).sqrt() * noise
            total += float(((teacher.denoiser.model_output(noisy, k, condition) - noise) ** 2).mean())
    return total / teacher.num_train_timesteps


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance between two sample sets per observation ((obs, samples, dim) each), averaged over observations."""
    mean_distance = lambda a, b: torch.cdist(a, b).mean((1, 2))
    return float((2 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y)).mean())


def one_call_actions(model: DiffusionPolicy, condition: dict, samples: int, stochastic: bool) -> torch.Tensor:
    """(observations, samples, chunk) actions of the OneDP sampler (k_init 13 of the tiny schedule's 20)."""
    repeated = {key: value.repeat_interleave(samples, 0) for key, value in condition.items()}
    shape = (len(repeated["global_cond"]), *model.sample_shape)
    states = OneDPSampler(13, stochastic).sample(model.denoiser, repeated, shape, generator=torch.Generator().manual_seed(1)).states
    return states[:, -1].reshape(len(condition["global_cond"]), samples, -1)


@pytest.mark.parametrize("variant", ["deterministic", "stochastic"])
def test_distill_cli_moves_the_student_towards_the_teacher(variant, teacher_dir, umaze_demos, tmp_path):
    out = tmp_path / "run"
    args = [RECIPE_D, f"teacher.path={teacher_dir}", f"data.path={umaze_demos}", f"output_dir={out}",
            f"method.variant={variant}", "method.aux_learning_rate=3e-3", "max_steps=60", "batch_size=32", "warmup_steps=2",
            "optimizer.learning_rate=3e-4", "ema_decay=0.5", "checkpoint_every=30", "log_every=10",
            # the end-of-run evaluation through the student's sampler once (genrl eval below runs both)
            *(["eval.episodes.num_episodes=2", "eval.episodes.num_envs=2", "eval.episodes.num_videos=0"] if variant == "deterministic"
              else ["eval.skip=true"])]
    assert run_cli("distill", *args) == 0
    for path in ["config.yaml", "metrics.jsonl", "checkpoints/checkpoint-60", "model/policy_config.json", "eval.json"]:
        assert (out / path).exists(), path
    teacher = DiffusionPolicy.from_pretrained(teacher_dir).eval()
    student = DiffusionPolicy.from_pretrained(out / "model").eval()
    assert student.distilled == {"method": "onedp", "variant": variant, "k_init": 13}
    assert same_normalizer(student, teacher)
    records = [r for r in read_metrics(out / "metrics.jsonl") if "generator_loss" in r]
    assert len(records) == 6 and (("aux_loss" in records[0]) == (variant == "stochastic"))
    # Against the untrained student (the teacher itself read at k_init), on observations of the demonstrations.
    # Measured: OneDP-D 0.49 -> 0.30 teacher misfit; OneDP-S 0.195 -> 0.150 energy distance to the teacher's
    # DDPM samples (0.148-0.151 over run seeds 0-2; two DDPM sample sets of the teacher are 0.05 apart).
    _, condition = DemonstrationWindows(load_demonstrations(umaze_demos), teacher, 16, "cpu").sample(np.random.default_rng(0), "cpu")
    if variant == "deterministic":
        trained, untrained = (teacher_misfit(one_call_actions(model, condition, 1, False)[:, 0].reshape(16, *teacher.sample_shape),
                                             teacher, condition) for model in (student, teacher))
    else:
        repeated = {key: value.repeat_interleave(128, 0) for key, value in condition.items()}
        reference = DDPMSampler(20, 20).sample(teacher.denoiser, repeated, (16 * 128, *teacher.sample_shape),
                                               generator=torch.Generator().manual_seed(5)).states[:, -1].reshape(16, 128, -1)
        trained, untrained = (energy_distance(one_call_actions(model, condition, 128, True), reference) for model in (student, teacher))
    assert trained < 0.85 * untrained, (trained, untrained)
    # the student samples through `genrl eval`; a teacher cannot be sampled as a OneDP student
    eval_args = ["configs/eval/policy_pointmaze_umaze.yaml", "sampler.kind=onedp", "sampler.num_steps=1", "rollout.eval.num_episodes=2",
                 "rollout.eval.num_envs=2", "rollout.eval.num_videos=0"]
    assert run_cli("eval", *eval_args, f"model.path={out / 'model'}", f"output_dir={tmp_path / 'e'}") == 0
    assert run_cli("eval", *eval_args, f"model.path={teacher_dir}", f"output_dir={tmp_path / 'f'}") == 2


def test_onedp_s_resumes_exactly_from_its_last_checkpoint(tiny_policy_dir, umaze_demos, tmp_path):
    """A crash after checkpoint 3 of 6: `resume=true` redoes steps 4-6 and ends with the same generator, so the
    auxiliary network and its optimizer are in the checkpoint (a fresh copy of the teacher would change the result)."""
    out = tmp_path / "run"
    args = [RECIPE_D, f"teacher.path={tiny_policy_dir}", f"data.path={umaze_demos}", f"output_dir={out}", "method.variant=stochastic",
            "method.aux_learning_rate=1e-2", "optimizer.learning_rate=1e-3", "max_steps=6", "batch_size=8", "warmup_steps=1",
            "checkpoint_every=3", "log_every=1", "ema_decay=0.5", "eval.skip=true"]
    assert_distill_resumes_exactly(args, out)
