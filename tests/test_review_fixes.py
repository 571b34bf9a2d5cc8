"""Fixes from the issue-11 review: the rewards/genrl import cycle, fp16 VAEs that must decode in
float32, the before/after figure, and the LPIPS diversity metric."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipelines import build_tiny_sdxl

from genrl.models.loading import load_model


# ------------------------------------------------------------------ import layering
def test_importing_rewards_does_not_import_genrl():
    probe = "import sys, rewards; print(sorted(m for m in sys.modules if m.split('.')[0] == 'genrl'))"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=root)
    assert result.stdout.strip() == "[]"


def test_genrl_errors_are_the_classes_rewards_raise_with_their_exit_codes():
    import genrl.errors
    import rewards.errors
    from rewards import get_reward

    for name, code in [("GenrlError", 1), ("ConfigError", 2), ("CheckpointError", 2), ("RewardError", 1)]:
        assert getattr(genrl.errors, name) is getattr(rewards.errors, name)
        assert getattr(genrl.errors, name).exit_code == code
    with pytest.raises(genrl.errors.ConfigError):  # what the CLI catches
        get_reward("no_such_reward")


# ------------------------------------------------------------------ fp16 VAE decoding
@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "sdxl")


def _decode_recording_dtype(model, latents):
    """Decode, and return the images with the dtype(s) the VAE decoder's convolutions computed in."""
    seen = []
    hook = model.vae.decoder.conv_out.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    try:
        with torch.no_grad():
            images = model.decode(latents)
    finally:
        hook.remove()
    return images, set(seen)


@pytest.mark.parametrize("force_upcast", [True, False])
def test_fp16_vae_decodes_in_float32_when_its_config_forces_upcast(tiny_sdxl, force_upcast):
    model = load_model(tiny_sdxl)
    model.vae.register_to_config(force_upcast=force_upcast)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    model.vae.half().float()  # weights rounded to float16, held in float32
    with torch.no_grad():
        reference = model.decode(latents)
    model.vae.half()
    images, dtypes = _decode_recording_dtype(model, latents)
    assert dtypes == ({torch.float32} if force_upcast else {torch.float16})
    assert model.vae.dtype == torch.float16  # upcast only for the decode, as diffusers' SDXL pipeline does
    assert images.dtype == torch.float32 and images.shape == (3, 3, 16, 16)
    if force_upcast:  # the same weights and arithmetic as the float32 reference
        torch.testing.assert_close(images, reference, atol=1e-6, rtol=0)


def test_force_upcast_vae_decodes_in_float32_under_mixed_precision_autocast(tiny_sdxl):
    model = load_model(tiny_sdxl)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for force_upcast, expected in [(False, {torch.float16}), (True, {torch.float32})]:
        model.vae.register_to_config(force_upcast=force_upcast)
        with torch.autocast("cpu", dtype=torch.float16):  # what accelerate's mixed_precision=fp16 wraps sampling in
            _, dtypes = _decode_recording_dtype(model, latents)
        assert dtypes == expected, force_upcast


# ------------------------------------------------------------------ LPIPS diversity
def _noise_images(count, seed, size=32):
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_lpips_diversity_uses_the_given_backbone_weights(tmp_path):
    import lpips

    from rewards.diversity import prompt_diversity

    torch.manual_seed(0)
    reference = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    # Its (random) backbone saved as torchvision's AlexNet state dict, the file a user passes.
    slices = [getattr(reference.net, f"slice{i}") for i in range(1, 6)]
    path = tmp_path / "alexnet.pth"
    torch.save({f"features.{key}": value for part in slices for key, value in part.state_dict().items()}, path)
    a, b = _noise_images(2, seed=0), _noise_images(2, seed=1)
    prompts = ["p", "q", "p", "q"]

    assert prompt_diversity(torch.cat([a, a]), prompts, "lpips", lpips_weights=path) == pytest.approx(0, abs=1e-6)
    different = prompt_diversity(torch.cat([a, b]), prompts, "lpips", lpips_weights=path)
    with torch.no_grad():
        expected = reference(a, b).mean().item()
    assert different == pytest.approx(expected, rel=1e-4) and 0 < different < 2


def test_lpips_diversity_with_a_random_backbone_and_its_config_errors(tmp_path):
    from genrl.errors import ConfigError
    from rewards.diversity import check_diversity_options, prompt_diversity

    a, b = _noise_images(3, seed=0), _noise_images(3, seed=1)
    prompts = ["x", "y", "z"] * 2
    assert prompt_diversity(torch.cat([a, a]), prompts, "lpips", lpips_random_backbone=True) == pytest.approx(0, abs=1e-6)
    flat = torch.zeros_like(a)
    noisy = prompt_diversity(torch.cat([a, b]), prompts, "lpips", lpips_random_backbone=True)
    flat_vs_noise = prompt_diversity(torch.cat([flat, b]), prompts, "lpips", lpips_random_backbone=True)
    assert 0 < noisy < 2 and 0 < flat_vs_noise < 2 and noisy != flat_vs_noise

    for kwargs, culprit in [({}, "lpips_weights"), ({"lpips_weights": tmp_path / "missing.pth"}, "missing.pth")]:
        with pytest.raises(ConfigError, match=culprit):
            check_diversity_options("lpips", **kwargs)
        with pytest.raises(ConfigError, match=culprit):
            prompt_diversity(torch.cat([a, b]), prompts, "lpips", **kwargs)
    with pytest.raises(ConfigError, match="only apply to metric 'lpips'"):
        check_diversity_options("pixel", lpips_weights=tmp_path / "alexnet.pth")
    check_diversity_options("pixel")


# ------------------------------------------------------------------ before/after figure
MAGENTA = (255, 0, 255)


def _grid(tmp_path, name, after_scores):
    from genrl.figures import save_before_after_grid

    generator = torch.Generator().manual_seed(0)
    before = torch.rand(8, 3, 32, 32, generator=generator) * 1.6 - 0.8  # never pure magenta
    after = torch.rand(8, 3, 32, 32, generator=generator) * 1.6 - 0.8
    after[2] = torch.tensor([1.0, -1.0, 1.0])[:, None, None]  # one flat magenta sample to find on the page
    path = save_before_after_grid(before, after, torch.linspace(0, 1, 8), after_scores, tmp_path / name / "grid.png")
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_before_after_grid_is_readable_and_prints_each_score_under_its_sample(tmp_path):
    scores = [0.5] * 8
    grid = _grid(tmp_path, "a", scores)
    assert grid.shape[1] >= 8 * 96 and grid.shape[0] >= 2 * 96
    # The 32 px magenta sample is shown at >= 96 x 96 pixels, upscaled without blurring.
    ys, xs = np.nonzero((grid == MAGENTA).all(-1))
    assert ys.max() - ys.min() + 1 >= 96 and xs.max() - xs.min() + 1 >= 96
    assert len(ys) == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # one solid block

    assert np.array_equal(_grid(tmp_path, "b", scores), grid)  # deterministic
    changed = _grid(tmp_path, "c", [0.5, 0.5, -12.25, 0.5, 0.5, 0.5, 0.5, 0.5])
    diff_ys, diff_xs = np.nonzero((changed != grid).any(-1))
    assert len(diff_ys) > 0  # the new score was drawn ...
    assert diff_ys.min() > ys.max() and diff_ys.max() < ys.max() + 40  # ... just under the magenta sample
    assert diff_xs.min() >= xs.min() and diff_xs.max() <= xs.max()
    unscored = _grid(tmp_path, "d", None)  # e.g. a run without a reward: nothing printed under the row
    assert (unscored[ys.max() + 1: ys.max() + 40, xs.min(): xs.max() + 1] == 255).all()
