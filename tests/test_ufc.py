"""UFC: few-shot spatial control adapters for a frozen UNet (genrl/guidance/ufc.py) and the Shapes
spatial conditions they learn (genrl/guidance/spatial_conditions.py)."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from genrl.errors import ConfigError
from genrl.guidance.spatial_conditions import CONDITION_TYPES, condition_iou, condition_map, read_masks, scene_examples
from genrl.guidance.ufc import ControlledUNet, UFCAdapter


@pytest.fixture()
def unet(tiny_unet_config):
    torch.manual_seed(0)
    return UNet2DConditionModel(**tiny_unet_config).eval().requires_grad_(False)


def _inputs(batch=2, shots=3, size=8):
    torch.manual_seed(1)
    return (torch.rand(batch, 1, size, size), torch.rand(shots, 1, size, size), torch.randn(shots, 3, size, size),
            torch.randn(batch, 3, size, size), torch.tensor([500, 500]), torch.randn(batch, 4, 16))


def test_an_untrained_adapter_leaves_the_frozen_model_unchanged_and_a_trained_one_steers_it(unet):
    adapter = UFCAdapter(unet, ["mask", "edges"])
    query, support_c, support_x, x, t, text = _inputs()
    down, mid = adapter(query, support_c, support_x, t, text, "mask")
    base = unet(x, t, encoder_hidden_states=text).sample
    controlled = unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert torch.equal(controlled, base)
    with torch.no_grad():
        for conv in adapter.out:
            conv.weight.normal_(0, 0.1)
    down, mid = adapter(query, support_c, support_x, t, text, "mask")
    moved = unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert not torch.allclose(moved, base)
    other = adapter(torch.rand_like(query), support_c, support_x, t, text, "mask")[0]  # another query condition
    assert not torch.allclose(other[0], down[0])


def test_few_shot_training_touches_only_the_new_tasks_biases_and_the_matching_module(unet):
    adapter = UFCAdapter(unet, ["mask", "edges"])
    adapter.add_task("boxes")
    trainable = {id(p) for p in adapter.trainable("boxes", few_shot=True)}
    named = dict(adapter.named_parameters())
    assert id(named["task_bias.boxes"]) in trainable and id(named["task_bias.mask"]) not in trainable
    assert not any(id(p) in trainable for name, p in named.items() if name.startswith(("conv_in", "down_blocks", "stem", "time_")))
    assert any(name.startswith("query.") and id(p) in trainable for name, p in named.items())
    assert {id(p) for p in adapter.trainable("boxes", few_shot=False)} == {id(p) for p in adapter.parameters()}
    with pytest.raises(ConfigError, match="already"):
        adapter.add_task("boxes")


def test_bad_support_set_and_unknown_task_are_one_line_errors(unet):
    adapter = UFCAdapter(unet, ["mask"])
    query, support_c, support_x, _, t, text = _inputs()
    with pytest.raises(ConfigError, match="differ in number or size"):
        adapter(query, support_c, support_x[:, :, :4, :4], t, text, "mask")
    with pytest.raises(ConfigError, match="differ in number or size"):
        adapter(query, support_c[:2], support_x, t, text, "mask")
    with pytest.raises(ConfigError, match="no task 'edges'"):
        adapter(query, support_c, support_x, t, text, "edges")


def test_controlled_unet_is_a_network_the_samplers_can_call(unet):
    adapter = UFCAdapter(unet, ["mask"])
    query, support_c, support_x, x, t, text = _inputs()
    network = ControlledUNet(unet, adapter, "mask", support_c, support_x, DDPMScheduler(num_train_timesteps=1000))
    assert torch.equal(network(x, t, encoder_hidden_states=text, control=query)[0], unet(x, t, encoder_hidden_states=text).sample)


def test_conditions_are_exact_and_the_reader_rebuilds_them_from_real_images():
    masks = np.zeros((1, 32, 32), dtype=bool)
    masks[0, 10:20, 5:15] = True
    assert condition_map("mask", masks).sum() == 100
    assert condition_map("edges", masks).sum() == 100 - 64  # the 10 x 10 square minus its 8 x 8 interior
    assert condition_map("boxes", masks).sum() == 36
    centre = condition_map("centres", masks)
    assert np.unravel_index(centre.argmax(), centre.shape) in {(14, 9), (14, 10), (15, 9), (15, 10)}
    images, conditions = scene_examples(np.random.default_rng(0), 6, "mask")
    assert all(len(read_masks(image)) >= 1 for image in images)
    for kind in CONDITION_TYPES:
        images, conditions = scene_examples(np.random.default_rng(1), 4, kind)
        assert [condition_iou(kind, c[0].numpy(), image) for c, image in zip(conditions, images)] == [1.0] * 4
        assert condition_iou(kind, conditions[0, 0].numpy(), images[1]) < 0.5  # another scene's image does not match
    with pytest.raises(ConfigError, match="condition type"):
        condition_map("depth", masks)


def test_genrl_pretrain_meta_trains_then_few_shot_trains_only_the_new_task(tiny_model_dir, tmp_path, capsys):
    from conftest import run_cli
    from safetensors.torch import load_file

    from genrl.guidance.ufc_training import load_adapter

    meta, few = tmp_path / "meta", tmp_path / "few"
    common = ["max_steps=4", "log_every=2", "checkpoint_every=4", "batch_size=2", "warmup_steps=1", "data.shots=2"]
    assert run_cli("pretrain", "configs/pretrain/ufc_meta_shapes.yaml", f"output_dir={meta}", f"model.base_model={tiny_model_dir}",
                   *common) == 0
    assert run_cli("pretrain", "configs/pretrain/ufc_few_shot_edges.yaml", f"output_dir={few}", f"model.init_adapter={meta / 'model'}",
                   "data.pool_size=6", *common) == 0
    before, after = load_file(meta / "model" / "adapter.safetensors"), load_file(few / "model" / "adapter.safetensors")
    assert "task_bias.edges" in after and "task_bias.edges" not in before
    for name, value in before.items():  # the shared encoder and the old tasks are untouched by few-shot training
        if name.startswith(("conv_in", "down_blocks", "stem", "time_", "task_bias.")):
            assert torch.equal(value, after[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith(("query.", "key.", "value.", "out.")))
    adapter, base = load_adapter(few / "model")
    assert set(adapter.task_bias) == {"mask", "centres", "boxes", "edges"} and base.network.config.sample_size == 32
    evaluation = ["rollout.num_conditions=2", "sampler.num_steps=2", f"model.path={tiny_model_dir}"]
    assert run_cli("eval", "configs/eval/ufc_shapes.yaml", f"output_dir={tmp_path / 'eval'}", f"guidance.adapter_path={few / 'model'}",
                   *evaluation) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["task"] == "edges" and 0 <= summary["iou_mean"] <= 1 and (tmp_path / "eval" / "samples" / "control.png").is_file()
    capsys.readouterr()
    code = run_cli("eval", "configs/eval/ufc_shapes.yaml", f"output_dir={tmp_path / 'eval_meta'}", f"guidance.adapter_path={meta / 'model'}",
                   *evaluation)
    error = capsys.readouterr().err.strip()
    assert code != 0 and "no task 'edges'" in error and not (tmp_path / "eval_meta").exists()
    code = run_cli("pretrain", "configs/pretrain/ufc_few_shot_edges.yaml", f"output_dir={tmp_path / 'bad'}", "model.init_adapter=null",
                   *common)
    error = capsys.readouterr().err.strip()
    assert code != 0 and "init_adapter" in error and len(error.splitlines()) == 1
    # fine_tune: the meta-trained adapter gains the task and, unlike few-shot, its shared encoder trains too
    tuned = tmp_path / "tuned"
    assert run_cli("pretrain", "configs/pretrain/ufc_few_shot_edges.yaml", f"output_dir={tuned}", f"model.init_adapter={meta / 'model'}",
                   "model.mode=fine_tune", "data.pool_size=null", *common) == 0
    after = load_file(tuned / "model" / "adapter.safetensors")
    assert "task_bias.edges" in after
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith(("conv_in", "down_blocks", "stem")))


def test_sample_controlled_starts_as_the_base_model_and_leaves_it_untouched(tiny_model_dir):
    from genrl.config import SamplerConfig
    from genrl.guidance.ufc import sample_controlled
    from genrl.models.loading import load_model
    from genrl.samplers import build_sampler

    model = load_model(tiny_model_dir).eval().requires_grad_(False)
    network = model.network
    adapter = UFCAdapter(model.network, ["edges"])
    images, conditions = scene_examples(np.random.default_rng(0), 5, "edges")
    sampler = build_sampler(SamplerConfig(kind="ddim", num_steps=3, eta=0.0), model)
    run = lambda a: sample_controlled(model, a, "edges", conditions[:2], conditions[2:], images[2:], sampler,  # noqa: E731
                                      torch.Generator().manual_seed(0))
    assert torch.equal(run(adapter), run(None))
    assert model.network is network and model.denoiser.network is network
    with torch.no_grad():
        adapter.mid_out.weight.normal_(0, 0.5)
    assert not torch.equal(run(adapter), run(None))
