"""Demonstration datasets on disk, in Diffusion Policy's zarr layout, and BC training windows.

The layout is the one Diffusion Policy's `ReplayBuffer` reads (zarr format 2), so its loaders
and ours read each other's files:

    <name>.zarr/
      data/obs              (N, obs_dim) float32   the env's flat observation before each action
      data/action           (N, action_dim) float32
      data/reward           (N,) float32
      meta/episode_ends     (E,) int64   exclusive end index of each episode in data/*
      meta/episode_success  (E,) bool
      meta/episode_seed     (E,) int64   the env reset seed of each episode
      meta/episode_score    (E,) float32 the env's score at the episode's end (PushT: coverage), if any
      .zattrs               env (id, kwargs, obs_keys), expert, the resolved config, obs/action sizes

Episode e spans data[episode_ends[e-1] : episode_ends[e]] (episode_ends[-1] == N).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genrl.errors import CheckpointError, ConfigError

FORMAT = "genrl-demonstrations/1 (Diffusion Policy ReplayBuffer layout, zarr format 2)"


@dataclass
class Demonstrations:
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    episode_ends: np.ndarray
    episode_success: np.ndarray
    episode_seed: np.ndarray
    episode_score: np.ndarray | None
    attrs: dict

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ends)

    def first_episodes(self, count: int) -> Demonstrations:
        """The dataset cut to its first `count` episodes (a weaker behaviour-cloning start for RL)."""
        if not 1 <= count <= self.num_episodes:
            raise ConfigError(f"data.max_episodes {count} is outside [1, {self.num_episodes}] (the dataset's episodes)")
        end = int(self.episode_ends[count - 1])
        return Demonstrations(
            obs=self.obs[:end], action=self.action[:end], reward=self.reward[:end], episode_ends=self.episode_ends[:count],
            episode_success=self.episode_success[:count], episode_seed=self.episode_seed[:count],
            episode_score=None if self.episode_score is None else self.episode_score[:count], attrs=dict(self.attrs),
        )

    def episode_bounds(self) -> list[tuple[int, int]]:
        starts = np.concatenate([[0], self.episode_ends[:-1]])
        return list(zip(starts.tolist(), self.episode_ends.tolist()))


class DemonstrationWriter:
    """Collects episodes in memory and writes the dataset once, at `close` (a crash leaves no half file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists():
            raise ConfigError(f"dataset.path {self.path} already exists; choose another path or delete it")
        self.episodes: list[dict] = []

    def add_episode(self, obs, action, reward, success: bool, seed: int, score: float | None = None) -> None:
        self.episodes.append({"obs": np.asarray(obs, np.float32), "action": np.asarray(action, np.float32),
                              "reward": np.asarray(reward, np.float32), "success": success, "seed": seed, "score": score})

    def close(self, attrs: dict) -> Path:
        import zarr

        if not self.episodes:
            raise ConfigError(f"no episode to write to {self.path} (with collect.only_successful, the expert solved none)")
        staging = self.path.with_name(self.path.name + ".tmp")
        root = zarr.open_group(str(staging), mode="w", zarr_format=2)
        data, meta = root.create_group("data"), root.create_group("meta")
        for key in ("obs", "action", "reward"):
            values = np.concatenate([e[key] for e in self.episodes])
            data.create_array(key, shape=values.shape, dtype=values.dtype, chunks=(min(len(values), 10_000), *values.shape[1:]))[:] = values
        meta_values = {
            "episode_ends": np.cumsum([len(e["action"]) for e in self.episodes]).astype(np.int64),
            "episode_success": np.array([e["success"] for e in self.episodes], dtype=bool),
            "episode_seed": np.array([e["seed"] for e in self.episodes], dtype=np.int64),
        }
        if self.episodes[0]["score"] is not None:
            meta_values["episode_score"] = np.array([e["score"] for e in self.episodes], dtype=np.float32)
        for key, values in meta_values.items():
            meta.create_array(key, shape=values.shape, dtype=values.dtype)[:] = values
        root.attrs.update({"format": FORMAT, **attrs})
        staging.rename(self.path)
        return self.path


def load_demonstrations(path: str | Path) -> Demonstrations:
    """Read a dataset written by `genrl collect` (or any zarr in the same layout)."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"dataset.path {path} does not exist; make it with `genrl collect CONFIG`")
    try:
        root = zarr.open_group(str(path), mode="r")
        data, meta = root["data"], root["meta"]
        action = np.asarray(data["action"][:], np.float32)
        demos = Demonstrations(
            obs=np.asarray(data["obs"][:], np.float32),
            action=action,
            reward=np.asarray(data["reward"][:], np.float32) if "reward" in data else np.zeros(len(action), np.float32),
            episode_ends=np.asarray(meta["episode_ends"][:], np.int64),
            episode_success=np.asarray(meta["episode_success"][:], bool) if "episode_success" in meta else None,
            episode_seed=np.asarray(meta["episode_seed"][:], np.int64) if "episode_seed" in meta else None,
            episode_score=np.asarray(meta["episode_score"][:], np.float32) if "episode_score" in meta else None,
            attrs=dict(root.attrs),
        )
    except (KeyError, ValueError, TypeError, OSError, zarr.errors.BaseZarrError) as error:
        raise CheckpointError(f"dataset {path} is not a demonstration dataset (need data/obs, data/action, "
                              f"meta/episode_ends): {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if demos.num_episodes == 0 or len(demos.action) == 0:
        raise CheckpointError(f"dataset {path} has no episodes")
    if demos.episode_ends[-1] != len(demos.action) or len(demos.obs) != len(demos.action) or np.any(np.diff(demos.episode_ends) <= 0):
        raise CheckpointError(f"dataset {path} is inconsistent: episode_ends must rise to the number of steps ({len(demos.action)})")
    return demos


def window_indices(episode_bounds: list[tuple[int, int]], horizon: int, n_obs_steps: int, n_action_steps: int) -> np.ndarray:
    """(W, horizon) step indices of every training window, as Diffusion Policy samples them.

    A window starts up to n_obs_steps - 1 steps before its episode and may run up to
    n_action_steps - 1 steps past its end; those positions repeat the episode's first or last
    step (padding), so early observations and final actions are trained too.
    """
    windows = []
    for start, end in episode_bounds:
        first, last = start - (n_obs_steps - 1), max(start - (n_obs_steps - 1), end - horizon + (n_action_steps - 1))
        for window_start in range(first, last + 1):
            windows.append(np.clip(np.arange(window_start, window_start + horizon), start, end - 1))
    return np.stack(windows)
