"""What a sampler returns: the whole denoising chain, ready to be re-scored for training."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from genrl.condition import cat_conditions, map_condition


@dataclass
class Trajectory:
    """A batch of denoising chains x_K -> ... -> x_0.

    states:          (B, K+1, *sample_shape)  states[:, k] is the input of step k, states[:, k+1] its output
    timesteps:       (K,)  grid point of step k (diffusion: integer timestep; flow: noise level sigma)
    prev_timesteps:  (K,)  grid point reached by step k (diffusion: -1 for the final step; flow: 0)
    log_probs:       (B, K)      log pi(states[:, k+1] | states[:, k]) when sampled, reduced by `log_prob_reduce`
    stds:            (K,)        std of each step's Gaussian (0 for deterministic steps)
    condition:       dict of tensors passed to the network (e.g. encoder_hidden_states), batch-first
    null_condition:  the unconditional counterpart when classifier-free guidance was used, else None
    guidance_scale:  the CFG scale used (must be reused when re-scoring)
    prompts:         the raw conditions (prompt strings, observation ids, ...), for rewards and logging
    score_mask:      None, or a 0/1 tensor broadcastable to one sample: the elements a log-prob scores
                     (action policies: the executed slice of the chunk); used alike when sampling and re-scoring
    """

    states: torch.Tensor
    timesteps: torch.Tensor
    prev_timesteps: torch.Tensor
    log_probs: torch.Tensor
    stds: torch.Tensor
    condition: dict[str, torch.Tensor]
    null_condition: dict[str, torch.Tensor] | None = None
    guidance_scale: float = 1.0
    log_prob_reduce: str = "mean"
    prompts: list = field(default_factory=list)
    score_mask: torch.Tensor | None = None

    @property
    def sample(self) -> torch.Tensor:
        """The final denoised sample x_0, (B, *sample_shape)."""
        return self.states[:, -1]

    @property
    def num_steps(self) -> int:
        return self.timesteps.shape[0]

    @property
    def batch_size(self) -> int:
        return self.states.shape[0]

    def stored_log_prob(self, rows: torch.Tensor, step_index: torch.Tensor, reduce: str) -> torch.Tensor:
        """The sampling-time log-prob of (row, step) pairs under reduction `reduce` ("mean" or "sum"):
        a Gaussian step's sum over its D elements is D times its mean."""
        stored = self.log_probs[rows, step_index]
        if reduce == self.log_prob_reduce:
            return stored
        elements = self.states[0, 0].numel() if self.score_mask is None else int(
            self.score_mask.expand_as(self.states[0, 0]).sum())
        if (self.log_prob_reduce, reduce) == ("mean", "sum"):
            return stored * elements
        if (self.log_prob_reduce, reduce) == ("sum", "mean"):
            return stored / elements
        raise ValueError(f"stored log-probs are reduced by {self.log_prob_reduce!r}; {reduce!r} cannot be recovered")

    def select(self, index: torch.Tensor | slice) -> "Trajectory":
        """Sub-batch of chains (same steps)."""
        pick = lambda d: map_condition(lambda v: v[index], d)  # noqa: E731
        prompts = [self.prompts[i] for i in torch.arange(self.batch_size)[index].tolist()] if self.prompts else []
        return Trajectory(
            states=self.states[index],
            timesteps=self.timesteps,
            prev_timesteps=self.prev_timesteps,
            log_probs=self.log_probs[index],
            stds=self.stds,
            condition=pick(self.condition),
            null_condition=pick(self.null_condition),
            guidance_scale=self.guidance_scale,
            log_prob_reduce=self.log_prob_reduce,
            prompts=prompts,
            score_mask=self.score_mask,
        )

    @staticmethod
    def concatenate(parts: list["Trajectory"]) -> "Trajectory":
        first = parts[0]
        return Trajectory(
            states=torch.cat([p.states for p in parts]),
            timesteps=first.timesteps,
            prev_timesteps=first.prev_timesteps,
            log_probs=torch.cat([p.log_probs for p in parts]),
            stds=first.stds,
            condition=cat_conditions([p.condition for p in parts]),
            null_condition=None if first.null_condition is None else cat_conditions([p.null_condition for p in parts]),
            guidance_scale=first.guidance_scale,
            log_prob_reduce=first.log_prob_reduce,
            prompts=[p for part in parts for p in part.prompts],
            score_mask=first.score_mask,
        )

    def repeat_each(self, times: int) -> "Trajectory":
        """Each chain repeated `times` times in a row (the children of a shared prefix)."""
        return self.select(torch.arange(self.batch_size).repeat_interleave(times))

    def followed_by(self, continuation: "Trajectory") -> "Trajectory":
        """This (partial) chain with `continuation`'s steps appended; `continuation` starts
        from this chain's last state and carries the conditions of the joined chain."""
        if not torch.equal(self.states[:, -1], continuation.states[:, 0]):
            raise ValueError("the continuation does not start where this chain ends")
        return Trajectory(
            states=torch.cat([self.states[:, :-1], continuation.states], dim=1),
            timesteps=torch.cat([self.timesteps, continuation.timesteps]),
            prev_timesteps=torch.cat([self.prev_timesteps, continuation.prev_timesteps]),
            log_probs=torch.cat([self.log_probs.to(continuation.log_probs.device), continuation.log_probs], dim=1),
            stds=torch.cat([self.stds, continuation.stds]),
            condition=continuation.condition,
            null_condition=continuation.null_condition,
            guidance_scale=continuation.guidance_scale,
            log_prob_reduce=continuation.log_prob_reduce,
            prompts=continuation.prompts,
            score_mask=continuation.score_mask,
        )
