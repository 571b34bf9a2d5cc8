"""A small word-level text encoder for prompt-conditioned models.

It plays the role CLIP's text tower plays in Stable Diffusion: prompts become a
sequence of embeddings that the denoiser reads through cross-attention. The
vocabulary is closed (the Shapes world's caption grammar), so a word tokenizer is
exact and an unknown word is an error rather than a silent <unk>.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from genrl.errors import ConfigError

PAD_TOKEN = "<pad>"


class PreTrainedTokenizer:
    """What diffusers' pipeline loader needs to load WordTokenizer as a pipeline component.

    For a component declared as ["genrl.models.text_encoder", "WordTokenizer"] in
    model_index.json, `DiffusionPipeline.from_pretrained` picks the load method by looking up
    the base-class names it knows (ModelMixin, SchedulerMixin, PreTrainedTokenizer, ...) in
    this module and taking `from_pretrained` of one the class derives from. This is not
    transformers' tokenizer: only the name is shared.
    """


class WordTokenizer(PreTrainedTokenizer):
    """Splits on whitespace and maps words to ids; id 0 is padding (and the empty prompt)."""

    def __init__(self, vocabulary: list[str], max_length: int):
        self.words = [PAD_TOKEN] + [w for w in vocabulary if w != PAD_TOKEN]
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.max_length = max_length

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        batch = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt.lower().replace(",", " ").split()
            if len(words) > self.max_length:
                raise ConfigError(
                    f"prompt {prompt!r} has {len(words)} words; this tokenizer takes at most {self.max_length}"
                )
            for col, word in enumerate(words):
                if word not in self.ids:
                    raise ConfigError(f"prompt {prompt!r}: word {word!r} is not in the model's vocabulary")
                batch[row, col] = self.ids[word]
        return batch

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"words": self.words, "max_length": self.max_length}
        (directory / "vocab.json").write_text(json.dumps(payload, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path, **loading_kwargs) -> "WordTokenizer":
        """`loading_kwargs` (dtype, device map, ... from diffusers' pipeline loader) do not apply."""
        path = Path(directory) / "vocab.json"
        if not path.is_file():
            from genrl.errors import CheckpointError

            raise CheckpointError(f"tokenizer file {path} is missing")
        payload = json.loads(path.read_text())
        return cls(payload["words"], payload["max_length"])


class PromptEncoder(ModelMixin, ConfigMixin):
    """Token ids -> (B, L, hidden) embeddings through a few transformer layers."""

    @register_to_config
    def __init__(self, vocab_size: int, max_length: int = 24, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, max_length, hidden_size))
        nn.init.normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, dim_feedforward=4 * hidden_size, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.token_embedding(input_ids) + self.position_embedding[:, : input_ids.shape[1]]
        return self.final_norm(self.encoder(hidden))
