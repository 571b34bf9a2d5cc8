"""Control fidelity of a UFC adapter (or of the base model alone) on one spatial condition type.

`num_conditions` conditions of fresh Shapes scenes (seeded by `seed`) are sampled with the empty prompt;
the support set is the first `shots` examples of the few-shot pool (`pool_seed`, as the few-shot training
drew it); fidelity is the IoU between each requested condition and the one rebuilt from its sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genrl.guidance.spatial_conditions import condition_iou, scene_examples
from genrl.guidance.ufc import sample_controlled
from genrl.samplers import build_sampler


def evaluate_control(model, adapter, task: str, sampler_config, num_conditions: int, shots: int, pool_size: int, pool_seed: int,
                     seed: int, output_dir: Path | None = None) -> dict:
    sampler = build_sampler(sampler_config, model)
    size = model.network.config.sample_size
    pool_images, pool_conditions = scene_examples(np.random.default_rng([pool_seed, 0]), pool_size, task, size)
    _, conditions = scene_examples(np.random.default_rng(50_000 + seed), num_conditions, task, size)
    images = sample_controlled(model, adapter, task, conditions, pool_conditions[:shots], pool_images[:shots], sampler,
                               torch.Generator().manual_seed(seed))
    ious = np.array([condition_iou(task, c[0].numpy(), image) for c, image in zip(conditions, images)])
    if output_dir is not None:  # conditions above their samples, 8 per row
        from genrl.run_dir import save_grid

        count = min(8, num_conditions)
        shown = torch.cat([conditions[:count].expand(-1, 3, -1, -1) * 2 - 1, images[:count].clamp(-1, 1)])
        save_grid(shown, Path(output_dir) / "samples" / "control.png", nrow=count)
    return {"task": task, "num_conditions": num_conditions, "iou_mean": float(ious.mean()),
            "iou_stderr": float(ious.std(ddof=1) / np.sqrt(len(ious))) if len(ious) > 1 else 0.0}
