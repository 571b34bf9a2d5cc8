"""Pretraining from scratch: one loop (loop.py), its data sources (data.py) and random-init models (build.py)."""

from genrl.pretraining.build import build_model, build_policy, build_prompt_model
from genrl.pretraining.loop import noisy_input_and_target, pretrain

__all__ = ["build_model", "build_policy", "build_prompt_model", "noisy_input_and_target", "pretrain"]
