"""CLIP score, the aesthetic head, LPIPS and weighted reward combinations, on random-init
models of the real architectures (small configs): shapes, batching, gradients, loading."""

import json

import pytest
import torch

from genrl.config import RewardConfig
from genrl.errors import CheckpointError, ConfigError
from rewards import compute_configured_reward, compute_reward
from rewards.aesthetic import AestheticHead
from rewards.clip_model import clip_image_features, load_clip
from rewards.lpips_distance import lpips_distance, mean_pairwise_lpips

TINY_CLIP = "genrl-tiny-clip"


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_config(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("clip_configs")
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(folder)


def images(n=4, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_clip_score_shapes_batching_and_range():
    kwargs = {"clip_model": TINY_CLIP, "allow_random_weights": True}
    batch = images()
    prompts = ["a red circle", "a blue square", "a cat", "a dog"]
    scores = compute_reward("clip_score", batch, prompts, **kwargs).scores
    assert scores.shape == (4,) and scores.abs().max() <= 1
    one_by_one = torch.cat([compute_reward("clip_score", batch[i:i + 1], prompts[i:i + 1], **kwargs).scores for i in range(4)])
    assert torch.allclose(scores, one_by_one, atol=1e-5)


def test_clip_image_features_are_differentiable():
    model, _ = load_clip(TINY_CLIP, None, True)
    pixels = images(2).requires_grad_(True)
    clip_image_features(model, pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_clip_weights_load_from_a_local_file_and_missing_files_are_named(tmp_path):
    random_model, _ = load_clip(TINY_CLIP, None, True)
    path = tmp_path / "tiny_clip.pt"
    torch.save(random_model.state_dict(), path)
    loaded, _ = load_clip(TINY_CLIP, str(path))
    batch = images(2)
    assert torch.allclose(clip_image_features(loaded, batch), clip_image_features(random_model, batch), atol=1e-6)
    with pytest.raises(CheckpointError, match="nowhere.bin"):
        load_clip(TINY_CLIP, str(tmp_path / "nowhere.bin"))
    with pytest.raises(ConfigError, match="clip_weights"):
        load_clip(TINY_CLIP, None)


def test_aesthetic_head_loads_the_published_layout(tmp_path):
    head = AestheticHead(32)
    # The published LAION state dict names: layers.{0,2,4,6,7}.{weight,bias}.
    assert sorted({k.split(".")[1] for k in head.state_dict()}) == ["0", "2", "4", "6", "7"]
    path = tmp_path / "head.pth"
    torch.save(head.state_dict(), path)
    kwargs = {"clip_model": TINY_CLIP, "allow_random_weights": True, "head_weights": str(path)}
    scores = compute_reward("aesthetic_score", images(), [""] * 4, **kwargs).scores
    clip_model, _ = load_clip(TINY_CLIP, None, True)
    with torch.no_grad():  # the saved head on the CLIP image embedding
        expected = head.eval()(clip_image_features(clip_model, images()).float())
    torch.testing.assert_close(scores, expected)
    torch.save(AestheticHead(64).state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        compute_reward("aesthetic_score", images(), [""] * 4, **{**kwargs, "head_weights": str(tmp_path / "wrong.pth")})
    with pytest.raises(CheckpointError, match="missing.pth"):
        compute_reward("aesthetic_score", images(), [""] * 4, **{**kwargs, "head_weights": str(tmp_path / "missing.pth")})


def test_lpips_distance_and_diversity():
    batch = images(4)
    assert torch.allclose(lpips_distance(batch, batch, random_backbone=True), torch.zeros(4), atol=1e-6)
    assert (lpips_distance(batch, images(4, seed=1), random_backbone=True) > 0).all()
    same = torch.cat([batch[:1]] * 3)
    assert mean_pairwise_lpips(same, ["p"] * 3, random_backbone=True) == pytest.approx(0, abs=1e-6)
    assert mean_pairwise_lpips(batch, ["p", "p", "q", "q"], random_backbone=True) > 0
    with pytest.raises(CheckpointError, match="backbone"):
        lpips_distance(batch, batch)


def test_weighted_reward_combination_logs_each_component():
    config = RewardConfig.model_validate({"name": None, "components": [
        {"name": "jpeg_compressibility", "weight": 2.0},
        {"name": "clip_score", "weight": 0.5, "kwargs": {"clip_model": TINY_CLIP, "allow_random_weights": True}},
    ]})
    batch, prompts = images(), ["a cat"] * 4
    output = compute_configured_reward(config, batch, prompts)
    jpeg = compute_reward("jpeg_compressibility", batch, prompts).scores
    clip = compute_reward("clip_score", batch, prompts, clip_model=TINY_CLIP, allow_random_weights=True).scores
    assert torch.allclose(output.scores, 2.0 * jpeg + 0.5 * clip, atol=1e-5)
    assert set(output.info) >= {"jpeg_compressibility", "clip_score", "jpeg_compressibility/jpeg_kb"}


def test_lpips_backbone_loads_a_local_torchvision_state_dict(tmp_path):
    import torchvision

    from rewards.lpips_distance import load_lpips

    alexnet = torchvision.models.alexnet()
    path = tmp_path / "alexnet.pth"
    torch.save(alexnet.state_dict(), path)
    model = load_lpips("alex", str(path))
    first_conv = model.net.slice1[0].weight
    assert torch.equal(first_conv, alexnet.features[0].weight)
