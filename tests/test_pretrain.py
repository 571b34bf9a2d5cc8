"""`genrl pretrain` (genrl/pretraining/): one loop for image models and policies. Here the image side
on a tiny network (writes a loadable model, resumes with the same batches) and the noising
function both share; the policy side is in test_diffusion_policy.py."""

import shutil

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import TINY_PRETRAIN
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

from genrl.commands import pretrain
from genrl.config import PretrainConfig
from genrl.models.loading import load_model
from genrl.pretraining import noisy_input_and_target
from genrl.run_dir import read_metrics

TINY_RUN = {"batch_size": 4, "log_every": 2, "checkpoint_every": 2, "warmup_steps": 1, "eval": {"num_samples": 4}}


def run_pretrain(tree: dict) -> dict:
    AcceleratorState._reset_state(reset_partial_state=True)
    return pretrain.run(PretrainConfig.model_validate(tree))


@pytest.mark.parametrize("family", ["diffusion", "flow"])
def test_tiny_pretrain_writes_a_model_and_resumes_with_the_same_batches(tmp_path, family):
    out = tmp_path / "run"
    tree = {**TINY_PRETRAIN, **TINY_RUN, "schedule": {"family": family}, "output_dir": str(out), "max_steps": 4}
    summary = run_pretrain(tree)
    assert summary["model"] == str(out / "model") and "eval_shapes_alignment_prompt_match" in summary
    assert "eval_shapes_alignment_prompt_match" in read_metrics(out / "metrics.jsonl")[-1]
    assert (out / "samples" / "final_single_object.png").exists()
    uninterrupted = load_model(out / "model")
    assert uninterrupted.sample_shape == (3, 32, 32) and uninterrupted.family == family

    # A run killed after step 2 (its last checkpoint) resumes at step 3, with the same batches and noise.
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(out / "model")
    run_pretrain({**tree, "resume": True})
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [2, 4]  # steps after the checkpoint are logged once
    assert (out / "checkpoints" / "checkpoint-4").is_dir()
    for ours, theirs in zip(load_model(out / "model").network.parameters(), uninterrupted.network.parameters()):
        torch.testing.assert_close(ours, theirs)


def test_prompt_model_and_data_must_match():
    with pytest.raises(ValueError, match="data kind 'demonstrations' trains a model of kind 'diffusion_policy'"):
        PretrainConfig.model_validate({**TINY_PRETRAIN, "data": {"kind": "demonstrations"}})


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 16, 2)], ids=["images", "action_chunks"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow"])
def test_one_noising_function_for_every_parameterisation_and_shape(shape, prediction_type):
    if prediction_type == "flow":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    else:
        scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
    clean = torch.rand(shape) * 2 - 1
    noisy, timesteps, target = noisy_input_and_target(scheduler, clean, torch.Generator().manual_seed(0))
    again = noisy_input_and_target(scheduler, clean, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((noisy, timesteps, target), again))  # seeded by the generator
    view = (-1, *[1] * (len(shape) - 1))
    if prediction_type == "flow":  # x = (1 - sigma) x0 + sigma eps, target eps - x0, timestep sigma * T
        sigma = (timesteps / 1000).view(view)
        noise = target + clean
        torch.testing.assert_close(noisy, (1 - sigma) * clean + sigma * noise)
        return
    alpha = scheduler.alphas_cumprod[timesteps].view(view)
    noise = (noisy - alpha.sqrt() * clean) / (1 - alpha).sqrt()
    expected = {"epsilon": noise, "sample": clean, "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * clean}
    torch.testing.assert_close(target, expected[prediction_type], atol=1e-4, rtol=1e-4)
