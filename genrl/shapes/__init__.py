"""The Shapes world: seeded coloured-shape images with exact captions, and a reader that scores them."""

from genrl.shapes.reader import DetectedObject, object_recall, prompt_match, read_objects
from genrl.shapes.world import (
    COLORS,
    POSITIONS,
    SHAPES,
    VOCABULARY,
    Background,
    Scene,
    ShapeObject,
    generate_batch,
    parse_caption,
    random_prompts,
    random_scene,
    render,
)

__all__ = [
    "COLORS",
    "POSITIONS",
    "SHAPES",
    "VOCABULARY",
    "Background",
    "DetectedObject",
    "Scene",
    "ShapeObject",
    "generate_batch",
    "object_recall",
    "parse_caption",
    "prompt_match",
    "random_prompts",
    "random_scene",
    "read_objects",
    "render",
]
