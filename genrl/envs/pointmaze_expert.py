"""A scripted expert for gymnasium-robotics' PointMaze: a grid planner plus a PD controller.

The way the D4RL / Minari maze datasets were made: breadth-first search over the maze's free
cells gives the shortest cell path from the ball to the goal; the ball is driven toward the
next cell centre (the goal itself once it is in the goal's cell) by a PD controller on the
force actuators. `noise` adds Gaussian action noise, so demonstrations cover a little more
than the one optimal path (and leave something for RL fine-tuning to improve).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from genrl.errors import ConfigError


def free_cells(maze_map: list[list]) -> set[tuple[int, int]]:
    """Cells the ball can occupy: everything that is not a wall (1); 'G', 'R', 'C' are free."""
    return {(i, j) for i, row in enumerate(maze_map) for j, cell in enumerate(row) if cell != 1}


def shortest_cell_path(free: set[tuple[int, int]], start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Breadth-first search over 4-connected free cells; [start, ..., goal]."""
    parents = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        i, j = cell
        for neighbour in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if neighbour in free and neighbour not in parents:
                parents[neighbour] = cell
                queue.append(neighbour)
    if goal not in parents:
        raise ValueError(f"no path from cell {start} to cell {goal}")
    path = [goal]
    while path[-1] != start:
        path.append(parents[path[-1]])
    return path[::-1]


class PointMazeExpert:
    """Reads the ball's state and the goal from the (unwrapped) env, like any scripted expert."""

    def __init__(self, env, rng: np.random.Generator, noise: float = 0.0, p_gain: float = 10.0, d_gain: float = 1.0):
        if not hasattr(env.unwrapped, "maze") or not hasattr(env.unwrapped, "point_env"):
            raise ConfigError(f"the pointmaze_planner expert needs a gymnasium-robotics PointMaze env, not {env.spec.id!r}")
        self.env = env.unwrapped
        self.maze = self.env.maze
        self.free = free_cells(self.maze.maze_map)
        self.rng, self.noise = rng, noise
        self.p_gain, self.d_gain = p_gain, d_gain

    def reset(self) -> None:
        pass  # the plan is recomputed every step from the ball's current cell

    def _cell(self, xy: np.ndarray) -> tuple[int, int]:
        return tuple(int(v) for v in self.maze.cell_xy_to_rowcol(xy))

    def waypoint(self, position: np.ndarray, goal: np.ndarray) -> np.ndarray:
        path = shortest_cell_path(self.free, self._cell(position), self._cell(goal))
        if len(path) == 1:
            return goal
        return self.maze.cell_rowcol_to_xy(np.array(path[1]))

    def act(self) -> np.ndarray:
        data = self.env.point_env.data
        position, velocity = data.qpos[:2].copy(), data.qvel[:2].copy()
        target = self.waypoint(position, self.env.goal)
        action = self.p_gain * (target - position) - self.d_gain * velocity
        if self.noise > 0:
            action = action + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
