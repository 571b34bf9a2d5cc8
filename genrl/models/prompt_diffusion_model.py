"""A prompt-conditioned pixel-space diffusion model saved in a diffusers-style directory.

Layout (each component is diffusers' own format: safetensors + config.json), which diffusers
also loads as a `ShapesPipeline` (genrl/models/shapes_pipeline.py):
    model_index.json        which classes make up the model (`_class_name` ShapesPipeline;
                            directories written before it say PromptDiffusionModel and load too)
    unet/                   the denoiser network (UNet2DConditionModel, UNet2DModel or DiT)
    text_encoder/           PromptEncoder
    tokenizer/vocab.json    WordTokenizer
    scheduler/              DDPMScheduler (diffusion: betas, prediction type, clipping) or
                            FlowMatchEulerDiscreteScheduler (flow matching: shift)
    distilled.json          only for a student of `genrl distill`: its method and sampling constants

This is the interface trainers use: `encode_prompts`, `null_condition`, `decode`,
`denoiser`, `sample_shape`. Latent pipelines (VAE + CLIP text encoder) expose the same.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from genrl.errors import CheckpointError
from genrl.models.networks import NETWORK_CLASSES
from genrl.models.scheduled_model import ScheduledModel
from genrl.models.shapes_pipeline import MODEL_INDEX, ShapesPipeline, save_components
from genrl.models.text_encoder import PromptEncoder, WordTokenizer

SCHEDULERS = {"DDPMScheduler": DDPMScheduler, "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler}
NETWORKS_BY_CLASS_NAME = {cls.__name__: cls for cls in NETWORK_CLASSES.values()}
CLASS_NAMES = (ShapesPipeline.__name__, "PromptDiffusionModel")  # model_index `_class_name`s this class loads
DISTILLED = "distilled.json"


class PromptDiffusionModel(ScheduledModel):
    def __init__(self, network: torch.nn.Module, text_encoder: PromptEncoder, tokenizer: WordTokenizer, scheduler):
        super().__init__()
        self.network = network
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.distilled: dict | None = None  # a distilled student's method and sampling constants (distilled.json)
        self._attach_denoiser(clip_sample=scheduler.config.get("clip_sample", False))

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        config = self.network.config
        size = config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (config.in_channels, *size)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Condition dict for the network: cross-attention states for a UNet2DConditionModel."""
        ids = self.tokenizer(prompts).to(self.device)
        return {"encoder_hidden_states": self.text_encoder(ids)}

    def null_condition(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The empty prompt, trained by condition dropout, for classifier-free guidance."""
        return self.encode_prompts([""] * batch_size)

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1]; a pixel-space model's samples already are."""
        return samples.clamp(-1, 1)

    def save_finetuned(self, output_dir: Path, network: torch.nn.Module, lora: bool, merged: bool = True) -> None:
        """The fine-tuned model as a full model directory (`model/`, LoRA merged) and the
        LoRA adapter alone in diffusers' format (`lora/`)."""
        network = copy.deepcopy(network)
        if lora:
            network.save_lora_adapter(output_dir / "lora")
            network.fuse_lora()
            network.unload_lora()
        if merged:
            PromptDiffusionModel(network, self.text_encoder, self.tokenizer, self.scheduler).save_pretrained(output_dir / "model")

    def save_pretrained(self, directory: str | Path) -> None:
        save_components(directory, self.network, self.text_encoder, self.tokenizer, self.scheduler)
        if self.distilled is not None:
            (Path(directory) / DISTILLED).write_text(json.dumps(self.distilled, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "PromptDiffusionModel":
        directory = Path(directory)
        index_path = directory / MODEL_INDEX
        if not index_path.is_file():
            raise CheckpointError(f"model directory {directory} has no {MODEL_INDEX} (not a saved genrl model)")
        try:
            index = json.loads(index_path.read_text())
            if index.get("_class_name") == "PromptDiffusionModel":  # written before ShapesPipeline existed
                network_class = NETWORK_CLASSES[index["network_kind"]]
            else:
                network_class = NETWORKS_BY_CLASS_NAME[index["unet"][1]]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as error:
            raise CheckpointError(f"{index_path} is corrupt: {type(error).__name__}: {error}") from None
        for component in ("unet", "text_encoder", "tokenizer", "scheduler"):
            if not (directory / component).is_dir():
                raise CheckpointError(f"model directory {directory} is missing its {component}/ component")
        try:
            network = network_class.from_pretrained(directory / "unet")
            text_encoder = PromptEncoder.from_pretrained(directory / "text_encoder")
            scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
            scheduler = SCHEDULERS[scheduler_config["_class_name"]].from_pretrained(directory / "scheduler")
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"could not load model from {directory}: {message}") from None
        tokenizer = WordTokenizer.from_pretrained(directory / "tokenizer")
        model = cls(network, text_encoder, tokenizer, scheduler)
        if (directory / DISTILLED).is_file():
            model.distilled = json.loads((directory / DISTILLED).read_text())
        return model

