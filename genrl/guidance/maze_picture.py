"""Pictures of PointMaze for steering: the maze's walls, each user sketch (dashed in its colour) and the
path the ball took (solid), one panel per episode; and the panel<->maze coordinate map the demo uses to
turn clicks into sketch points. PIL only, so `genrl eval` can draw it without the plotting extra."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from genrl.envs import make_env

PANEL = 240
COLOURS = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
WALL = (90, 90, 90)


def load_maze(env_config):
    """The gymnasium-robotics Maze object of a PointMaze env config (its map, scaling and centre)."""
    env = make_env(env_config)
    try:
        env.reset(seed=0)
        return env.unwrapped.maze
    finally:
        env.close()


class MazeFrame:
    """Maze coordinates (centred, y up) <-> pixels (y down) of a square panel `size` pixels wide."""

    def __init__(self, maze, size: int = PANEL):
        self.maze, self.size = maze, size
        self.rows, self.cols = len(maze.maze_map), len(maze.maze_map[0])
        self.cell = size / max(self.rows, self.cols)

    def pixel(self, xy) -> tuple[float, float]:
        maze = self.maze
        return ((xy[0] + maze.x_map_center) / maze.maze_size_scaling * self.cell,
                (maze.y_map_center - xy[1]) / maze.maze_size_scaling * self.cell)

    def maze_xy(self, pixel) -> tuple[float, float]:
        """The inverse of `pixel`."""
        maze = self.maze
        return (pixel[0] / self.cell * maze.maze_size_scaling - maze.x_map_center,
                maze.y_map_center - pixel[1] / self.cell * maze.maze_size_scaling)

    def draw_walls(self, draw: ImageDraw.ImageDraw, left: float = 0) -> None:
        for i in range(self.rows):
            for j in range(self.cols):
                if self.maze.maze_map[i][j] == 1:
                    draw.rectangle([left + j * self.cell, i * self.cell, left + (j + 1) * self.cell, (i + 1) * self.cell], fill=WALL)


def draw_dashed(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour, width: int = 2) -> None:
    """A dashed polyline: how the pictures show a user's input."""
    for a, b in zip(points[:-1], points[1:]):
        for f in np.arange(0, 1, 0.1)[::2]:
            draw.line([(a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1])),
                       (a[0] + (f + 0.1) * (b[0] - a[0]), a[1] + (f + 0.1) * (b[1] - a[1]))], fill=colour, width=width)


def draw_maze_rollouts(env_config, episodes: list[dict], path: Path, title: str = "") -> Path:
    """One panel per episode dict (with "sketch" and "path" point lists and "success"), saved as PNG."""
    frame = MazeFrame(load_maze(env_config))
    picture = Image.new("RGB", (PANEL * len(episodes), PANEL + 18), "white")
    draw = ImageDraw.Draw(picture)
    for k, episode in enumerate(episodes):
        left = k * PANEL
        frame.draw_walls(draw, left)
        colour = COLOURS[k % len(COLOURS)]
        sketch = [(left + x, y) for x, y in map(frame.pixel, episode["sketch"])]
        draw_dashed(draw, sketch, colour)
        trace = [(left + x, y) for x, y in map(frame.pixel, episode["path"])]
        if len(trace) > 1:
            draw.line(trace, fill=(0, 0, 0), width=2)
        goal = sketch[-1]
        draw.ellipse([goal[0] - 5, goal[1] - 5, goal[0] + 5, goal[1] + 5], outline=colour, width=2)
        draw.text((left + 4, PANEL + 2), f"seed {episode['seed']}: {'success' if episode['success'] else 'fail'},"
                  f" d={episode['alignment_distance']:.2f}", fill=(0, 0, 0))
    if title:
        draw.text((4, 2), title, fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
