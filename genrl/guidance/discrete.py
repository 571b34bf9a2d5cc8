"""Guidance for discrete diffusion (Schiff et al., "Simple Guidance Mechanisms for Discrete Diffusion
Models"), on the reverse steps of genrl/discrete/ (MDLM: masking noise, UDLM: uniform noise).

D-CFG (classifier-free; the model was trained with the condition dropped to a null class):
- MDLM: mix the x0 log-probs, gamma * log p(x0 | c) + (1 - gamma) * log p(x0 | null), renormalise, then
  take the MDLM posterior (the schedule still decides how many tokens unmask).
- UDLM: mix the reverse-step log-posteriors the same way and renormalise.
gamma = 0 is the unconditional model, 1 the conditional one, > 1 sharper toward c.

D-CBG (classifier-based): a classifier p(y | x_t, t) trained on noisy tokens reweights each token's
reverse step: log p_gamma(x_s^l = v) = log p(x_s^l = v | x_t) + gamma * log p(y | x_t with token l set
to v), renormalised over v per token.
- exact: the classifier is called on every single-token change, L x K sequences per input.
- first order: one forward and backward pass; log p(y | x_t with l := v) ~ log p(y | x_t) +
  g[l, v] - g[l, x_t^l], g the gradient of log p(y | .) with respect to the one-hot input.
For MDLM only masked tokens are guided (an unmasked token never changes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from genrl.errors import ConfigError

# classifier(one-hot tokens (B, L, K) float, t (B,)) -> class logits (B, C)
Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_gamma(gamma: float) -> float:
    if not (gamma >= 0):  # also NaN
        raise ConfigError(f"guidance scale gamma must be a number >= 0, got {gamma}")
    return float(gamma)


def _mix(conditional: torch.Tensor, unconditional: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma * a + (1 - gamma) * b on log-probabilities; impossible entries (-inf in both) stay -inf."""
    impossible = torch.isinf(conditional) & torch.isinf(unconditional)
    mixed = gamma * conditional.masked_fill(impossible, 0.0) + (1 - gamma) * unconditional.masked_fill(impossible, 0.0)
    return mixed.masked_fill(impossible, float("-inf")).log_softmax(dim=-1)


def cfg_x0_log_probs(conditional: torch.Tensor, unconditional: torch.Tensor, gamma: float) -> torch.Tensor:
    """MDLM's D-CFG: the mixed, renormalised x0 log-probs (B, L, K) to take the posterior of."""
    return _mix(conditional, unconditional, check_gamma(gamma))


def cfg_posterior(conditional: torch.Tensor, unconditional: torch.Tensor, gamma: float) -> torch.Tensor:
    """UDLM's D-CFG: the mixed, renormalised reverse-step probabilities (B, L, K) from the two posteriors."""
    return _mix(conditional.log(), unconditional.log(), check_gamma(gamma)).exp()


def _class_log_prob(classifier: Classifier, one_hot: torch.Tensor, t: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return classifier(one_hot, t).log_softmax(dim=-1).gather(-1, label.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def cbg_scores_exact(classifier: Classifier, x_t: torch.Tensor, t: torch.Tensor, label: torch.Tensor, num_tokens: int,
                     chunk: int = 4096) -> torch.Tensor:
    """(B, L, K) log p(y | x_t with token l set to v) for every position l and token v: L*K classifier rows per input."""
    batch, length = x_t.shape
    variants = x_t[:, None, None, :].repeat(1, length, num_tokens, 1)  # (B, L, K, L): row (l, v) has token l := v
    positions = torch.arange(length, device=x_t.device)
    variants[:, positions, :, positions] = torch.arange(num_tokens, device=x_t.device).expand(batch, length, num_tokens).permute(1, 0, 2)
    flat = variants.reshape(-1, length)
    times = t.repeat_interleave(length * num_tokens)
    labels = label.repeat_interleave(length * num_tokens)
    scores = [_class_log_prob(classifier, torch.nn.functional.one_hot(flat[i : i + chunk], num_tokens).float(),
                              times[i : i + chunk], labels[i : i + chunk]) for i in range(0, len(flat), chunk)]
    return torch.cat(scores).reshape(batch, length, num_tokens)


def cbg_scores_first_order(classifier: Classifier, x_t: torch.Tensor, t: torch.Tensor, label: torch.Tensor,
                           num_tokens: int) -> torch.Tensor:
    """(B, L, K) first-order estimate of the same scores, from one gradient with respect to the one-hot input."""
    with torch.enable_grad():
        one_hot = torch.nn.functional.one_hot(x_t, num_tokens).float().requires_grad_(True)
        log_prob = _class_log_prob(classifier, one_hot, t, label)
        (gradient,) = torch.autograd.grad(log_prob.sum(), one_hot)
    current = gradient.gather(-1, x_t.unsqueeze(-1))
    return (log_prob.detach()[:, None, None] + gradient - current).detach()


def cbg_posterior(posterior: torch.Tensor, scores: torch.Tensor, gamma: float, x_t: torch.Tensor,
                  mask_index: int | None = None) -> torch.Tensor:
    """Guided reverse-step probabilities (B, L, K): posterior * exp(gamma * scores), renormalised per token;
    with `mask_index` (MDLM), tokens of x_t that are not masked keep their unguided (copy) step."""
    guided = (posterior.log() + check_gamma(gamma) * scores).log_softmax(dim=-1).exp()
    if mask_index is None:
        return guided
    return torch.where((x_t == mask_index).unsqueeze(-1), guided, posterior)
