"""A condition is a (possibly nested) dict of batch-first tensors passed to the network as
keyword arguments: `encoder_hidden_states`, `class_labels`, `pooled_projections`, or SDXL's
`added_cond_kwargs={"text_embeds": ..., "time_ids": ...}`. These helpers treat one uniformly."""

from __future__ import annotations

from typing import Callable

import torch

Condition = dict


def map_condition(fn: Callable[[torch.Tensor], torch.Tensor], condition: Condition | None) -> Condition | None:
    if condition is None:
        return None
    return {k: map_condition(fn, v) if isinstance(v, dict) else fn(v) for k, v in condition.items()}


def cat_conditions(conditions: list[Condition]) -> Condition:
    first = conditions[0]
    return {
        k: cat_conditions([c[k] for c in conditions]) if isinstance(v, dict) else torch.cat([c[k] for c in conditions])
        for k, v in first.items()
    }


def condition_batch_sizes(condition: Condition, prefix: str = "") -> dict[str, int]:
    sizes = {}
    for k, v in condition.items():
        if isinstance(v, dict):
            sizes.update(condition_batch_sizes(v, f"{prefix}{k}."))
        else:
            sizes[prefix + k] = v.shape[0]
    return sizes
