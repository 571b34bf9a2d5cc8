"""Discrete domains that train on CPU, each a stream of (token sequence, class label) batches for
`genrl pretrain` (the same `sample(rng, device)` / `describe()` interface as the image and policy data).

- Token Shapes: single-object Shapes scenes (genrl/shapes/) rendered at 2 * `grid` pixels, quantised
  per pixel to 8 tokens (0-2 the background's grey level: dark / mid / light; 3-7 the object's palette
  colour, for a pixel whose channel spread is large) and pooled over 2 x 2 blocks (the block's largest
  token: the object's colour wherever the object touches the block). The label is the object's position
  (9 classes: top left ... bottom right), which the clean classifier reads back from the grid.
- Markov sequences: sequences of `length` tokens over `vocab_size` values; class c draws each token
  from its own fixed, sparse transition matrix (seeded by `world_seed`), so a class is a "grammar"
  that is visible only in the statistics of consecutive tokens.
The label becomes the null class (index num_classes) with probability `condition_dropout`, which trains
the unconditional model of classifier-free guidance.
"""

from __future__ import annotations

import numpy as np
import torch

from genrl.shapes import generate_batch
from genrl.shapes.world import COLORS, POSITIONS

SHAPES_VOCAB = 8
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # tokens 3..7
_GREY_EDGES = (70.0, 115.0)  # mean value edges between the dark / mid / light background tokens
_SPREAD = 90.0  # channel max - min above this is an object pixel (backgrounds < ~20, palette > 180)


def quantise_shapes(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> (B, H*W) tokens in [0, 8)."""
    pixels = ((images.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).reshape(len(images), -1, 3)
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    grey = np.digitize(pixels.mean(axis=2), _GREY_EDGES)
    colour = 3 + np.linalg.norm(pixels[:, :, None] - _PALETTE[None, None], axis=3).argmin(axis=2)
    return torch.from_numpy(np.where(spread > _SPREAD, colour, grey)).long()


def token_picture(tokens: torch.Tensor, grid: int) -> np.ndarray:
    """(B, grid*grid) tokens -> uint8 (B, grid, grid, 3) pictures (the background grey levels, the palette)."""
    greys = np.array([[45, 45, 45], [92, 92, 92], [150, 150, 150]], dtype=np.uint8)
    table = np.concatenate([greys, _PALETTE.astype(np.uint8)])
    return table[tokens.reshape(-1, grid, grid).numpy()]


class LabelledTokens:
    """A domain: `clean(rng, count)` gives (tokens, labels); `sample` adds the condition dropout."""

    batch_size: int
    condition_dropout: float
    num_classes: int

    def sample(self, rng: np.random.Generator, device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens, labels = self.clean(rng, self.batch_size)
        dropped = torch.from_numpy(rng.random(len(labels)) < self.condition_dropout)
        labels = torch.where(dropped, torch.full_like(labels, self.num_classes), labels)
        return tokens.to(device), {"class_labels": labels.to(device)}


class TokenShapesBatches(LabelledTokens):
    num_classes = len(POSITIONS)
    vocab_size = SHAPES_VOCAB

    def __init__(self, grid: int, batch_size: int, condition_dropout: float):
        self.grid, self.batch_size, self.condition_dropout = grid, batch_size, condition_dropout
        self.shape = (grid * grid,)

    def clean(self, rng: np.random.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, _, scenes = generate_batch(rng, count, (1, 1), 2 * self.grid)
        labels = torch.tensor([POSITIONS.index(scene.objects[0].position) for scene in scenes])
        pixels = quantise_shapes(images).reshape(count, self.grid, 2, self.grid, 2)
        return pixels.amax(dim=(2, 4)).reshape(count, -1), labels

    def describe(self) -> dict:
        return {"domain": "token_shapes", "grid": self.grid, "vocab_size": self.vocab_size, "num_classes": self.num_classes}


class MarkovSequenceBatches(LabelledTokens):
    def __init__(self, length: int, vocab_size: int, num_classes: int, world_seed: int, batch_size: int,
                 condition_dropout: float):
        self.length, self.vocab_size, self.num_classes = length, vocab_size, num_classes
        self.batch_size, self.condition_dropout = batch_size, condition_dropout
        self.shape = (length,)
        world = np.random.default_rng(world_seed)
        # each row puts its mass on 3 of the V next tokens: a class is a sparse "grammar"
        self.transitions = np.zeros((num_classes, vocab_size, vocab_size))
        for c in range(num_classes):
            for v in range(vocab_size):
                self.transitions[c, v, world.choice(vocab_size, 3, replace=False)] = world.dirichlet([1.0, 1.0, 1.0])

    def clean(self, rng: np.random.Generator, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = rng.integers(self.num_classes, size=count)
        tokens = np.zeros((count, self.length), dtype=np.int64)
        tokens[:, 0] = rng.integers(self.vocab_size, size=count)
        for position in range(1, self.length):
            rows = self.transitions[labels, tokens[:, position - 1]]  # (count, V)
            tokens[:, position] = (rows.cumsum(axis=1) > rng.random((count, 1))).argmax(axis=1)
        return torch.from_numpy(tokens), torch.from_numpy(labels)

    def describe(self) -> dict:
        return {"domain": "markov_sequences", "length": self.length, "vocab_size": self.vocab_size, "num_classes": self.num_classes}
