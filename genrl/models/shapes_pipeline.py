"""A Shapes model (`models/shapes-diffusion`, `models/shapes-flow`, a run's `model/`) as a diffusers pipeline.

    import genrl
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained("models/shapes-diffusion")
    images = pipe(["a red circle at the top left"], num_inference_steps=20).images

Components, as in Stable Diffusion but in pixel space (no VAE):
    unet          UNet2DConditionModel (any network genrl trains: UNet2DModel, DiTTransformer2DModel)
    text_encoder  genrl.models.text_encoder.PromptEncoder (a diffusers ModelMixin)
    tokenizer     genrl.models.text_encoder.WordTokenizer
    scheduler     the scheduler the model was trained with: DDPMScheduler (diffusion) or
                  FlowMatchEulerDiscreteScheduler (flow). Swap it like in any diffusers pipeline,
                  e.g. `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`.

How diffusers finds it: `DiffusionPipeline.from_pretrained` looks up model_index.json's
`_class_name` on the `diffusers` module, and resolves a component declared as
["genrl.models.text_encoder", "PromptEncoder"] from the already imported module of that name.
So importing this module (which `import genrl` does) registers `ShapesPipeline` on `diffusers`.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from genrl.models.networks import call_network
from genrl.models.text_encoder import PromptEncoder, WordTokenizer

MODEL_INDEX = "model_index.json"


def write_model_index(directory: Path, network: torch.nn.Module, scheduler) -> None:
    """model_index.json naming ShapesPipeline and where each component's class lives."""
    index = {
        "_class_name": ShapesPipeline.__name__,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": [PromptEncoder.__module__, PromptEncoder.__name__],
        "tokenizer": [WordTokenizer.__module__, WordTokenizer.__name__],
        "unet": ["diffusers", type(network).__name__],
    }
    (Path(directory) / MODEL_INDEX).write_text(json.dumps(index, indent=1) + "\n")


def save_components(directory: str | Path, network, text_encoder: PromptEncoder, tokenizer: WordTokenizer, scheduler) -> None:
    """The model directory: each component in its own subfolder, then model_index.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    network.save_pretrained(directory / "unet")
    text_encoder.save_pretrained(directory / "text_encoder")
    tokenizer.save_pretrained(directory / "tokenizer")
    scheduler.save_pretrained(directory / "scheduler")
    write_model_index(directory, network, scheduler)


class ShapesPipeline(DiffusionPipeline):
    """Text-to-image sampling from a prompt-conditioned pixel-space Shapes model."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: torch.nn.Module, text_encoder: PromptEncoder, tokenizer: WordTokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.image_processor = VaeImageProcessor(do_resize=False)  # [-1, 1] -> pil / np / pt in [0, 1]

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """The same directory genrl writes (diffusers' own writer cannot save the word tokenizer);
        diffusers' saving options (variant, push_to_hub, ...) do not apply and are ignored."""
        save_components(save_directory, self.unet, self.text_encoder, self.tokenizer, self.scheduler)

    def encode_prompt(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        """(B, L, hidden) states for the unet's cross-attention; an unknown word is a ConfigError."""
        return self.text_encoder(self.tokenizer(prompts).to(device))

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per prompt (times `num_images_per_prompt`).

        guidance_scale: classifier-free guidance against the empty prompt (the models are trained
        with prompt dropout); 1.0 is plain conditional sampling. eta: DDIM's noise, used only
        when the scheduler is a DDIMScheduler. latents: the initial noise, (B, C, H, W).
        output_type: "pil" (list of images), "np" ((B, H, W, 3) in [0, 1]) or "pt" ((B, 3, H, W) in [0, 1]).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        device = self._execution_device
        condition = {"encoder_hidden_states": self.encode_prompt(prompts, device)}
        guided = guidance_scale != 1.0
        if guided:  # one batched call for both branches: [unconditional, conditional]
            null = self.encode_prompt([""] * len(prompts), device)
            condition = {"encoder_hidden_states": torch.cat([null, condition["encoder_hidden_states"]])}

        config = self.unet.config
        size = config.sample_size if isinstance(config.sample_size, (tuple, list)) else (config.sample_size,) * 2
        shape = (len(prompts), config.in_channels, *size)
        dtype = condition["encoder_hidden_states"].dtype
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        latents = latents.to(device=device, dtype=dtype) * getattr(self.scheduler, "init_noise_sigma", 1.0)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_parameters = inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if "generator" in step_parameters else {}
        if "eta" in step_parameters:
            step_kwargs["eta"] = eta
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if guided else latents
            if hasattr(self.scheduler, "scale_model_input"):  # flow-matching schedulers have none
                model_input = self.scheduler.scale_model_input(model_input, t)
            output = call_network(self.unet, model_input, t, condition)
            if guided:
                uncond, cond = output.chunk(2)
                output = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(output, t, latents, **step_kwargs, return_dict=False)[0]

        images = self.image_processor.postprocess(latents.clamp(-1, 1), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


# `DiffusionPipeline.from_pretrained` resolves model_index.json's `_class_name` on the diffusers module.
setattr(diffusers, ShapesPipeline.__name__, ShapesPipeline)
