"""`genrl export`: a self-contained directory a robot stack can run without torch or genrl.

    <output_dir>/
      manifest.json        spaces, horizon / n_obs_steps / n_action_steps, control rate, the sampler and its
                           per-step constants (chain_constants.py), versions, and the sha256 of every file below
      policy.onnx          the denoising network: (sample (B, horizon, action_dim) float32, timestep (B,) int64,
                           global_cond (B, n_obs_steps * obs_dim) float32) -> model_output (B, horizon, action_dim)
      normalizer.json      the observation / action statistics the policy was trained with
      weights/             the policy's safetensors and configs, as saved (for PyTorch users and audits)
      policy_runtime.py    the numpy + onnxruntime runtime (genrl/export/runtime.py)
      export_config.yaml   the resolved `genrl export` config

The network is exported with torch.onnx's TorchScript exporter at `opset` (17 by default): the newer
torch.export-based exporter fixes the timestep input's batch size to the example's. After writing, the
ONNX network is checked against the PyTorch one on random inputs (batch 3); a difference above 1e-4
stops the export.
"""

from __future__ import annotations

import datetime
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

import genrl
from genrl.errors import CheckpointError, ConfigError
from genrl.export import runtime
from genrl.export.chain_constants import chain_constants
from genrl.models.step_routed_network import StepRoutedNetwork
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.policies.diffusion.normalizer import NORMALIZER_FILE
from genrl.config import save_config
from genrl.samplers import build_sampler

ONNX_FILE = "policy.onnx"
RUNTIME_FILE = "policy_runtime.py"
MAX_ONNX_ERROR = 1e-4


class _ExportedNetwork(torch.nn.Module):
    """The policy network with plain tensor inputs and output. A DPPO policy fine-tuned on its late steps
    computes both halves and picks per sample (a traced graph cannot branch on the timestep's value)."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, sample, timestep, global_cond):
        if isinstance(self.network, StepRoutedNetwork):
            late = (timestep <= self.network.switch_timestep).view(-1, 1, 1)
            fine = self.network.finetuned(sample, timestep, global_cond, return_dict=False)[0]
            frozen = self.network.base(sample, timestep, global_cond, return_dict=False)[0]
            return torch.where(late, fine, frozen)
        return self.network(sample, timestep, global_cond, return_dict=False)[0]


def _env_facts(env_config: dict, action_dim: int) -> tuple[list[float], list[float], float | None]:
    """(action low, action high, actions per second) of the policy's env. The rate is the env's own
    `control_hz` (PushT: 10, while its physics dt is 0.01), else its render_fps (MuJoCo sets it to 1 / dt).
    An env that cannot be made here gives unbounded actions and an unknown (None) rate."""
    try:
        from genrl.config import EnvConfig
        from genrl.envs.make import make_env

        env = make_env(EnvConfig(**env_config))
    except Exception:  # noqa: BLE001  (not installed on the exporting machine)
        bound = float(np.finfo(np.float32).max)
        return [-bound] * action_dim, [bound] * action_dim, None
    rate = getattr(env.unwrapped, "control_hz", None) or env.metadata.get("render_fps")
    low, high = env.action_space.low.tolist(), env.action_space.high.tolist()
    env.close()
    return low, high, float(rate) if rate else None


def export_policy(config) -> dict:
    """Write the export directory for `config.model.path` sampled with `config.sampler`; returns a summary."""
    source = Path(config.model.path)
    if not (source / "model_index.json").is_file() or "DiffusionPolicy" not in (source / "model_index.json").read_text():
        raise CheckpointError(f"model.path {source} is not a saved Diffusion Policy (genrl export handles policies)")
    output_dir = Path(config.output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConfigError(f"output_dir {output_dir} is not empty; choose a new directory for the export")
    if config.sampler.guidance_scale != 1.0:
        raise ConfigError("sampler.guidance_scale must be 1 for an exported policy (policies are not trained for guidance)")
    policy = DiffusionPolicy.from_pretrained(source).eval()
    sampler = build_sampler(config.sampler, policy)  # a sampler that does not fit the policy fails here
    chain = chain_constants(policy, sampler)

    output_dir.mkdir(parents=True, exist_ok=True)
    network = _ExportedNetwork(policy.network).eval()
    example = (torch.zeros(1, policy.horizon, policy.action_dim), torch.zeros(1, dtype=torch.long),
               torch.zeros(1, policy.n_obs_steps * policy.obs_dim))
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(network, example, output_dir / ONNX_FILE, input_names=["sample", "timestep", "global_cond"],
                          output_names=["model_output"], opset_version=config.opset, dynamo=False,
                          dynamic_axes={"sample": batch, "timestep": batch, "global_cond": batch, "model_output": batch})
    error = _onnx_error(network, output_dir / ONNX_FILE, policy)
    if error > MAX_ONNX_ERROR:
        shutil.rmtree(output_dir)
        raise CheckpointError(f"the ONNX network differs from PyTorch by {error:.2e} (> {MAX_ONNX_ERROR}); nothing exported")

    shutil.copy(source / NORMALIZER_FILE, output_dir / NORMALIZER_FILE)
    for part in ("unet", "base_unet", "consistency_head"):
        if (source / part).is_dir():
            shutil.copytree(source / part, output_dir / "weights" / part)
    for name in ("policy_config.json", "model_index.json"):
        shutil.copy(source / name, output_dir / "weights" / name)
    shutil.copytree(source / "scheduler", output_dir / "weights" / "scheduler")
    shutil.copy(Path(runtime.__file__), output_dir / RUNTIME_FILE)
    save_config(config, output_dir / "export_config.yaml")

    low, high, rate = _env_facts(policy.env_config, policy.action_dim)
    files = sorted(p for p in output_dir.rglob("*") if p.is_file())
    manifest = {
        "format_version": runtime.FORMAT_VERSION,
        "kind": "genrl.diffusion_policy",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"genrl": genrl.__version__, "torch": torch.__version__, "onnx_opset": config.opset,
                     "exporter": "torch.onnx TorchScript"},
        "source_model": str(source),
        "distilled": policy.distilled,
        "observation": {"dim": policy.obs_dim, "keys": policy.env_config.get("obs_keys", [])},
        "action": {"dim": policy.action_dim, "low": low, "high": high},
        "horizon": policy.horizon, "n_obs_steps": policy.n_obs_steps, "n_action_steps": policy.n_action_steps,
        "control_rate_hz": rate,
        "env": policy.env_config,
        "network": {"file": ONNX_FILE, "inputs": {"sample": ["batch", policy.horizon, policy.action_dim], "timestep": ["batch"],
                                                   "global_cond": ["batch", policy.n_obs_steps * policy.obs_dim]},
                    "output": ["batch", policy.horizon, policy.action_dim], "max_abs_error_vs_pytorch": error,
                    "network_calls_per_chunk": len(chain["steps"])},
        "normalizer": NORMALIZER_FILE,
        "sampler": config.sampler.model_dump(),
        "chain": chain,
        "files": {str(p.relative_to(output_dir)): runtime.file_sha256(p) for p in files},
    }
    (output_dir / runtime.MANIFEST).write_text(json.dumps(manifest, indent=1))
    return {"output_dir": str(output_dir), "network_calls_per_chunk": len(chain["steps"]), "onnx_max_abs_error": error}


def _onnx_error(network, path: Path, policy) -> float:
    """Largest |ONNX - PyTorch| over random inputs of batch 3 at spread-out timesteps."""
    import onnxruntime

    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(3, policy.horizon, policy.action_dim, generator=generator)
    condition = torch.randn(3, policy.n_obs_steps * policy.obs_dim, generator=generator)
    timestep = torch.tensor([0, policy.num_train_timesteps // 2, policy.num_train_timesteps - 1])
    with torch.no_grad():
        expected = network(sample, timestep, condition).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"sample": sample.numpy(), "timestep": timestep.numpy(), "global_cond": condition.numpy()})[0]
    return float(np.abs(got - expected).max())
