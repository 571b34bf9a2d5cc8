"""`genrl pretrain CONFIG`: train a base model from scratch (the Shapes image models, or a Diffusion
Policy by behaviour cloning on demonstrations); the loop is genrl/pretraining/loop.py."""

from __future__ import annotations

from genrl.config import PretrainConfig
from genrl.pretraining import pretrain


def run(config: PretrainConfig) -> dict:
    return pretrain(config)
