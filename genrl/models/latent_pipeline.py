"""A diffusers text-to-image pipeline from a local directory, as a trainable model.

Supported: Stable Diffusion 1.x/2.x (`StableDiffusionPipeline`), SDXL
(`StableDiffusionXLPipeline`) and SD3-style flow models (`StableDiffusion3Pipeline`). The
pipeline's own `encode_prompt` makes the condition, so prompts are embedded exactly as the
pipeline would at inference; sampling runs in latent space and the VAE decodes (in chunks,
to bound memory) only the final latents, for the reward.

Exposes the interface trainers use: `network`, `denoiser`, `family`, `sample_shape`,
`encode_prompts`, `null_condition`, `decode`, `save_finetuned`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from genrl.condition import map_condition
from genrl.errors import CheckpointError
from genrl.models.scheduled_model import ScheduledModel

SUPPORTED = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline")


def check_pipeline_directory(path: Path) -> dict:
    """Fail early, naming the culprit, on a directory that is not a complete pipeline."""
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(f"model.path {path} has no model_index.json")
    index = json.loads(index_path.read_text())
    if index.get("_class_name") not in SUPPORTED:
        raise CheckpointError(f"pipeline class {index.get('_class_name')!r} in {index_path} is not supported; use one of {SUPPORTED}")
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue  # metadata, or an optional component left out (e.g. SD3 without T5)
        if not (path / name).is_dir():
            raise CheckpointError(f"pipeline {path} lists component {name!r} but has no {name}/ directory")
    return index


class LatentPipelineModel(ScheduledModel):
    def __init__(self, pipeline: DiffusionPipeline, resolution: int | None = None, decode_chunk_size: int = 8):
        super().__init__()
        self.pipeline = pipeline
        self.kind = type(pipeline).__name__
        self.network = pipeline.transformer if self.kind == "StableDiffusion3Pipeline" else pipeline.unet
        self.vae = pipeline.vae
        # Registered as submodules so that .to(device / dtype) and requires_grad_ reach them.
        self.text_encoders = torch.nn.ModuleList(
            [e for e in (getattr(pipeline, f"text_encoder{s}", None) for s in ("", "_2", "_3")) if e is not None]
        )
        self.scheduler = pipeline.scheduler
        self.decode_chunk_size = decode_chunk_size
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.network.config.sample_size * vae_factor
        self.latent_size = self.resolution // vae_factor
        self._check_tokenizers()
        self._attach_denoiser(clip_sample=False)  # latents are not bounded like pixels

    @classmethod
    def from_pretrained(cls, path: str | Path, resolution: int | None = None, decode_chunk_size: int = 8):
        path = Path(path)
        index = check_pipeline_directory(path)
        # Components saved as absent (e.g. SD3 without its T5 encoder) must be passed as None.
        absent = {name: None for name, spec in index.items() if isinstance(spec, list) and spec[0] is None}
        try:
            pipeline = DiffusionPipeline.from_pretrained(path, local_files_only=True, **absent)
        except (OSError, ValueError, RuntimeError, TypeError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointError(f"could not load pipeline from {path}: {first_line}") from None
        return cls(pipeline, resolution, decode_chunk_size)

    def _check_tokenizers(self) -> None:
        for suffix in ("", "_2", "_3"):
            tokenizer = getattr(self.pipeline, f"tokenizer{suffix}", None)
            encoder = getattr(self.pipeline, f"text_encoder{suffix}", None)
            if tokenizer is None or encoder is None:
                continue
            if len(tokenizer) > encoder.config.vocab_size:
                raise CheckpointError(
                    f"tokenizer{suffix} has {len(tokenizer)} tokens but text_encoder{suffix} embeds only "
                    f"{encoder.config.vocab_size}: they do not belong together"
                )

    # ------------------------------------------------------------------ the model interface
    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.network.config.in_channels, self.latent_size, self.latent_size)

    def encode_prompts(self, prompts: list[str]) -> dict:
        device = self.device
        if self.kind == "StableDiffusionPipeline":
            embeds, _ = self.pipeline.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
            return {"encoder_hidden_states": embeds}
        if self.kind == "StableDiffusionXLPipeline":
            embeds, _, pooled, _ = self.pipeline.encode_prompt(
                prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            size = (self.resolution, self.resolution)
            time_ids = self.pipeline._get_add_time_ids(
                size, (0, 0), size, embeds.dtype, text_encoder_projection_dim=self.pipeline.text_encoder_2.config.projection_dim
            ).to(device)
            return {
                "encoder_hidden_states": embeds,
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.repeat(len(prompts), 1)},
            }
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def null_condition(self, batch_size: int) -> dict:
        """The empty prompt, as DDPO and the pipelines use for classifier-free guidance.

        Encoded once per batch size (and device / dtype of the text encoders, which are never
        trained), not at every sampling batch; each call gets its own dict of the same tensors."""
        encoders = tuple((p.device, p.dtype) for p in (next(e.parameters()) for e in self.text_encoders))
        key = (batch_size, str(self.device), encoders)
        cache = self.__dict__.setdefault("_null_conditions", {})
        if key not in cache:
            with torch.no_grad():
                cache[key] = self.encode_prompts([""] * batch_size)
        return map_condition(lambda tensor: tensor, cache[key])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1], `decode_chunk_size` at a time. A VAE whose config sets
        `force_upcast` (SDXL's, which overflows in float16) decodes in float32, as diffusers' SDXL
        pipeline does: float16 weights are cast up for the decode and back after it, and mixed
        precision's autocast is off while it runs."""
        import contextlib

        config = self.vae.config
        latents = latents / config.scaling_factor + (config.get("shift_factor") or 0.0)
        force_upcast = bool(config.get("force_upcast", False))
        upcast = force_upcast and self.vae.dtype == torch.float16
        if upcast:
            self.vae.to(torch.float32)
        try:
            with torch.autocast(latents.device.type, enabled=False) if force_upcast else contextlib.nullcontext():
                images = [
                    self.vae.decode(chunk.to(self.vae.dtype), return_dict=False)[0]
                    for chunk in latents.split(self.decode_chunk_size)
                ]
        finally:
            if upcast:
                self.vae.to(torch.float16)
        return torch.cat(images).float().clamp(-1, 1)

    def save_finetuned(self, output_dir: Path, network: torch.nn.Module, lora: bool, merged: bool = True) -> None:
        """LoRA in the pipeline's own format (so `pipeline.load_lora_weights(output_dir / 'lora')`
        works), and optionally the whole pipeline with the LoRA merged into the base weights."""
        import copy

        from peft.utils import get_peft_model_state_dict

        if lora:
            layers = get_peft_model_state_dict(network)
            key = "transformer_lora_layers" if self.kind == "StableDiffusion3Pipeline" else "unet_lora_layers"
            type(self.pipeline).save_lora_weights(output_dir / "lora", **{key: layers})
        if merged:
            merged_network = copy.deepcopy(network)
            if lora:
                merged_network.fuse_lora()
                merged_network.unload_lora()
            component = "transformer" if self.kind == "StableDiffusion3Pipeline" else "unet"
            pipeline = copy.copy(self.pipeline)
            pipeline.register_modules(**{component: merged_network})
            pipeline.save_pretrained(output_dir / "model")
