"""The loop shared by every sampler whose steps are Gaussian: x_prev ~ N(mean(x_t), std^2 I).

A concrete sampler supplies only its timestep grid and `step_distribution` (mean and std of
one step); this file runs the chain, records the Trajectory, and re-scores stored steps
under the current parameters. Keeping both paths in one place is what makes the on-policy
importance ratio exactly 1: sampling and re-scoring call the same function.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from genrl.condition import cat_conditions, condition_batch_sizes, map_condition
from genrl.errors import ConfigError
from genrl.denoiser import Denoiser, broadcast_to_batch
from genrl.log_prob import Reduction, gaussian_log_prob
from genrl.trajectory import Trajectory


class GaussianChainSampler:
    """Base class: subclasses define `step_pairs` and `step_distribution`.

    DPPO's stabilisers are attributes (off by default): `min_std` floors every step's std when
    sampling (the tiny-std final steps become stochastic, hence trainable); `min_logprob_std`
    floors the std a log-prob is *scored* with, without changing how samples are drawn: a step
    of std 0.02 scored as N(mean, 0.02^2) has a log-prob gradient ~1/std^2 that is nearly pure
    noise and swamps the other steps (DPPO's reference has both floors, 0.1 each by default).
    Stored and re-scored log-probs use the same scoring std, so on-policy ratios stay exactly 1.
    `noise_clip` clamps the standard-normal sampling noise. `logprob_clamp` (low, high) clamps each
    element's log-density before the reduction (DPPO's reference: -5, 2), at sampling and scoring alike.
    """

    #: pairs (t, t_prev) in sampling order: integer timesteps (t_prev = -1 for the last step)
    #: for diffusion, noise levels sigma (ending at 0) for flow models
    step_pairs: list[tuple]
    grid_dtype = torch.long
    min_std: float = 0.0
    min_logprob_std: float = 0.0
    noise_clip: float | None = None
    logprob_clamp: tuple[float, float] | None = None

    def network_timestep(self, denoiser, t: torch.Tensor) -> torch.Tensor:
        """The timestep value the network is called with at grid point t."""
        return t

    def step_distribution(
        self, denoiser: Denoiser, model_output: torch.Tensor, x_t: torch.Tensor, t: int, t_prev: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (same shape as x_t) and std (scalar tensor) of p(x_{t_prev} | x_t)."""
        raise NotImplementedError

    @property
    def num_steps(self) -> int:
        return len(self.step_pairs)

    def grid(self, device: torch.device | str | None = None) -> torch.Tensor:
        """`step_pairs` as a (K, 2) tensor on `device`, built once per device (and again only if
        `step_pairs` is changed), not at every step. Read-only: it is shared by every call."""
        device = torch.device(device or "cpu")
        pairs = tuple(tuple(pair) for pair in self.step_pairs)
        cache = self.__dict__.setdefault("_grid_cache", {})
        entry = cache.get(device)
        if entry is None or entry[0] != pairs:
            entry = cache[device] = (pairs, torch.tensor(pairs, dtype=self.grid_dtype, device=device).reshape(-1, 2))
        return entry[1]

    def step(
        self,
        denoiser: Denoiser,
        x_t: torch.Tensor,
        step_index: int | torch.Tensor,
        condition: dict,
        guidance_scale: float = 1.0,
        null_condition: dict | None = None,
        paired_condition: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of step `step_index` at state x_t under the denoiser's current weights.

        `step_index` is an int, or a (B,) tensor giving each sample its own step (DDPO trains
        the steps of each sample in an independently shuffled order). `paired_condition` is
        optional: `cat_conditions([null_condition, condition])` made once by a caller that runs
        many steps with the same conditions (the sampling loop), instead of at every step.
        """
        pairs = self.grid(x_t.device)[step_index]
        t, t_prev = pairs[..., 0], pairs[..., 1]
        extra = {} if paired_condition is None else {"paired_condition": paired_condition}
        output = denoiser.model_output(x_t, self.network_timestep(denoiser, t), condition, guidance_scale, null_condition, **extra)
        mean, std = self.step_distribution(denoiser, output, x_t, t, t_prev)
        if self.min_std > 0:
            std = torch.as_tensor(std).clamp(min=self.min_std)
        return mean, std

    def _stochastic(self, step_index: int) -> bool:
        """Whether step `step_index` has std > 0, from the grid alone (no look at a device tensor)."""
        return self.min_std > 0 or self.is_stochastic(step_index)

    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        condition: dict[str, torch.Tensor],
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        guidance_scale: float = 1.0,
        null_condition: dict[str, torch.Tensor] | None = None,
        initial_noise: torch.Tensor | None = None,
        log_prob_reduce: Reduction = "mean",
        prompts: list | None = None,
        progress: bool = False,
        first_step: int = 0,
        last_step: int | None = None,
        score_mask: torch.Tensor | None = None,
    ) -> Trajectory:
        """Run the chain from x_K ~ N(0, I) (or `initial_noise`) for a batch of `shape[0]` samples.

        `first_step`/`last_step` run only steps [first_step, last_step) of the grid, starting from
        `initial_noise` as the state entering `first_step`: branch-based sampling (B^2-DiffuRL)
        runs a shared prefix once and continues each branch from its end. `score_mask`: the
        elements the log-probs score (see Trajectory), None for all.
        """
        last_step = self.num_steps if last_step is None else last_step
        if not 0 <= first_step <= last_step <= self.num_steps:
            raise ValueError(f"steps [{first_step}, {last_step}) are outside the {self.num_steps}-step grid")
        device = next(denoiser.parameters()).device
        if initial_noise is not None and tuple(initial_noise.shape) != tuple(shape):
            raise ConfigError(f"initial_noise has shape {tuple(initial_noise.shape)}, expected {tuple(shape)}")
        for key, size in condition_batch_sizes(condition).items():
            if size != shape[0]:
                raise ConfigError(f"condition {key!r} has batch size {size}, expected {shape[0]}")
        x = initial_noise if initial_noise is not None else torch.randn(shape, generator=generator, device=device)
        # Classifier-free guidance's paired condition is made once for the whole chain, and
        # whether a step is stochastic comes from the grid: the loop never waits on the device.
        guided = guidance_scale != 1.0 and null_condition is not None
        paired = cat_conditions([null_condition, condition]) if guided else None
        states, log_probs, stds, stochastic = [x], [], [], []
        for index in tqdm(range(first_step, last_step), desc="sampling", disable=not progress, leave=False):
            mean, std = self.step(denoiser, x, index, condition, guidance_scale, null_condition, paired_condition=paired)
            stochastic.append(self._stochastic(index))
            if stochastic[-1]:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                if self.noise_clip is not None:
                    noise = noise.clamp(-self.noise_clip, self.noise_clip)
                x = mean + std * noise
                log_probs.append(gaussian_log_prob(x, mean, self.scoring_std(std), log_prob_reduce, score_mask,
                                                    self.logprob_clamp))
            else:  # deterministic step: no policy to score
                x = mean
                log_probs.append(torch.zeros(x.shape[0], device=x.device))
            states.append(x)
            stds.append(torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(()))
        stds = torch.stack(stds).cpu() if stds else torch.zeros(0)  # the chain's one wait on the device
        if stds.numel() and not torch.equal(stds > 0, torch.tensor(stochastic)):
            raise RuntimeError(f"{type(self).__name__}.is_stochastic disagrees with its step stds {stds.tolist()}")
        steps = self.grid()[first_step:last_step].clone()  # the Trajectory's own, not a view of the cache
        return Trajectory(
            states=torch.stack(states, dim=1),
            timesteps=steps[:, 0],
            prev_timesteps=steps[:, 1],
            log_probs=torch.stack(log_probs, dim=1) if log_probs else torch.zeros(shape[0], 0, device=x.device),
            stds=stds,
            condition=condition,
            null_condition=null_condition,
            guidance_scale=guidance_scale,
            log_prob_reduce=log_prob_reduce,
            prompts=list(prompts or []),
            score_mask=score_mask,
        )

    def log_prob(
        self,
        denoiser: Denoiser,
        trajectory: Trajectory,
        step_index: int | torch.Tensor,
        reduce: Reduction | None = None,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Re-score stored step `step_index` (int or per-sample (B,) tensor) under current weights.

        Differentiable. Returns (log_prob, mean, std) with the same CFG scale, conditions and
        score mask as at sampling time; std is the scoring std (see `min_logprob_std`), broadcast like the mean. `rows` (optional): the
        chains to score, one per item (repeats allowed), instead of all of them; it gives exactly
        what `log_prob(denoiser, trajectory.select(rows), step_index)` gives, without copying
        whole chains to use two of their states.
        """
        condition, null_condition = trajectory.condition, trajectory.null_condition
        if rows is None:
            rows = torch.arange(trajectory.batch_size)
        else:
            rows = torch.as_tensor(rows, dtype=torch.long)
            pick = lambda value: value[rows.to(value.device)]  # noqa: E731
            condition, null_condition = map_condition(pick, condition), map_condition(pick, null_condition)
        index = rows.to(trajectory.states.device)
        step = torch.as_tensor(step_index)
        x_t = trajectory.states[index, step.to(trajectory.states.device) if step.ndim else step_index]
        x_prev = trajectory.states[index, (step + 1).to(trajectory.states.device) if step.ndim else step_index + 1]
        mean, std = self.step(denoiser, x_t, step_index, condition, trajectory.guidance_scale, null_condition)
        if not self._all_stochastic(step_index, std):
            raise ValueError(f"step {step_index} is deterministic (std 0) and has no log-probability")
        std_b = broadcast_to_batch(self.scoring_std(std), mean)
        log_prob = gaussian_log_prob(x_prev, mean, std_b, reduce or trajectory.log_prob_reduce, trajectory.score_mask,
                                     self.logprob_clamp)
        return log_prob, mean, std_b

    def scoring_std(self, std: torch.Tensor | float) -> torch.Tensor | float:
        """The std a step's log-prob is scored with: its sampling std, floored at `min_logprob_std`."""
        if self.min_logprob_std > 0:
            return torch.as_tensor(std).clamp(min=self.min_logprob_std)
        return std

    def _all_stochastic(self, step_index: int | torch.Tensor, std: torch.Tensor) -> bool:
        """Whether every step in `step_index` has std > 0: from the grid when the indices are on the
        host (no wait on the device); otherwise from `std` itself."""
        if isinstance(step_index, torch.Tensor) and step_index.device.type != "cpu":
            return not bool((torch.as_tensor(std) <= 0).any())
        indices = step_index.unique().tolist() if isinstance(step_index, torch.Tensor) else [int(step_index)]
        return all(self._stochastic(i) for i in indices)

    def stochastic_steps(self) -> list[int]:
        """Indices of the steps that carry a log-prob (std > 0): the ones a trainer may train."""
        return [i for i in range(self.num_steps) if self.min_std > 0 or self.is_stochastic(i)]

    def is_stochastic(self, step_index: int) -> bool:
        raise NotImplementedError
