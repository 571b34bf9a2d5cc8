"""Tiny Stable-Diffusion-style pipelines built from configs (random weights), saved like real ones.

Real checkpoints cannot be downloaded here, so tests build the same architectures at toy size:
UNet2DConditionModel / SD3Transformer2DModel, AutoencoderKL, CLIP text encoders and a CLIP
tokenizer whose vocabulary files are written here (single characters plus the special tokens).
"""

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


def write_clip_tokenizer(directory: Path) -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer: vocab.json + merges.txt with no merges."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=16,
                         pad_token="<|endoftext|>")


def _text_encoder(vocab_size, with_projection=False, hidden=16):
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=16, projection_dim=hidden,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _vae(latent_channels=4):
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=16)


def _unet(cross_attention_dim=16, sample_size=8, **extra):
    return UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=4, **extra)


def build_tiny_sd(directory: Path, sample_size: int = 8) -> Path:
    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(directory / "_tok")
    pipeline = StableDiffusionPipeline(
        vae=_vae(), text_encoder=_text_encoder(len(tokenizer)), tokenizer=tokenizer, unet=_unet(sample_size=sample_size),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory)
    return directory


def build_tiny_sdxl(directory: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(directory / "_tok")
    unet = _unet(cross_attention_dim=32, addition_embed_type="text_time", addition_time_embed_dim=4,
                 projection_class_embeddings_input_dim=16 + 6 * 4, transformer_layers_per_block=1)
    pipeline = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_text_encoder(len(tokenizer)), text_encoder_2=_text_encoder(len(tokenizer), True),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
    )
    pipeline.save_pretrained(directory)
    return directory


def build_tiny_sd3(directory: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(directory / "_tok")
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=16)
    vae = _vae()
    vae.register_to_config(shift_factor=0.1, scaling_factor=1.5)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=_text_encoder(len(tokenizer), True), tokenizer=tokenizer,
        text_encoder_2=_text_encoder(len(tokenizer), True), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    )
    pipeline.save_pretrained(directory)
    return directory
