"""Load a model directory given by `model.path` into the interface trainers use."""

from __future__ import annotations

from pathlib import Path

from genrl.errors import CheckpointError
from genrl.models.prompt_diffusion_model import MODEL_INDEX, PromptDiffusionModel


def load_model(path: str | Path) -> PromptDiffusionModel:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model.path {path} does not exist")
    if not (path / MODEL_INDEX).is_file():
        raise CheckpointError(f"model.path {path} has no {MODEL_INDEX}; expected a directory written by save_pretrained")
    return PromptDiffusionModel.from_pretrained(path)
