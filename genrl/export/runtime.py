"""Run an exported genrl Diffusion Policy (a teacher or a distilled student) with numpy and onnxruntime.

This file imports neither torch nor genrl: `genrl export` copies it into every export directory as
`policy_runtime.py`, so a robot computer needs only that directory, numpy and onnxruntime.

    from policy_runtime import PolicyRuntime
    policy = PolicyRuntime("exports/pusht", seed=0)
    policy.reset()                        # at the start of every episode
    action = policy.act(observation)      # every control tick: one action, shape (action_dim,)

`act` keeps the last n_obs_steps observations (at reset the first one repeated, as in training), and
when its action queue is empty it samples a chunk and queues the n_action_steps executed actions. The
chain it runs is the one the manifest writes out (see `denoise`), with the network in `policy.onnx`.
Loading checks every file's sha256 against the manifest and the manifest's format version.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path

import numpy as np
import onnxruntime

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ExportError(Exception):
    """A broken or incompatible export directory."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(directory) -> dict:
    """The manifest of an export directory, after checking its version and every listed file's hash."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ExportError(f"{directory} has no {MANIFEST}: not a genrl policy export")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ExportError(f"{path} is not valid JSON: {error}") from None
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ExportError(f"{path} has format_version {version!r}; this runtime reads up to {FORMAT_VERSION} "
                          "(export again, or use the runtime copied into that export)")
    for name, expected in manifest["files"].items():
        part = directory / name
        if not part.is_file():
            raise ExportError(f"{directory} is missing {name}, which its manifest lists")
        if file_sha256(part) != expected:
            raise ExportError(f"{part} does not match the manifest's sha256 (modified or corrupt)")
    return manifest


class PolicyRuntime:
    def __init__(self, directory, seed: int | None = None, threads: int | None = None, noise=None):
        """`noise`: a function shape -> standard-normal array for the chain's noise (default: numpy's generator
        seeded with `seed`); the initial state is drawn first, then one array per step with std > 0."""
        self.directory = Path(directory)
        self.manifest = manifest = load_manifest(self.directory)
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(self.directory / manifest["network"]["file"]), options,
                                                    providers=["CPUExecutionProvider"])
        stats = json.loads((self.directory / manifest["normalizer"]).read_text())
        self.obs_offset, self.obs_scale = (np.asarray(stats["obs"][k], dtype=np.float64) for k in ("offset", "scale"))
        self.action_offset, self.action_scale = (np.asarray(stats["action"][k], dtype=np.float64) for k in ("offset", "scale"))
        self.horizon, self.n_obs_steps, self.n_action_steps = manifest["horizon"], manifest["n_obs_steps"], manifest["n_action_steps"]
        self.obs_dim, self.action_dim = manifest["observation"]["dim"], manifest["action"]["dim"]
        self.action_low = np.asarray(manifest["action"]["low"], dtype=np.float32)
        self.action_high = np.asarray(manifest["action"]["high"], dtype=np.float32)
        self.chain = manifest["chain"]
        self.standard_normal = noise or np.random.default_rng(seed).standard_normal
        self.reset()

    def reset(self) -> None:
        """Forget the observation history and the queued actions (call at the start of each episode)."""
        self.history: np.ndarray | None = None
        self.queue: deque = deque()

    def act(self, observation) -> np.ndarray:
        """One action (action_dim,) for the newest observation (obs_dim,), within the action bounds."""
        observation = np.asarray(observation, dtype=np.float32).reshape(-1)
        if observation.shape[0] != self.obs_dim:
            raise ExportError(f"observation has {observation.shape[0]} values, the policy expects {self.obs_dim}")
        if self.history is None:
            self.history = np.repeat(observation[None], self.n_obs_steps, axis=0)
        else:
            self.history = np.concatenate([self.history[1:], observation[None]])
        if not self.queue:
            self.queue.extend(self.predict_chunk(self.history[None])[0])
        return np.clip(self.queue.popleft(), self.action_low, self.action_high).astype(np.float32)

    def predict_chunk(self, obs_history) -> np.ndarray:
        """Executed actions (B, n_action_steps, action_dim), un-normalised, of observation histories
        (B, n_obs_steps, obs_dim)."""
        obs_history = np.asarray(obs_history, dtype=np.float64)
        if obs_history.ndim != 3 or obs_history.shape[1:] != (self.n_obs_steps, self.obs_dim):
            raise ExportError(f"observation history has shape {obs_history.shape}, expected (batch, {self.n_obs_steps}, "
                              f"{self.obs_dim})")
        condition = ((obs_history - self.obs_offset) / self.obs_scale).reshape(len(obs_history), -1).astype(np.float32)
        chunk = self.denoise(condition)
        start = self.n_obs_steps - 1
        executed = chunk[:, start:start + self.n_action_steps].astype(np.float64)
        return (executed * self.action_scale + self.action_offset).astype(np.float32)

    def denoise(self, condition: np.ndarray) -> np.ndarray:
        """The normalised chunk (B, horizon, action_dim) the exported chain samples for FiLM conditions (B, C)."""
        batch, shape = len(condition), (len(condition), self.horizon, self.action_dim)
        if self.chain["initial_state"] == "zeros":  # a deterministic one-call student (OneDP-D) starts from z = 0
            x = np.zeros(shape)
        else:
            x = np.asarray(self.standard_normal(shape), dtype=np.float64)
        noise_clip = self.chain["noise_clip"]
        for step in self.chain["steps"]:
            timestep = np.full((batch,), step["timestep"], dtype=np.int64)
            feeds = {"sample": x.astype(np.float32), "timestep": timestep, "global_cond": condition}
            out = self.session.run(None, feeds)[0].astype(np.float64)
            x0 = step["x0_from_x"] * x + step["x0_from_output"] * out
            x0 = step["skip_from_x"] * x + step["x0_weight"] * x0
            if step["clip"] is not None:
                x0 = np.clip(x0, -step["clip"], step["clip"])
            mean = step["mean_from_x0"] * x0 + step["mean_from_x"] * x + step["mean_from_output"] * out
            if step["std"] > 0:
                z = np.asarray(self.standard_normal(shape), dtype=np.float64)
                if noise_clip is not None:
                    z = np.clip(z, -noise_clip, noise_clip)
                x = mean + step["std"] * z
            else:
                x = mean
        return x.astype(np.float32)
