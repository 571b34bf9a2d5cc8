"""Ancestral sampling of MDLM / UDLM models on a uniform time grid 1 = t_0 > ... > t_N = 0, with
optional guidance (genrl/guidance/discrete.py):

- guidance "cfg": the class-conditional and the null-class predictions, mixed with scale gamma
  (MDLM: x0 log-probs; UDLM: reverse-step log-posteriors). gamma 0 samples the unconditional model.
- guidance "cbg": the unconditional model's reverse step reweighted by a noisy-token classifier,
  exactly (L x K classifier rows per sample) or to first order (one gradient). gamma 0 is unguided.
Without guidance the model samples its conditional distribution for the given labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from genrl.discrete.mdlm import mdlm_posterior, subs_log_probs
from genrl.discrete.udlm import udlm_posterior
from genrl.errors import ConfigError
from genrl.guidance.discrete import (cbg_posterior, cbg_scores_exact, cbg_scores_first_order, cfg_posterior,
                                     cfg_x0_log_probs, check_gamma)


@dataclass
class DiscreteGuidance:
    kind: str = "cfg"  # cfg | cbg
    gamma: float = 1.0
    classifier: torch.nn.Module | None = None  # cbg: a classifier trained on this model's noisy tokens
    first_order: bool = True  # cbg: the one-gradient approximation instead of exact enumeration


def check_guidance(model, guidance: DiscreteGuidance | None) -> None:
    if guidance is None:
        return
    check_gamma(guidance.gamma)
    if guidance.kind not in ("cfg", "cbg"):
        raise ConfigError(f"discrete guidance kind must be cfg or cbg, got {guidance.kind!r}")
    if guidance.kind == "cbg":
        classifier = guidance.classifier
        if classifier is None or getattr(classifier, "kind", None) != "classifier":
            raise ConfigError("cbg guidance needs a classifier model (kind 'classifier', trained by genrl pretrain)")
        if classifier.num_classes != model.num_classes or classifier.vocab_size != model.vocab_size:
            raise ConfigError(f"the classifier was trained for {classifier.num_classes} classes over {classifier.vocab_size} "
                              f"values, the model has {model.num_classes} classes over {model.vocab_size}")
        if classifier.noise != model.kind:
            raise ConfigError(f"the classifier was trained on {classifier.noise or 'clean'} tokens, the model is {model.kind}: "
                              "D-CBG needs a classifier of the model's own noisy tokens")


def _reverse_step(model, x, t, s, labels) -> torch.Tensor:
    logits = model(x, t, labels).float()
    if model.kind == "mdlm":
        return subs_log_probs(logits, x, model.mask_index), None
    return None, udlm_posterior(logits.softmax(-1), x, t, s)


@torch.no_grad()
def sample_tokens(model, labels: torch.Tensor, num_steps: int, generator: torch.Generator | None = None,
                  guidance: DiscreteGuidance | None = None) -> torch.Tensor:
    """(B, L) sampled tokens for class `labels` (B,)."""
    check_guidance(model, guidance)
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
    batch, length = len(labels), model.shape[0] if len(model.shape) == 1 else int(torch.tensor(model.shape).prod())
    device = labels.device
    if model.kind == "mdlm":
        x = torch.full((batch, length), model.mask_index, device=device)
    else:
        x = torch.randint(0, model.vocab_size, (batch, length), generator=generator, device=device)
    null = torch.full_like(labels, model.num_classes)
    grid = torch.linspace(1.0, 0.0, num_steps + 1, device=device)
    for i in range(num_steps):
        t, s = grid[i].expand(batch), grid[i + 1].expand(batch)
        mode = guidance.kind if guidance is not None else None
        log_x0, posterior = _reverse_step(model, x, t, s, null if mode == "cbg" else labels)
        if mode == "cfg":
            log_x0_null, posterior_null = _reverse_step(model, x, t, s, null)
            if model.kind == "mdlm":
                log_x0 = cfg_x0_log_probs(log_x0, log_x0_null, guidance.gamma)
            else:
                posterior = cfg_posterior(posterior, posterior_null, guidance.gamma)
        if model.kind == "mdlm":
            posterior = mdlm_posterior(log_x0.exp(), x, t, s, model.mask_index)
        if mode == "cbg" and guidance.gamma > 0:
            score = cbg_scores_first_order if guidance.first_order else cbg_scores_exact
            scores = score(guidance.classifier, x, t, labels, model.num_tokens)
            posterior = cbg_posterior(posterior, scores, guidance.gamma, x, model.mask_index)
        flat = posterior.reshape(-1, posterior.shape[-1]).clamp(min=0)
        x = torch.multinomial(flat, 1, generator=generator).reshape(batch, length)
    return x


@torch.no_grad()
def classify(classifier, tokens: torch.Tensor) -> torch.Tensor:
    """(B,) predicted classes of clean tokens."""
    t = torch.zeros(len(tokens), device=tokens.device)
    return classifier(F.one_hot(tokens, classifier.num_tokens).float(), t).argmax(dim=-1)
