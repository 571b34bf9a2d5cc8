"""Latent text-to-image pipelines (SD, SDXL, SD3) loaded from local directories and fine-tuned."""

import json

import pytest
import torch
from conftest import run_cli
from tiny_pipelines import build_tiny_sd, build_tiny_sd3, build_tiny_sdxl

from genrl.denoiser import GuidedNetwork
from genrl.errors import CheckpointError
from genrl.models.loading import load_model
from genrl.run_dir import read_metrics

SD_CONFIG = "configs/ddpo/sd15_compressibility.yaml"
TINY = ["model.resolution=16", "model.gradient_checkpointing=false", "model.save_merged_model=true",
        "mixed_precision=no", "rollout.batch_size=2", "rollout.num_batches=2", "train_batch_size=2",
        "gradient_accumulation_steps=1", "sampler.num_steps=3", "rollout.eval_samples=2", "rollout.grid_prompts=2", "num_epochs=1",
        "log_with=[]", "rollout.prompts.prompts=[cat,dog]"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {"sd": build_tiny_sd(root / "sd"), "sdxl": build_tiny_sdxl(root / "sdxl"), "sd3": build_tiny_sd3(root / "sd3")}


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3"])
def test_ddpo_fine_tunes_a_local_pipeline_and_its_lora_loads_in_diffusers(pipelines, tmp_path, kind):
    from diffusers import DiffusionPipeline

    out = tmp_path / kind
    sampler = ["sampler.kind=flow_sde"] if kind == "sd3" else []
    assert run_cli("train", SD_CONFIG, f"model.path={pipelines[kind]}", f"output_dir={out}", *TINY, *sampler) == 0
    assert read_metrics(out / "metrics.jsonl")[-1]["samples_seen"] == 4

    # diffusers' own loader takes our LoRA, and the result equals our merged model.
    finetuned = load_model(out / "model")
    base = DiffusionPipeline.from_pretrained(pipelines[kind], local_files_only=True,
                                             **({"text_encoder_3": None, "tokenizer_3": None} if kind == "sd3" else {}))
    base.load_lora_weights(out / "lora")
    network = base.transformer if kind == "sd3" else base.unet
    x = torch.randn(2, 4, 8, 8)
    condition = finetuned.encode_prompts(["cat", "dog"])
    timestep = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        ours = finetuned.denoiser.model_output(x, timestep, condition)
        theirs = GuidedNetwork(network).model_output(x, timestep, condition)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_lora_starts_at_the_base_model_and_moves_after_training(pipelines, tmp_path):
    out = tmp_path / "sd"
    assert run_cli("train", SD_CONFIG, f"model.path={pipelines['sd']}", f"output_dir={out}", *TINY,
                   "optimizer.learning_rate=1e-2", "ppo.clip_range=10") == 0
    base, finetuned = load_model(pipelines["sd"]), load_model(out / "model")
    delta = max((a - b).abs().max().item() for a, b in zip(base.network.parameters(), finetuned.network.parameters()))
    assert delta > 0


def test_incomplete_pipeline_and_mismatched_tokenizer_are_clear_errors(pipelines, tmp_path):
    import shutil

    broken = tmp_path / "no_vae"
    shutil.copytree(pipelines["sd"], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(CheckpointError, match="'vae'"):
        load_model(broken)

    mismatched = tmp_path / "tokenizer"
    shutil.copytree(pipelines["sd"], mismatched)
    tokenizer_file = mismatched / "tokenizer" / "tokenizer.json"
    tokenizer = json.loads(tokenizer_file.read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab.update({f"extra{i}</w>": len(vocab) + i for i in range(50)})
    tokenizer_file.write_text(json.dumps(tokenizer))
    with pytest.raises(CheckpointError, match="tokenizer .* tokens but text_encoder"):
        load_model(mismatched)


def test_sd3_pipeline_with_a_diffusion_sampler_is_a_config_error(pipelines, tmp_path, capsys):
    assert run_cli("train", SD_CONFIG, f"model.path={pipelines['sd3']}", f"output_dir={tmp_path / 'x'}", *TINY) == 2
    assert "flow" in capsys.readouterr().err
