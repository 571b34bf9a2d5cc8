"""Tests for the Shapes world generator and its analytic reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from genrl.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    VOCABULARY,
    Background,
    Scene,
    ShapeObject,
    generate_batch,
    object_recall,
    parse_caption,
    prompt_match,
    random_prompts,
    random_scene,
    read_objects,
    render,
)
from genrl.shapes.world import BACKGROUND_KINDS, random_background


def test_same_seed_gives_same_batch_and_different_seed_differs() -> None:
    images_a, captions_a, scenes_a = generate_batch(np.random.default_rng(7), 8)
    images_b, captions_b, _ = generate_batch(np.random.default_rng(7), 8)
    images_c, captions_c, _ = generate_batch(np.random.default_rng(8), 8)
    assert torch.equal(images_a, images_b) and captions_a == captions_b
    assert not torch.equal(images_a, images_c)
    assert images_a.shape == (8, 3, 32, 32) and images_a.dtype == torch.float32
    # [-1, 1] is the rendered uint8 image, 0 -> -1 and 255 -> 1.
    rendered = torch.from_numpy(np.stack([render(scene)[0] for scene in scenes_a])).permute(0, 3, 1, 2).float()
    torch.testing.assert_close((images_a + 1) * 127.5, rendered, atol=1e-4, rtol=0)


def test_captions_round_trip_through_parse_caption() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = random_scene(rng, (1, 3))
        ordered = sorted(scene.objects, key=lambda obj: POSITIONS.index(obj.position))
        assert parse_caption(scene.caption) == [(o.color, o.shape, o.position) for o in ordered]
        assert set(scene.caption.split()) <= set(VOCABULARY)


def test_caption_is_canonical_whatever_the_object_order() -> None:
    background = Background("plain", {"color": [60.0, 60.0, 60.0]})
    blue = ShapeObject("blue", "square", "center", (16.0, 16.0), 4.0)
    red = ShapeObject("red", "circle", "top left", (6.0, 6.0), 4.0)
    expected = "a red circle at the top left and a blue square at the center"
    assert Scene([blue, red], background).caption == expected
    assert Scene([red, blue], background).caption == expected


def test_parse_caption_handles_one_and_two_word_positions() -> None:
    assert parse_caption("a green triangle at the top and a yellow circle at the bottom right") == [
        ("green", "triangle", "top"),
        ("yellow", "circle", "bottom right"),
    ]
    assert parse_caption("a magenta square at the center") == [("magenta", "square", "center")]


@pytest.mark.parametrize(
    ("caption", "bad_word"),
    [
        ("a purple circle at the top", "purple"),
        ("a red hexagon at the top", "hexagon"),
        ("a red circle at the middle", "middle"),
        ("a red circle on the top", "on"),
        ("a red circle at the top or a blue square at the left", "or"),
        ("the red circle at the top", "the"),
    ],
)
def test_parse_caption_rejects_words_outside_the_grammar(caption: str, bad_word: str) -> None:
    with pytest.raises(ValueError, match=repr(bad_word)):
        parse_caption(caption)


@pytest.mark.parametrize("caption", ["", "a red circle", "a red circle at the top and"])
def test_parse_caption_rejects_incomplete_captions(caption: str) -> None:
    with pytest.raises(ValueError):
        parse_caption(caption)


def test_masks_match_drawn_pixels() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        scene = random_scene(rng, (1, 3))
        image, masks = render(scene)
        assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
        assert masks.shape == (len(scene.objects), 32, 32) and masks.dtype == bool
        for obj, mask in zip(scene.objects, masks):
            assert mask.sum() > 20
            assert (image[mask] == COLORS[obj.color]).all()
        # Outside every mask there is only background, never a palette colour.
        background = image[~masks.any(axis=0)]
        for rgb in COLORS.values():
            assert not (background == rgb).all(axis=-1).any()


def test_objects_sit_in_distinct_cells_and_do_not_touch() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        scene = random_scene(rng, 3)
        assert len({obj.position for obj in scene.objects}) == 3
        _, masks = render(scene)
        assert masks.sum(axis=0).max() == 1
        # Not even diagonally adjacent: otherwise two same-coloured shapes would read as one blob.
        for i in range(len(masks)):
            grown = ndimage.binary_dilation(masks[i], np.ones((3, 3), dtype=bool))
            others = np.delete(masks, i, axis=0).any(axis=0)
            assert not (grown & others).any()


def test_objects_stay_near_their_cell_centre_and_inside_the_image() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        for obj in random_scene(rng, (1, 3)).objects:
            row, col = divmod(POSITIONS.index(obj.position), 3)
            assert abs(obj.center[0] - (6 + 10 * col)) <= 1.5 + 1e-9
            assert abs(obj.center[1] - (6 + 10 * row)) <= 1.5 + 1e-9
            assert 3.5 <= obj.size <= 5.0
            assert obj.shape in SHAPES and obj.color in COLORS


def test_num_objects_accepts_int_and_range() -> None:
    rng = np.random.default_rng(4)
    assert all(len(random_scene(rng, 2).objects) == 2 for _ in range(20))
    counts = {len(random_scene(rng, (1, 3)).objects) for _ in range(100)}
    assert counts == {1, 2, 3}
    prompts = random_prompts(rng, 5, num_objects=1)
    assert len(prompts) == 5 and all(len(parse_caption(p)) == 1 for p in prompts)


def test_reader_is_accurate_on_clean_scenes() -> None:
    rng = np.random.default_rng(5)
    scenes = [random_scene(rng, (1, 3)) for _ in range(500)]
    accuracy = np.mean([prompt_match(render(scene)[0], scene.caption) for scene in scenes])
    print(f"reader prompt_match accuracy on 500 clean scenes: {accuracy:.3f}")
    assert accuracy >= 0.98


def test_reader_tolerates_gaussian_noise_on_tensor_images() -> None:
    images, captions, _ = generate_batch(np.random.default_rng(6), 200)
    noisy = images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    accuracy = np.mean([prompt_match(image, caption) for image, caption in zip(noisy, captions)])
    print(f"reader prompt_match accuracy on 200 noisy scenes (std 0.05): {accuracy:.3f}")
    assert accuracy >= 0.9


def test_reader_works_at_other_resolutions() -> None:
    rng = np.random.default_rng(9)
    scenes = [random_scene(rng, (1, 3), image_size=64) for _ in range(50)]
    assert np.mean([prompt_match(render(scene)[0], scene.caption) for scene in scenes]) >= 0.98


@pytest.mark.parametrize("kind", BACKGROUND_KINDS)
def test_backgrounds_alone_read_as_no_objects(kind: str) -> None:
    rng = np.random.default_rng(10)
    seen = 0
    while seen < 20:
        background = random_background(rng)
        if background.kind != kind:
            continue
        seen += 1
        image, _ = render(Scene([], background))
        assert read_objects(image) == []
        noisy = np.clip(image + rng.normal(0, 6.4, image.shape), 0, 255).astype(np.uint8)
        assert read_objects(noisy) == []


def test_object_recall_counts_found_objects_and_ignores_extras() -> None:
    background = Background("plain", {"color": [50.0, 50.0, 50.0]})
    scene = Scene(
        [
            ShapeObject("red", "circle", "top left", (6.0, 6.0), 4.5),
            ShapeObject("blue", "square", "center", (16.0, 16.0), 4.5),
        ],
        background,
    )
    image, _ = render(scene)
    assert object_recall(image, scene.caption) == 1.0
    assert object_recall(image, "a red circle at the top left") == 1.0  # the blue square is an extra
    assert not prompt_match(image, "a red circle at the top left")
    assert object_recall(image, "a red circle at the top left and a green square at the center") == 0.5
    assert object_recall(image, "a red square at the bottom") == 0.0
