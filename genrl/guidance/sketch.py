"""What a user steers a maze policy with (ITPS): a point or a sketch, a sequence of 2-D points in the
maze's coordinates.

Both are turned into one dense path (points `spacing` apart along the drawn polyline; a point stays one
point), so the alignment cost and the metrics treat a click and a drawing alike. `check_in_free_space`
refuses an input that runs through a wall or off the maze, and `detour_sketch` draws reproducible
benchmark sketches: the path a user would draw from the ball through a chosen free cell to the goal.
"""

from __future__ import annotations

import numpy as np

from genrl.envs.pointmaze_expert import free_cells, shortest_cell_path
from genrl.errors import ConfigError


def densify(points, spacing: float = 0.05) -> np.ndarray:
    """(M, 2) points along the polyline through `points` (N, 2), at most `spacing` apart, ends included."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0 or not np.isfinite(points).all():
        raise ConfigError(f"a sketch is a list of finite [x, y] points, got an array of shape {points.shape}")
    dense = [points[:1]]
    for start, end in zip(points[:-1], points[1:]):
        pieces = max(1, int(np.ceil(np.linalg.norm(end - start) / spacing)))
        fractions = np.arange(1, pieces + 1)[:, None] / pieces
        dense.append(start + fractions * (end - start))
    return np.concatenate(dense)


def check_in_free_space(points: np.ndarray, maze) -> None:
    """One-line error naming the first point of a (dense) sketch that lies in a wall or off the maze."""
    free = free_cells(maze.maze_map)
    half_width, half_height = maze.x_map_center, maze.y_map_center  # the maze is centred on (0, 0)
    for index, point in enumerate(points):
        if abs(point[0]) >= half_width or abs(point[1]) >= half_height:
            raise ConfigError(f"sketch point {index} ({point[0]:.2f}, {point[1]:.2f}) is outside the maze "
                              f"(x and y within +-{half_width:g}, +-{half_height:g})")
        cell = tuple(int(v) for v in maze.cell_xy_to_rowcol(point))
        if cell not in free:
            raise ConfigError(f"sketch point {index} ({point[0]:.2f}, {point[1]:.2f}) is inside a wall of the maze (cell {cell})")


def detour_sketch(maze, start_xy: np.ndarray, goal_xy: np.ndarray, rng: np.random.Generator,
                  min_extra_cells: int = 2, max_extra_cells: int = 6) -> np.ndarray:
    """The sketch of a user who wants the ball to pass through another corridor on its way: from the ball
    through the centres of the cells of the shortest path to a waypoint cell, then on to the goal. The
    waypoint is drawn by `rng` among the free cells whose detour adds `min_extra_cells`..`max_extra_cells`
    cells to the shortest route (so the sketch differs from what the policy would do unsteered, yet fits
    in an episode). (N, 2) points, the ball's position first, the goal last."""
    free = free_cells(maze.maze_map)
    cell = lambda xy: tuple(int(v) for v in maze.cell_xy_to_rowcol(np.asarray(xy)))
    start, goal = cell(start_xy), cell(goal_xy)
    direct = len(shortest_cell_path(free, start, goal))
    candidates = []
    for waypoint in sorted(free):
        if waypoint in (start, goal):
            continue
        route = shortest_cell_path(free, start, waypoint) + shortest_cell_path(free, waypoint, goal)[1:]
        if min_extra_cells <= len(route) - direct <= max_extra_cells:
            candidates.append(route)
    if not candidates:  # a maze too small for a detour of that length: follow the shortest route
        candidates = [shortest_cell_path(free, start, goal)]
    route = candidates[int(rng.integers(len(candidates)))]
    centres = [maze.cell_rowcol_to_xy(np.array(c)) for c in route[1:-1]]
    return np.array([np.asarray(start_xy, dtype=np.float64), *centres, np.asarray(goal_xy, dtype=np.float64)])
