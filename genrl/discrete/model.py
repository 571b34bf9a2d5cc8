"""The networks of discrete diffusion and its classifier, and the model directory they are saved in.

`TokenTransformer`: a bidirectional transformer over a token sequence. Token embeddings (from ids, or
from a one-hot / probability tensor through the same embedding matrix, so a classifier can be
differentiated with respect to its input for first-order D-CBG), learned positions, and a time
embedding plus an optional class embedding (num_classes + 1 rows: the last is the null class of
classifier-free guidance) added to every position. Output: logits per position (a denoiser) or,
mean-pooled, class logits (a classifier). It returns a diffusers-style output with `.sample`.

`DiscreteModel` is the saved unit (`model_index.json` says which): kind "mdlm" or "udlm" (a denoiser,
with `noise`) or "classifier" (trained on noisy tokens, or on clean ones for evaluation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from genrl.errors import CheckpointError

MODEL_INDEX = "model_index.json"


@dataclass
class TokenOutput:
    sample: torch.Tensor  # (B, L, K) token logits or (B, C) class logits


def _time_features(t: torch.Tensor, width: int) -> torch.Tensor:
    frequencies = torch.exp(-math.log(1000.0) * torch.arange(width // 2, device=t.device) / (width // 2))
    angles = 1000.0 * t.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TokenTransformer(torch.nn.Module):
    def __init__(self, num_tokens: int, length: int, out_dim: int, num_classes: int = 0, hidden: int = 128, layers: int = 4,
                 heads: int = 4, pool: bool = False):
        super().__init__()
        self.config = dict(num_tokens=num_tokens, length=length, out_dim=out_dim, num_classes=num_classes, hidden=hidden,
                           layers=layers, heads=heads, pool=pool)
        self.embed = torch.nn.Embedding(num_tokens, hidden)
        # Positions start at the token embeddings' scale (N(0, 1) rows). At 0.02 x that scale the network was
        # nearly blind to position: UDLM on Shapes token grids sat on a loss plateau (0.66 nats per token after
        # 2500 steps, every prediction the grid's majority grey); at this scale it leaves it by step ~750.
        self.position = torch.nn.Parameter(torch.randn(length, hidden))
        self.time = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden))
        self.classes = torch.nn.Embedding(num_classes + 1, hidden) if num_classes else None
        layer = torch.nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(hidden)
        self.out = torch.nn.Linear(hidden, out_dim)
        self.pool = pool

    def forward(self, tokens: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> TokenOutput:
        """`tokens`: (B, L) ids or (B, L, K) one-hot/probabilities; `t`: (B,) times in [0, 1]."""
        h = tokens.to(self.embed.weight.dtype) @ self.embed.weight if tokens.is_floating_point() else self.embed(tokens)
        extra = self.time(_time_features(t, h.shape[-1]))
        if self.classes is not None:
            if class_labels is None:
                raise ValueError("this network is class-conditional: pass class_labels (num_classes = the null class)")
            extra = extra + self.classes(class_labels)
        h = self.norm(self.encoder(h + self.position + extra[:, None]))
        return TokenOutput(self.out(h.mean(dim=1)) if self.pool else self.out(h))


class DiscreteModel(torch.nn.Module):
    """kind: "mdlm" (masking noise; tokens are the V values plus the mask, index V), "udlm" (uniform noise,
    V tokens) or "classifier" (`noisy`: trained on noisy tokens of the MDLM or UDLM process named by
    `noise`, else on clean ones)."""

    def __init__(self, network: TokenTransformer, kind: str, vocab_size: int, num_classes: int, shape: tuple[int, ...],
                 noise: str | None = None, domain: dict | None = None):
        super().__init__()
        self.network, self.kind, self.vocab_size, self.num_classes = network, kind, vocab_size, num_classes
        self.shape, self.noise, self.domain = tuple(shape), noise, dict(domain or {})

    @property
    def mask_index(self) -> int | None:
        return self.vocab_size if (self.kind == "mdlm" or self.noise == "mdlm") else None

    @property
    def num_tokens(self) -> int:
        return self.vocab_size + (1 if self.mask_index is not None else 0)

    def forward(self, tokens, t, class_labels=None) -> torch.Tensor:
        return self.network(tokens, t, class_labels).sample

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}, directory / "network.safetensors")
        config = {"kind": self.kind, "vocab_size": self.vocab_size, "num_classes": self.num_classes, "shape": list(self.shape),
                  "noise": self.noise, "domain": self.domain, "network": self.network.config}
        (directory / "discrete_config.json").write_text(json.dumps(config, indent=1))
        (directory / MODEL_INDEX).write_text(json.dumps({"_class_name": "DiscreteModel"}, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "DiscreteModel":
        directory = Path(directory)
        for part in (MODEL_INDEX, "discrete_config.json", "network.safetensors"):
            if not (directory / part).is_file():
                raise CheckpointError(f"discrete model directory {directory} is missing {part}")
        config = json.loads((directory / "discrete_config.json").read_text())
        network = TokenTransformer(**config["network"])
        try:
            network.load_state_dict(load_file(directory / "network.safetensors"))
        except RuntimeError as error:
            raise CheckpointError(f"could not load {directory}: {str(error).splitlines()[0]}") from None
        return cls(network, config["kind"], config["vocab_size"], config["num_classes"], config["shape"], config["noise"],
                   config["domain"]).eval()
