"""A picture of steered PointMaze episodes: the maze's walls, each user sketch (dashed in its colour)
and the path the ball took (solid), one panel per episode. PIL only, so `genrl eval` can draw it
without the plotting extra."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from genrl.envs import make_env

PANEL = 240
COLOURS = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def _maze(env_config):
    env = make_env(env_config)
    try:
        env.reset(seed=0)
        return env.unwrapped.maze
    finally:
        env.close()


def draw_maze_rollouts(env_config, episodes: list[dict], path: Path, title: str = "") -> Path:
    """One panel per episode dict (with "sketch" and "path" point lists and "success"), saved as PNG."""
    maze = _maze(env_config)
    rows, cols = len(maze.maze_map), len(maze.maze_map[0])
    cell = PANEL / max(rows, cols)

    def pixel(xy) -> tuple[float, float]:  # maze coordinates (centred, y up) to panel pixels (y down)
        return ((xy[0] + maze.x_map_center) / maze.maze_size_scaling * cell,
                (maze.y_map_center - xy[1]) / maze.maze_size_scaling * cell)

    picture = Image.new("RGB", (PANEL * len(episodes), PANEL + 18), "white")
    draw = ImageDraw.Draw(picture)
    for k, episode in enumerate(episodes):
        left = k * PANEL
        for i in range(rows):
            for j in range(cols):
                if maze.maze_map[i][j] == 1:
                    draw.rectangle([left + j * cell, i * cell, left + (j + 1) * cell, (i + 1) * cell], fill=(90, 90, 90))
        colour = COLOURS[k % len(COLOURS)]
        sketch = [(left + x, y) for x, y in map(pixel, episode["sketch"])]
        for a, b in zip(sketch[:-1], sketch[1:]):  # dashed: the user's input
            for f in np.arange(0, 1, 0.1)[::2]:
                draw.line([(a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1])),
                           (a[0] + (f + 0.1) * (b[0] - a[0]), a[1] + (f + 0.1) * (b[1] - a[1]))], fill=colour, width=2)
        trace = [(left + x, y) for x, y in map(pixel, episode["path"])]
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
