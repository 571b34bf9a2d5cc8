"""`genrl eval`: sample a model on prompts and write the mean of each reward to metrics.jsonl."""

from __future__ import annotations

import json

import numpy as np

from genrl.config import EvalConfig
from genrl.evaluate import make_prompts, sample_images, score_images
from genrl.models.loading import load_model
from genrl.run_dir import MetricsLog, prepare_output_dir, save_grid
from rewards import get_reward


def evaluate_command(config: EvalConfig) -> dict:
    for name in config.rewards:
        get_reward(name)
    model = load_model(config.model.path).eval()
    output_dir = prepare_output_dir(config)
    prompts = make_prompts(config.prompts, np.random.default_rng(config.seed), config.num_samples)
    images = sample_images(model, prompts, config.sampler, seed=config.seed, batch_size=config.batch_size, progress=True)
    save_grid(images[:64], output_dir / "samples" / "eval.png", nrow=8)
    summary = {"num_samples": len(prompts), **score_images(images, prompts, config.rewards)}
    MetricsLog(output_dir / "metrics.jsonl").write({"step": 0, **summary})
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
