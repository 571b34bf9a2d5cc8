"""How well a maze policy's actions follow the user's input (ITPS): the cost the steering samplers
minimise, and the metrics the benchmark reports.

A PointMaze policy outputs forces, not positions, so the cost first predicts where a chunk of actions
takes the ball with a linear point-mass model, v' = decay * v + gain * a and p' = p + dt * v', fitted by
least squares on the demonstrations (`PointMassDynamics.fit`; on data/pointmaze_medium.zarr it explains
the next velocity to a residual of 0.06 against a spread of 3.0; walls are not modelled).

The cost of predicted positions P_1..P_K is the mean squared distance from each P_k to the nearest point
of the sketch's *window* (the next `lookahead` of path length past the ball's progress along it), plus
the squared distance from P_K to the window's end, the "carrot" that makes the ball move along the
sketch instead of hovering on it. A point input is a one-point sketch: both terms pull to the point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PointMassDynamics:
    # Fitted on data/pointmaze_medium.zarr (PointMassDynamics.fit; both axes pooled); the maze's
    # MuJoCo step is 0.01 s, which the fit recovers exactly.
    decay: float = 0.983
    gain: float = 0.221
    dt: float = 0.01

    @classmethod
    def fit(cls, obs: np.ndarray, action: np.ndarray, episode_ends: np.ndarray) -> PointMassDynamics:
        """Least squares over consecutive steps of the same episode; obs = [x, y, vx, vy, ...]."""
        keep = np.ones(len(obs) - 1, dtype=bool)
        keep[np.asarray(episode_ends)[:-1] - 1] = False  # the step from an episode's end to the next's start
        velocity, position = obs[:, 2:4], obs[:, :2]
        inputs = np.stack([velocity[:-1][keep].ravel(), action[:-1][keep].ravel()], axis=1)
        (decay, gain), *_ = np.linalg.lstsq(inputs, velocity[1:][keep].ravel(), rcond=None)
        moved, next_velocity = (position[1:] - position[:-1])[keep].ravel(), velocity[1:][keep].ravel()
        dt = float(next_velocity @ moved / (next_velocity @ next_velocity))
        return cls(float(decay), float(gain), dt)

    def positions(self, position: torch.Tensor, velocity: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B, K, 2) positions after each of the (B, K, 2) actions, from (B, 2) position and velocity; differentiable."""
        out = []
        for k in range(actions.shape[1]):
            velocity = self.decay * velocity + self.gain * actions[:, k]
            position = position + self.dt * velocity
            out.append(position)
        return torch.stack(out, dim=1)


class SketchFollower:
    """Each env's dense sketch and how far along it the ball has come (progress only moves forward, and
    only to sketch points within `lookahead` of the last progress, so a path that doubles back on itself
    is followed in order)."""

    def __init__(self, sketches: list[np.ndarray], lookahead: float = 0.5, spacing: float = 0.05):
        self.sketches = [np.asarray(s, dtype=np.float32) for s in sketches]
        self.window = max(1, int(round(lookahead / spacing)))
        self.progress = np.zeros(len(sketches), dtype=np.int64)

    def update(self, env_index: np.ndarray, positions: np.ndarray) -> None:
        for i, position in zip(env_index, positions):
            sketch, start = self.sketches[i], self.progress[i]
            ahead = sketch[start : start + self.window + 1]
            self.progress[i] = start + int(np.argmin(np.linalg.norm(ahead - position, axis=1)))

    def targets(self, env_index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The window (B, W, 2) (padded by repeating the sketch's last point) and the carrot (B, 2)."""
        windows = []
        for i in env_index:
            sketch, start = self.sketches[i], self.progress[i]
            window = sketch[start : start + self.window + 1]
            windows.append(np.concatenate([window, np.repeat(window[-1:], self.window + 1 - len(window), axis=0)]))
        windows = torch.from_numpy(np.stack(windows))
        return windows, windows[:, -1]


def sketch_cost(positions: torch.Tensor, window: torch.Tensor, carrot: torch.Tensor) -> torch.Tensor:
    """(B,) cost of predicted positions (B, K, 2) against each env's window (B, W, 2) and carrot (B, 2)."""
    tracking = torch.cdist(positions, window.to(positions)).min(dim=2).values.square().mean(dim=1)
    return tracking + (positions[:, -1] - carrot.to(positions)).square().sum(dim=1)


def path_alignment(path: np.ndarray, sketch: np.ndarray, reach: float = 0.25) -> dict[str, float]:
    """How closely the ball's path (T, 2) followed a dense sketch (M, 2): the symmetric mean nearest
    distance (lower is better; in maze units, a cell is 1) and the share of sketch points the path came
    within `reach` of."""
    distances = np.linalg.norm(path[:, None] - sketch[None], axis=2)
    to_sketch, to_path = distances.min(axis=1), distances.min(axis=0)
    return {"alignment_distance": float((to_sketch.mean() + to_path.mean()) / 2),
            "sketch_covered": float((to_path <= reach).mean())}
