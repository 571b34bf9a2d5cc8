"""Load `model.path` into the interface trainers use.

A directory written by genrl's own `save_pretrained` (the Shapes models: `_class_name`
ShapesPipeline, or PromptDiffusionModel in older ones) becomes a `PromptDiffusionModel`; a
diffusers text-to-image pipeline directory (SD 1.x/2.x, SDXL, SD3) becomes a `LatentPipelineModel`.
Both are told apart by model_index.json's `_class_name`.
"""

from __future__ import annotations

import json
from pathlib import Path

from genrl.errors import CheckpointError
from genrl.models.latent_pipeline import LatentPipelineModel
from genrl.models.prompt_diffusion_model import CLASS_NAMES, MODEL_INDEX, PromptDiffusionModel


def load_model(path: str | Path, resolution: int | None = None, decode_chunk_size: int = 8):
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model.path {path} does not exist")
    index_path = path / MODEL_INDEX
    if not index_path.is_file():
        raise CheckpointError(f"model.path {path} has no {MODEL_INDEX}; expected a directory written by save_pretrained")
    try:
        class_name = json.loads(index_path.read_text()).get("_class_name")
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{index_path} is not valid JSON: {error}") from None
    if class_name in CLASS_NAMES:
        return PromptDiffusionModel.from_pretrained(path)
    return LatentPipelineModel.from_pretrained(path, resolution=resolution, decode_chunk_size=decode_chunk_size)
