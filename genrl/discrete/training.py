"""The losses `genrl pretrain` minimises for discrete models, in the (trained, clean, condition,
generator) form of the shared `fit` loop (genrl/pretraining/loop.py).

- MDLM / UDLM denoisers: t ~ U(T_MIN, 1), corrupt the clean tokens, and the per-token NELBO of
  genrl/discrete/mdlm.py or udlm.py (the batch's condition carries the class labels, some dropped to
  the null class by the data).
- Classifiers: cross-entropy of the class from tokens corrupted by the named process at t ~ U(0, 1)
  (noisy, for D-CBG) or from clean tokens (t = 0, the evaluation reader); they never see the null class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrl.discrete.mdlm import mdlm_loss, subs_log_probs
from genrl.discrete.noise import mask_tokens, uniform_tokens
from genrl.discrete.udlm import udlm_loss

T_MIN = 1e-3  # MDLM's weight 1/t is unbounded at 0


def corrupt(model, clean: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """x_t of the process the model belongs to (a classifier: the one named by its `noise`)."""
    process = model.kind if model.kind in ("mdlm", "udlm") else model.noise
    if process == "mdlm":
        return mask_tokens(clean, t, model.vocab_size, generator)
    if process == "udlm":
        return uniform_tokens(clean, t, model.vocab_size, generator)
    return clean


def denoiser_loss(model):
    def step_loss(trained, clean, condition, generator):
        t = T_MIN + (1 - T_MIN) * torch.rand(len(clean), generator=generator, device=clean.device)
        noisy = corrupt(model, clean, t, generator)
        logits = trained(noisy, t, condition).float()
        if model.kind == "mdlm":
            per_sequence = mdlm_loss(subs_log_probs(logits, noisy, model.mask_index), clean, noisy, t, model.mask_index)
        else:
            per_sequence = udlm_loss(logits.softmax(dim=-1), clean, noisy, t)
        return per_sequence.mean() / clean.shape[1]  # nats per token

    return step_loss


def classifier_loss(model):
    def step_loss(trained, clean, condition, generator):
        labels = condition["class_labels"]
        if model.noise is None:
            t = torch.zeros(len(clean), device=clean.device)
        else:
            t = torch.rand(len(clean), generator=generator, device=clean.device)
        noisy = corrupt(model, clean, t, generator)
        logits = trained(F.one_hot(noisy, model.num_tokens).float(), t, {}).float()
        return F.cross_entropy(logits, labels)

    return step_loss
