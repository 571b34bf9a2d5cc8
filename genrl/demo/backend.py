"""What the demo page does, without gradio: sample image models side by side and score each sample, run
one policy episode (optionally steered by ITPS toward clicked points) and time its chunks.

Everything goes through the toolkit's own code paths, so the page shows what `genrl eval` measures:
`sample_images` and the reward registry for images, `evaluate_policy` / `evaluate_steered_policy` for
episodes. Models are loaded on first use and kept. Bad input raises a GenrlError whose one-line message
the page shows (genrl/demo/app.py).
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydantic
import torch
from PIL import Image, ImageDraw

from genrl.config import DemoConfig, EpisodeEvalConfig, ITPSGuidance, SketchConfig, _first_error
from genrl.errors import CheckpointError, ConfigError
from rewards import compute_reward

DISPLAY_SIZE = 256  # samples are shown at this many pixels a side (the Shapes models make 32 x 32)
MAZE_SIZE = 480  # pixels a side of the maze the user clicks a sketch on
STEERING_METHODS = list(typing.get_args(ITPSGuidance.model_fields["method"].annotation))  # the six ITPS samplers


@dataclass
class Sample:
    model: str
    image: Image.Image  # enlarged for display
    scores: dict[str, float]

    @property
    def caption(self) -> str:
        return f"{self.model}: " + ", ".join(f"{name} {value:.3f}" for name, value in self.scores.items())


@dataclass
class EpisodeResult:
    success: bool
    length: int
    chunk_ms_median: float
    chunk_ms_p95: float
    num_chunks: int
    video: Path | None  # the rollout (unsteered episodes)
    picture: Path | None  # the ball's path over the user's sketch (steered episodes)
    extra: dict  # e.g. PushT coverage, alignment to the sketch

    @property
    def text(self) -> str:
        lines = [f"**{'success' if self.success else 'no success'}** after {self.length} steps",
                 (f"latency per chunk: {self.chunk_ms_median:.1f} ms median, {self.chunk_ms_p95:.1f} ms p95 "
                  f"over {self.num_chunks} calls")]
        lines += [f"{key}: {value:.3f}" for key, value in self.extra.items()]
        return "  \n".join(lines)


class DemoBackend:
    def __init__(self, config: DemoConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self._image_models: dict[str, object] = {}
        self._policies: dict[str, object] = {}
        self._runs = 0

    @staticmethod
    def _entry(entries, name: str, what: str):
        for entry in entries:
            if entry.name == name:
                return entry
        raise ConfigError(f"no {what} named {name!r} in the demo config")

    @staticmethod
    def _loaded(cache: dict, entry, load):
        """The entry's model, loaded on first use: a missing directory is an error of that model only."""
        if entry.name not in cache:
            if not Path(entry.path).is_dir():
                raise CheckpointError(f"model directory {entry.path} ({entry.name}) does not exist: train or distill it "
                                      "first, or fix its path in the demo config")
            cache[entry.name] = load(entry.path).eval()
        return cache[entry.name]

    # ------------------------------------------------------------ images
    def image_model_names(self) -> list[str]:
        return [entry.name for entry in self.config.image_models]

    def _image_entry(self, name: str):
        return self._entry(self.config.image_models, name, "image model")

    def _image_model(self, name: str):
        from genrl.models.loading import load_model

        return self._loaded(self._image_models, self._image_entry(name), load_model)

    def sampler_for(self, name: str, kind: str | None = None, num_steps: int | None = None, guidance_scale: float | None = None):
        """The model's configured sampler with the page's choices applied (None keeps the configured value)."""
        sampler = self._image_entry(name).sampler
        updates = {key: value for key, value in (("kind", kind), ("num_steps", num_steps), ("guidance_scale", guidance_scale))
                   if value is not None}
        if updates.get("num_steps", 1) < 1:
            raise ConfigError(f"steps must be at least 1, got {updates['num_steps']}")
        if "guidance_scale" in updates and not np.isfinite(updates["guidance_scale"]):
            raise ConfigError(f"guidance scale must be a finite number, got {updates['guidance_scale']}")
        return sampler.model_copy(update=updates)

    def sample(self, names: list[str], prompt: str, seed: int, count: int = 4, kind: str | None = None,
               num_steps: int | None = None, guidance_scale: float | None = None) -> list[Sample]:
        """`count` samples of `prompt` from each named model, from the same seed (so the noise matches)."""
        from genrl.evaluation.images import sample_images
        from genrl.samplers import build_sampler

        prompt = prompt.strip()
        if not names:
            raise ConfigError("pick at least one image model")
        if not prompt:
            raise ConfigError("the prompt is empty: describe the shapes, e.g. 'a red circle'")
        if not 1 <= count <= self.config.max_samples:
            raise ConfigError(f"samples per model must be between 1 and {self.config.max_samples}, got {count}")
        samples = []
        for name in names:
            model = self._image_model(name)
            sampler = self.sampler_for(name, kind, num_steps, guidance_scale)
            build_sampler(sampler, model)  # a sampler that does not fit the model: its one-line error
            try:  # the Shapes models and their reader know one caption grammar; their ValueError names the word
                images = sample_images(model, [prompt] * count, sampler, seed=int(seed), batch_size=count)
                scores = {reward: compute_reward(reward, images, [prompt] * count).scores.float().cpu()
                          for reward in self.config.rewards}
            except ValueError as error:
                raise ConfigError(f"prompt {prompt!r}: {error} (e.g. 'a red circle at the top left')") from None
            for i, image in enumerate(images):
                samples.append(Sample(name, to_display(image), {reward: float(values[i]) for reward, values in scores.items()}))
        return samples

    # ------------------------------------------------------------ policies
    def policy_names(self) -> list[str]:
        return [entry.name for entry in self.config.policies]

    def _policy_entry(self, name: str):
        return self._entry(self.config.policies, name, "policy")

    def _policy(self, name: str):
        from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy

        return self._loaded(self._policies, self._policy_entry(name), DiffusionPolicy.from_pretrained)

    def is_maze(self, name: str) -> bool:
        return self._policy_entry(name).env.id.startswith("PointMaze")

    def _env_config(self, name: str):
        env = self._policy_entry(name).env
        limit = min(env.max_episode_steps or self.config.max_episode_steps, self.config.max_episode_steps)
        return env.model_copy(update={"max_episode_steps": limit})

    def maze_picture(self, name: str, seed: int, points: list[tuple[float, float]]) -> Image.Image:
        """The maze of a PointMaze policy with the ball's start and the goal of episode `seed`, and the
        clicked sketch so far: the picture the user clicks on."""
        from genrl.envs import make_env
        from genrl.guidance.maze_picture import MazeFrame, draw_dashed

        if not self.is_maze(name):
            raise ConfigError(f"{name} does not run in a PointMaze env: sketches steer PointMaze policies only")
        env = make_env(self._env_config(name))
        try:
            env.reset(seed=int(seed))
            frame = MazeFrame(env.unwrapped.maze, MAZE_SIZE)
            start, goal = env.unwrapped.point_env.data.qpos[:2].copy(), env.unwrapped.goal.copy()
        finally:
            env.close()
        picture = Image.new("RGB", (MAZE_SIZE, MAZE_SIZE), "white")
        draw = ImageDraw.Draw(picture)
        frame.draw_walls(draw)
        for xy, colour in ((start, (0, 0, 0)), (goal, (44, 160, 44))):
            x, y = frame.pixel(xy)
            draw.ellipse([x - 9, y - 9, x + 9, y + 9], fill=colour)
        sketch = [frame.pixel(p) for p in points]
        draw_dashed(draw, sketch, (214, 39, 40), width=3)
        for x, y in sketch:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(214, 39, 40))
        return picture

    def click_to_point(self, name: str, pixel: tuple[float, float]) -> tuple[float, float]:
        """Maze coordinates of a click at `pixel` on `maze_picture`."""
        from genrl.guidance.maze_picture import MazeFrame, load_maze

        x, y = MazeFrame(load_maze(self._env_config(name)), MAZE_SIZE).maze_xy(pixel)
        return round(float(x), 3), round(float(y), 3)

    def run_episode(self, name: str, seed: int, sketch: list[tuple[float, float]] | None = None,
                    method: str = "guided", scale: float = 1000.0) -> EpisodeResult:
        """One episode reset with `seed`; with a sketch, steered toward it by the ITPS `method`."""
        from genrl.evaluation.episodes import evaluate_policy
        from genrl.evaluation.steering import evaluate_steered_policy
        from genrl.samplers import build_sampler

        entry, policy = self._policy_entry(name), self._policy(name)
        sampler = build_sampler(entry.sampler, policy)
        env = self._env_config(name)
        self._runs += 1
        output_dir = self.output_dir / f"episode-{self._runs:04d}-seed{int(seed)}"
        chunk_seconds: list[float] = []
        if sketch:
            if not self.is_maze(name):
                raise ConfigError(f"{name} does not run in a PointMaze env: sketches steer PointMaze policies only")
            if method not in STEERING_METHODS:
                raise ConfigError(f"unknown steering method {method!r}; choose one of {', '.join(STEERING_METHODS)}")
            try:  # a negative or NaN scale: the config's own one-line message, not a traceback in the page
                guidance = ITPSGuidance(method=method, scale=scale, sketch=SketchConfig(kind="points", points=list(sketch)))
            except pydantic.ValidationError as error:
                raise ConfigError(f"steering: {_first_error(error)}") from None
            episodes = EpisodeEvalConfig(num_episodes=1, num_envs=1, seed=int(seed), num_videos=0)
            summary = evaluate_steered_policy(policy, env, episodes, sampler, guidance, output_dir, progress=False,
                                              chunk_seconds=chunk_seconds)
            record = summary["episodes"][0]
            result = EpisodeResult(record["success"], record["length"], *_milliseconds(chunk_seconds), len(chunk_seconds),
                                   video=None, picture=output_dir / "samples" / "steered_rollouts.png",
                                   extra={"distance to the sketch (cells)": record["alignment_distance"],
                                          "wall contact rate": record["wall_contact_rate"]})
        else:
            episodes = EpisodeEvalConfig(num_episodes=1, num_envs=1, seed=int(seed), num_videos=1, video_format="mp4")
            summary = evaluate_policy(policy, env, episodes, sampler, output_dir, progress=False, chunk_seconds=chunk_seconds)
            extra = {key: value for key, value in summary.items() if env.score_key and key.startswith(env.score_key)}
            result = EpisodeResult(summary["success_rate"] == 1.0, int(summary["episode_length_mean"]), *_milliseconds(chunk_seconds),
                                   len(chunk_seconds), video=output_dir / "samples" / "eval_episode0.mp4", picture=None, extra=extra)
        (output_dir / "episode.json").write_text(json.dumps({"policy": name, "seed": int(seed), "sketch": sketch, "method": method,
                                                             "success": result.success, "length": result.length,
                                                             "chunk_ms_median": result.chunk_ms_median}, indent=1))
        return result


def to_display(image: torch.Tensor) -> Image.Image:
    """A (3, H, W) image in [-1, 1] as a PIL image DISPLAY_SIZE pixels wide, pixels kept sharp."""
    array = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(array)
    return picture.resize((DISPLAY_SIZE, round(DISPLAY_SIZE * picture.height / picture.width)), Image.NEAREST)


def _milliseconds(seconds: list[float]) -> tuple[float, float]:
    if not seconds:
        return float("nan"), float("nan")
    values = np.array(seconds) * 1000
    return float(np.median(values)), float(np.percentile(values, 95))

