"""DDPO: the loss arithmetic, and real (tiny) training runs through the CLI entry point."""

import json

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import TINY_TRAIN_OVERRIDES, run_cli

from genrl.run_dir import read_metrics
from genrl.trainers.ddpo import ddpo_loss, kl_to_reference
from genrl.trainers.stat_tracker import PerPromptStatTracker
from rewards import REWARDS, RewardOutput

DDPO = "configs/ddpo/shapes_compressibility.yaml"


def test_on_policy_loss_is_minus_mean_advantage_and_nothing_is_clipped():
    log_prob = torch.randn(6, requires_grad=True)
    advantages = torch.randn(6)
    loss, info = ddpo_loss(log_prob, log_prob.detach(), advantages, clip_range=1e-4)
    assert torch.allclose(loss, -advantages.mean())
    assert info["clipfrac"] == 0 and info["approx_kl"] == 0
    loss.backward()  # d loss / d log_prob = -A / n when the ratio is 1
    assert torch.allclose(log_prob.grad, -advantages / 6)


def test_clipping_stops_the_gradient_beyond_the_trust_region():
    old = torch.zeros(2)
    log_prob = torch.tensor([0.5, -0.5], requires_grad=True)  # ratios e^0.5 and e^-0.5
    advantages = torch.tensor([1.0, -1.0])  # both would push the ratio further out
    loss, info = ddpo_loss(log_prob, old, advantages, clip_range=0.1)
    loss.backward()
    assert info["clipfrac"] == 1.0
    assert torch.equal(log_prob.grad, torch.zeros(2))


def test_kl_to_reference_is_zero_at_the_reference_and_grows_away_from_it():
    mean = torch.randn(2, 3, 4, 4)
    std = torch.tensor(0.5)
    assert kl_to_reference(mean, mean, std) == 0
    assert torch.isclose(kl_to_reference(mean + 0.5, mean, std), torch.tensor(0.5**2 / (2 * 0.25)))


def test_per_prompt_stat_tracker():
    tracker = PerPromptStatTracker(buffer_size=8, min_count=2)
    advantages = tracker.update(["a", "a", "b", "b"], [1.0, 3.0, 10.0, 30.0])
    # Each prompt is standardised by its own statistics: the two prompts' scales do not mix.
    assert advantages == pytest.approx([-1, 1, -1, 1], abs=1e-4)
    # Below min_count a prompt falls back to the batch's statistics.
    fallback = PerPromptStatTracker(buffer_size=8, min_count=5).update(["a", "b"], [0.0, 2.0])
    assert fallback == pytest.approx([-1, 1], abs=1e-4)


def test_ddpo_run_writes_the_promised_outputs_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    common = [DDPO, f"model.path={tiny_model_dir}", f"output_dir={out}", *TINY_TRAIN_OVERRIDES, "log_with=[tensorboard]"]
    assert run_cli("train", *common, "num_epochs=2", "rollout.eval_every=1") == 0
    for path in ["config.yaml", "metrics.jsonl", "checkpoints/checkpoint-2/trainer_state.json", "samples/before_after.png",
                 "model/model_index.json", "lora/pytorch_lora_weights.safetensors", "summary.json"]:
        assert (out / path).exists(), path
    assert list((out / "train").rglob("events.out.tfevents*")), "no tensorboard log"
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ["samples_seen", "reward_mean", "reward_std", "clipfrac", "approx_kl", "shapes_alignment",
                "time_sampling", "time_reward", "time_training"]:
        assert key in records[-1], key
    assert records[-1]["samples_seen"] == 16
    # rollout.eval_every: the fixed evaluation samples are also scored between epochs (not after the last: "after" is)
    assert "eval_jpeg_compressibility" in records[0] and "eval_jpeg_compressibility" not in records[1]
    assert (out / "samples" / "epoch1_scores.pt").exists()
    # The evaluations pair sample by sample: per-sample scores are saved, and each mean has its standard error.
    summary = json.loads((out / "summary.json").read_text())
    before_scores = torch.load(out / "samples" / "before_scores.pt")
    after_scores = torch.load(out / "samples" / "after_scores.pt")
    reward = before_scores["jpeg_compressibility"]
    assert reward.shape == after_scores["jpeg_compressibility"].shape and len(reward) > 1
    assert summary["jpeg_compressibility_before"] == pytest.approx(float(reward.mean()), abs=1e-6)
    assert summary["jpeg_compressibility_stderr_before"] == pytest.approx(float(reward.std() / len(reward) ** 0.5), abs=1e-6)

    # Without resume=true an existing run is refused (exit 2) and left as it was.
    before = (out / "metrics.jsonl").read_text()
    assert run_cli("train", *common, "num_epochs=3") == 2
    assert (out / "metrics.jsonl").read_text() == before

    AcceleratorState._reset_state(reset_partial_state=True)
    assert run_cli("train", *common, "num_epochs=3", "resume=true") == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["samples_seen"] == 24


def test_ddpo_runs_on_a_flow_model_with_the_sde_sampler(tiny_flow_model_dir, tmp_path):
    out = tmp_path / "flow"
    assert run_cli("train", "configs/ddpo/shapes_flow_compressibility.yaml", f"model.path={tiny_flow_model_dir}",
                   f"output_dir={out}", "num_epochs=1", *TINY_TRAIN_OVERRIDES) == 0
    record = read_metrics(out / "metrics.jsonl")[-1]
    # 8 chains x 2 trained steps in passes of 4: 4 optimizer steps, after which the ratios moved
    assert record["samples_seen"] == 8 and record["optimizer_steps"] == 4 and record["approx_kl"] > 0


def test_sampler_of_the_wrong_family_is_a_config_error(tiny_flow_model_dir, tmp_path, capsys):
    code = run_cli("train", DDPO, f"model.path={tiny_flow_model_dir}", f"output_dir={tmp_path / 'run'}", *TINY_TRAIN_OVERRIDES)
    assert code == 2
    assert "sampler.kind 'ddim'" in capsys.readouterr().err


@pytest.mark.parametrize("lora", ["true", "false"])
def test_kl_penalty_and_ema_paths_run_with_lora_and_full_fine_tuning(tiny_model_dir, tmp_path, lora):
    out = tmp_path / "kl"
    assert run_cli("train", DDPO, f"model.path={tiny_model_dir}", f"output_dir={out}", "num_epochs=1",
                   f"lora.enabled={lora}", "ppo.kl_coef=0.1", "ema_decay=0.9", *TINY_TRAIN_OVERRIDES) == 0
    record = read_metrics(out / "metrics.jsonl")[-1]
    # 0 exactly on the first pass (LoRA starts at the base, a full copy is the base), > 0 once updated
    assert record["kl_to_reference"] > 0


def test_bf16_mixed_precision_run(tiny_model_dir, tmp_path):
    """accelerate autocasts the network; log-probs stay float32, so losses and ratios stay finite."""
    out = tmp_path / "bf16"
    # 8 chains x 2 trained steps = 16 items in 4 passes of 4: one optimizer step, after every pass.
    assert run_cli("train", DDPO, f"model.path={tiny_model_dir}", f"output_dir={out}", "num_epochs=1",
                   "mixed_precision=bf16", *TINY_TRAIN_OVERRIDES, "gradient_accumulation_steps=4") == 0
    record = read_metrics(out / "metrics.jsonl")[-1]
    assert all(record[k] == record[k] for k in ("reward_mean", "approx_kl", "policy_loss"))  # not NaN
    assert record["optimizer_steps"] == 1
    # One update per epoch here, so every ratio is on-policy. In float32 it is exactly 1; under
    # bf16 the network's output differs slightly between the sampling batch and the reshuffled
    # training batch (log-ratio ~1e-5), which is all approx_kl may show.
    assert record["approx_kl"] < 1e-6


def test_corrupt_checkpoint_on_resume_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    common = [DDPO, f"model.path={tiny_model_dir}", f"output_dir={out}", *TINY_TRAIN_OVERRIDES]
    assert run_cli("train", *common, "num_epochs=1") == 0
    (out / "checkpoints" / "checkpoint-1" / "model.safetensors").write_bytes(b"garbage")
    AcceleratorState._reset_state(reset_partial_state=True)
    assert run_cli("train", *common, "num_epochs=2", "resume=true") == 2
    assert "checkpoint-1 could not be loaded" in capsys.readouterr().err
    assert len(read_metrics(out / "metrics.jsonl")) == 1  # the earlier epoch's record is intact


def test_resume_without_checkpoint_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    code = run_cli("train", DDPO, f"model.path={tiny_model_dir}", f"output_dir={tmp_path / 'empty'}", "resume=true",
                   *TINY_TRAIN_OVERRIDES)
    assert code == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert run_cli("train", DDPO, f"model.path={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'run'}") == 2
    assert "nowhere" in capsys.readouterr().err


def test_corrupt_model_weights_are_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    assert run_cli("train", DDPO, f"model.path={broken}", f"output_dir={tmp_path / 'run'}") == 2
    assert "could not load model" in capsys.readouterr().err


def test_nan_reward_stops_with_its_name_and_keeps_what_was_saved(tiny_model_dir, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}

    def flaky(images, prompts):
        calls["n"] += 1
        value = float("nan") if calls["n"] > 3 else 0.0  # fine for the evaluation (one call) and epoch 1 (2 batches), then NaN
        return RewardOutput(scores=torch.full((images.shape[0],), value) + torch.rand(images.shape[0]))

    monkeypatch.setitem(REWARDS, "flaky", flaky)
    out = tmp_path / "run"
    code = run_cli("train", DDPO, f"model.path={tiny_model_dir}", f"output_dir={out}", "rollout.reward.name=flaky",
                   "rollout.metric_rewards=[]", "num_epochs=3", *TINY_TRAIN_OVERRIDES)
    assert code == 1
    assert "'flaky'" in capsys.readouterr().err
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1]
    assert (out / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists()


def test_a_small_ddpo_step_raises_the_likelihood_of_advantaged_chains(tiny_model_dir):
    """The policy gradient points the right way: after a small step on the DDPO loss, the chain
    with positive advantage became more likely and the one with negative advantage less."""
    from genrl.models.loading import load_model
    from genrl.samplers import DDIMSampler

    model = load_model(tiny_model_dir)
    model.text_encoder.requires_grad_(False)
    sampler = DDIMSampler(1000, 4, eta=1.0)
    with torch.no_grad():
        condition = model.encode_prompts(["a red circle at the top"] * 2)
        trajectory = sampler.sample(model.denoiser, condition, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.SGD(model.network.parameters(), lr=1e-6)
    advantages = torch.tensor([1.0, -1.0])
    for step in range(4):
        log_prob, _, _ = sampler.log_prob(model.denoiser, trajectory, step)
        ddpo_loss(log_prob, trajectory.log_probs[:, step], advantages, clip_range=0.2)[0].backward()
    optimizer.step()
    with torch.no_grad():
        new = torch.stack([sampler.log_prob(model.denoiser, trajectory, k)[0] for k in range(4)], dim=1).sum(dim=1)
    change = new - trajectory.log_probs.sum(dim=1)
    assert change[0] > 0 > change[1], change
