"""`genrl export`: the ONNX network and the numpy runtime reproduce the PyTorch policy, the runtime needs
neither torch nor genrl, and a broken export directory is a one-line error."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from genrl.config import EnvConfig, EpisodeEvalConfig, SamplerConfig
from genrl.envs.make import make_vector_env
from genrl.envs.rollout import run_episodes
from genrl.evaluation.episodes import policy_actor
from genrl.models.consistency_head import ConsistencyHead, HeadedNetwork
from genrl.models.step_routed_network import StepRoutedNetwork
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.samplers import build_sampler

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "models" / "policy-pointmaze-medium"


def _student(tmp_path: Path, kind: str) -> Path:
    """A student directory as `genrl distill` saves one (untrained weights: export must reproduce any weights)."""
    policy = DiffusionPolicy.from_pretrained(TEACHER)
    torch.manual_seed(1)
    if kind == "consistency_head":
        policy = DiffusionPolicy(HeadedNetwork(policy.network, ConsistencyHead.for_trunk(policy.network)), policy.scheduler,
                                 policy.normalizer, policy.policy_config)
    if kind == "dppo_partial":  # DPPO fine-tuned below timestep 40: two networks in one chain
        tuned = copy.deepcopy(policy.network)
        with torch.no_grad():
            for parameter in tuned.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        policy = DiffusionPolicy(StepRoutedNetwork(policy.network, tuned, 40), policy.scheduler, policy.normalizer,
                                 policy.policy_config)
    if kind.startswith("consistency"):
        policy.policy_config["distilled"] = {"method": "consistency", "t_min": 1, "sigma_data": 0.5}
    if kind.startswith("onedp"):
        policy.policy_config["distilled"] = {"method": "onedp", "variant": "stochastic" if kind == "onedp_s" else "deterministic",
                                             "k_init": 65}
    directory = tmp_path / kind
    policy.save_pretrained(directory)
    return directory


def _export(model: Path, out: Path, sampler: str) -> Path:
    assert run_cli("export", "configs/export/policy_pusht.yaml", f"model.path={model}", f"output_dir={out}", f"sampler={sampler}") == 0
    return out


def _torch_noise(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=generator).numpy()


CASES = [  # (policy, sampler): the teacher's chains and every student kind
    ("teacher", "{kind: ddpm, num_steps: 100}"),
    ("teacher", "{kind: ddim, num_steps: 10, eta: 0.0}"),
    ("teacher", "{kind: ddim, num_steps: 10, eta: 1.0, min_std: 0.1, noise_clip: 3.0}"),
    ("dppo_partial", "{kind: ddim, num_steps: 10, eta: 1.0}"),
    ("consistency", "{kind: consistency, num_steps: 1}"),
    ("consistency", "{kind: consistency, num_steps: 3}"),
    ("consistency_head", "{kind: consistency, num_steps: 2}"),
    ("onedp_s", "{kind: onedp, num_steps: 1}"),
    ("onedp_d", "{kind: onedp, num_steps: 1}"),
]


@pytest.mark.parametrize("kind,sampler", CASES)
def test_exported_runtime_gives_the_pytorch_policys_actions(tmp_path, kind, sampler):
    from genrl.export.runtime import PolicyRuntime

    model = TEACHER if kind == "teacher" else _student(tmp_path, kind)
    out = _export(model, tmp_path / "export", sampler)
    policy = DiffusionPolicy.from_pretrained(model).eval()
    config = json.loads((out / "manifest.json").read_text())["sampler"]
    chain = build_sampler(SamplerConfig(**config), policy)
    observations = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (4, policy.n_obs_steps, policy.obs_dim))).float()
    expected = policy_actor(policy, chain, torch.Generator().manual_seed(7))(observations.numpy(), np.arange(4))
    runtime = PolicyRuntime(out, noise=_torch_noise(7))
    got = runtime.predict_chunk(observations.numpy())
    assert got.shape == expected.shape == (4, policy.n_action_steps, policy.action_dim)
    scale = np.abs(policy.normalizer.action.scale).max()  # actions are in env units; compare at the normalised scale
    assert np.abs(got - expected).max() / scale <= 1e-4, np.abs(got - expected).max()


def test_runtime_driving_the_real_env_matches_the_pytorch_policy_on_the_same_seeds(tmp_path):
    """Episodes of PointMaze-Medium with the same seeds and the same noise: the exported runtime and the
    PyTorch policy reach the same success, with episode lengths within 5% (float32 differences of 1e-6 grow
    over hundreds of contact-rich steps); `act` (history + queue) drives a plain gymnasium loop to the same
    actions as `run_episodes`."""
    from genrl.export.runtime import PolicyRuntime

    out = _export(TEACHER, tmp_path / "export", "{kind: ddim, num_steps: 10, eta: 1.0}")
    policy = DiffusionPolicy.from_pretrained(TEACHER).eval()
    env_config = EnvConfig(**policy.env_config)
    chain = build_sampler(SamplerConfig(kind="ddim", num_steps=10, eta=1.0), policy)
    seeds = [0, 1, 2]
    vector_env = make_vector_env(env_config, len(seeds))
    reference = run_episodes(vector_env, policy_actor(policy, chain, torch.Generator().manual_seed(3)), seeds,
                             policy.n_obs_steps, policy.n_action_steps, env_config.success_key)
    runtime = PolicyRuntime(out, noise=_torch_noise(3))
    exported = run_episodes(vector_env, lambda history, index: runtime.predict_chunk(history), seeds, policy.n_obs_steps,
                            policy.n_action_steps, env_config.success_key)
    vector_env.close()
    assert reference.successes.tolist() == exported.successes.tolist() and reference.successes.any()
    assert np.allclose(reference.lengths, exported.lengths, rtol=0.05), (reference.lengths, exported.lengths)

    # act(): one env, step by step, against run_episodes with the runtime's chunks and the same noise
    single = make_vector_env(env_config, 1)
    recorded = []
    chunked = PolicyRuntime(out, noise=_torch_noise(5))

    def act(history, index):
        chunk = chunked.predict_chunk(history)
        recorded.extend(chunk[0])
        return chunk

    run_episodes(single, act, [4], policy.n_obs_steps, policy.n_action_steps, env_config.success_key)
    env = single.envs[0]
    stepping = PolicyRuntime(out, noise=_torch_noise(5))
    observation, _ = env.reset(seed=4)
    for expected_action in recorded[:40]:
        action = stepping.act(observation)
        assert np.allclose(action, np.clip(expected_action, env.action_space.low, env.action_space.high), atol=1e-5)
        observation, *_ = env.step(action)
    single.close()


def test_the_runtime_and_the_documented_control_loop_run_without_torch_or_genrl(tmp_path):
    out = _export(TEACHER, tmp_path / "export", "{kind: ddim, num_steps: 10, eta: 0.0}")
    loop = ROOT / "docs" / "examples" / "control_loop.py"
    blocker = "import sys; sys.modules['torch'] = None; sys.modules['genrl'] = None; import runpy; "
    command = [sys.executable, "-c", blocker + f"sys.argv = ['control_loop.py', {str(out)!r}]; runpy.run_path({str(loop)!r}, "
               "run_name='__main__')"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch" not in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] > 0 and summary["success"] in (True, False)


def test_a_broken_export_directory_is_a_one_line_error(tmp_path, capsys):
    from genrl.export.runtime import ExportError, PolicyRuntime

    out = _export(TEACHER, tmp_path / "export", "{kind: ddim, num_steps: 2, eta: 0.0}")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["horizon"] == 16 and manifest["control_rate_hz"] > 0 and manifest["versions"]["onnx_opset"] == 17
    assert set(manifest["files"]) >= {"policy.onnx", "normalizer.json", "policy_runtime.py",
                                      "weights/unet/diffusion_pytorch_model.safetensors"}

    tampered = tmp_path / "tampered"
    __import__("shutil").copytree(out, tampered)
    data = bytearray((tampered / "normalizer.json").read_bytes())
    data[-3] = ord("7") if data[-3] != ord("7") else ord("8")
    (tampered / "normalizer.json").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="normalizer.json does not match the manifest's sha256"):
        PolicyRuntime(tampered)

    missing = tmp_path / "missing"
    __import__("shutil").copytree(out, missing)
    (missing / "policy.onnx").unlink()
    with pytest.raises(ExportError, match="missing policy.onnx"):
        PolicyRuntime(missing)

    newer = tmp_path / "newer"
    __import__("shutil").copytree(out, newer)
    (newer / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ExportError, match="format_version 99"):
        PolicyRuntime(newer)

    runtime = PolicyRuntime(out)
    with pytest.raises(ExportError, match="expects 6"):
        runtime.act(np.zeros(5))

    capsys.readouterr()
    for args, message in [
        ([f"model.path={ROOT / 'models' / 'shapes-diffusion'}", f"output_dir={tmp_path / 'a'}"], "not a saved Diffusion Policy"),
        ([f"model.path={TEACHER}", f"output_dir={out}"], "is not empty"),
        ([f"model.path={TEACHER}", f"output_dir={tmp_path / 'b'}", "sampler={kind: consistency, num_steps: 1}"], "consistency student"),
        ([f"model.path={TEACHER}", f"output_dir={tmp_path / 'c'}", "sampler={kind: flow_sde, num_steps: 4}"], "flow"),
    ]:
        code = run_cli("export", "configs/export/policy_pusht.yaml", *args)
        error = capsys.readouterr().err.strip()
        assert code != 0 and message in error and len(error.splitlines()) == 1, error
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
