"""Denoiser networks and the saved model format."""

import copy

import pytest
import torch
from diffusers import DDPMScheduler

from genrl.denoiser import Denoiser
from genrl.errors import CheckpointError, ConfigError
from genrl.models.loading import load_model
from genrl.models.networks import build_network
from genrl.samplers import DDIMSampler

UNET2D = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
              down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=5)
DIT = dict(sample_size=8, patch_size=2, in_channels=3, out_channels=6, num_layers=1, attention_head_dim=8,
           num_attention_heads=2, num_embeds_ada_norm=5, norm_num_groups=4)


@pytest.mark.parametrize("kind,config", [("unet2d", UNET2D), ("dit", DIT)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_class_conditional_networks_sample_with_guidance(kind, config, prediction_type):
    torch.manual_seed(0)
    network = build_network(kind, config).eval()
    denoiser = Denoiser(network, DDPMScheduler().alphas_cumprod, prediction_type, clip_sample=True)
    sampler = DDIMSampler(1000, 3, eta=1.0)
    labels = {"class_labels": torch.tensor([0, 1])}
    null = {"class_labels": torch.tensor([4, 4])}
    trajectory = sampler.sample(denoiser, labels, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0),
                                guidance_scale=2.0, null_condition=null)
    assert trajectory.states.shape == (2, 4, 3, 8, 8)
    assert trajectory.sample.abs().max() <= 1.5 and torch.isfinite(trajectory.log_probs).all()
    log_prob, _, _ = sampler.log_prob(denoiser, trajectory, 1)
    assert torch.equal(log_prob, trajectory.log_probs[:, 1])


def test_unknown_network_kind_and_bad_argument_are_config_errors():
    with pytest.raises(ConfigError, match="transformer9000"):
        build_network("transformer9000", {})
    with pytest.raises(ConfigError, match="unet2d"):
        build_network("unet2d", {"no_such_argument": 1})


def test_model_round_trips_through_save_pretrained(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir).eval()
    model.save_pretrained(tmp_path / "copy")
    again = load_model(tmp_path / "copy").eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 900])
    prompts = ["a red circle at the top", ""]
    with torch.no_grad():
        a = model.denoiser.model_output(x, t, model.encode_prompts(prompts))
        b = again.denoiser.model_output(x, t, again.encode_prompts(prompts))
    assert torch.equal(a, b)
    # The network directory is plain diffusers: diffusers loads it without genrl.
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(tmp_path / "copy" / "unet")


def test_missing_component_and_unknown_word_are_clear_errors(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "text_encoder")
    with pytest.raises(CheckpointError, match="text_encoder"):
        load_model(broken)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model_index.json"):
        load_model(tmp_path / "empty")
    model = load_model(tiny_model_dir)
    with pytest.raises(ConfigError, match="'octagon'"):
        model.encode_prompts(["a red octagon at the top"])


def test_sampler_rejects_mismatched_shapes(tiny_model_dir):
    model = load_model(tiny_model_dir)
    sampler = DDIMSampler(1000, 2)
    condition = model.encode_prompts(["a red circle at the top"] * 2)
    with pytest.raises(ConfigError, match="initial_noise"):
        sampler.sample(model.denoiser, condition, (2, 3, 32, 32), initial_noise=torch.zeros(2, 3, 16, 16))
    with pytest.raises(ConfigError, match="batch size"):
        sampler.sample(model.denoiser, condition, (3, 3, 32, 32))


def test_eval_command_scores_a_model(tiny_model_dir, tmp_path):
    from genrl.cli import main
    from genrl.run_dir import read_metrics

    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "configs/eval/shapes.yaml", f"model.path={tiny_model_dir}", f"output_dir={out}",
              "rollout.eval_samples=4", "sampler.num_steps=2"])
    assert exit_info.value.code == 0
    record = read_metrics(out / "metrics.jsonl")[-1]
    assert record["num_samples"] == 4
    assert 0 <= record["shapes_alignment/prompt_match"] <= 1 and record["jpeg_compressibility/jpeg_kb"] > 0
    assert (out / "samples" / "eval.png").exists()


def test_assigning_a_new_network_or_scheduler_reattaches_the_denoiser(tiny_model_dir):
    model = load_model(tiny_model_dir)
    replacement = copy.deepcopy(model.network)
    model.network = replacement
    assert model.denoiser.network is replacement  # sampling runs the network the model now holds
    model.scheduler = DDPMScheduler.from_config(model.scheduler.config, prediction_type="sample")
    assert model.denoiser.prediction_type == "sample"
