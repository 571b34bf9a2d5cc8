import numpy as np
import pytest
import torch

from genrl.errors import ConfigError, RewardError
from genrl.shapes import generate_batch
from rewards import REWARDS, RewardOutput, compute_reward, get_reward


def test_jpeg_rewards_prefer_flat_over_noisy_images():
    flat = torch.zeros(2, 3, 32, 32)
    noisy = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images = torch.cat([flat, noisy])
    prompts = [""] * 4
    compressibility = compute_reward("jpeg_compressibility", images, prompts)
    incompressibility = compute_reward("jpeg_incompressibility", images, prompts)
    assert compressibility.scores[:2].min() > compressibility.scores[2:].max()
    assert torch.equal(compressibility.scores, -incompressibility.scores)
    assert torch.allclose(compressibility.info["jpeg_kb"], incompressibility.scores)


def test_alignment_reward_is_one_on_the_worlds_own_images():
    images, captions, _ = generate_batch(np.random.default_rng(0), 16, num_objects=(1, 3))
    output = compute_reward("shapes_alignment", images, captions)
    assert output.scores.min() == 1.0 and output.info["prompt_match"].min() == 1.0
    shuffled = captions[1:] + captions[:1]
    assert compute_reward("shapes_prompt_match", images, shuffled).scores.mean() < 0.5


def test_unknown_reward_is_a_config_error():
    with pytest.raises(ConfigError, match="no_such_reward"):
        get_reward("no_such_reward")


@pytest.mark.parametrize(
    "bad,message",
    [(lambda n: RewardOutput(scores=torch.full((n,), float("nan"))), "non-finite"),
     (lambda n: RewardOutput(scores=torch.zeros(n + 1)), "shape"),
     (lambda n: {"scores": torch.zeros(n)}, "expected RewardOutput"),
     (lambda n: torch.zeros(n, 1), "shape")],
)
def test_misbehaving_reward_raises_naming_it(monkeypatch, bad, message):
    monkeypatch.setitem(REWARDS, "broken", lambda images, prompts: bad(images.shape[0]))
    with pytest.raises(RewardError, match=rf"'broken'.*{message}|{message}.*'broken'"):
        compute_reward("broken", torch.zeros(3, 3, 8, 8), [""] * 3)
