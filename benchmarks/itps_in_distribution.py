"""Why stochastic sampling does not beat guided diffusion on PointMaze: one decision's trade-off.

    .venv/bin/python benchmarks/itps_in_distribution.py

For the first decision of 16 episodes (reset seeds 300000-300015, each with its detour sketch), sample one
chunk per state with each method and scale (DDPM-100, noise seed 0) and report (a) the alignment cost the
steering minimises and (b) how far the chunk is from what the policy itself would produce: the policy's
own noise-prediction error on the chunk, noised to t = 5, 20, 50 (lower = more in distribution).
Results: benchmarks/results/itps_in_distribution.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genrl.config import SamplerConfig, load_config
from genrl.envs import make_env
from genrl.evaluation.steering import episode_sketch
from genrl.guidance.alignment import PointMassDynamics, SketchFollower, sketch_cost
from genrl.guidance.itps import Steering, steer
from genrl.policies.diffusion.modeling_diffusion import DiffusionPolicy
from genrl.samplers import build_sampler

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = (("unsteered", 0, 0), ("guided", 100, 0), ("stochastic", 100, 3), ("guided", 300, 0), ("stochastic", 300, 3),
            ("guided", 1000, 0), ("stochastic", 1000, 3))


def main() -> None:
    torch.set_num_threads(1)
    config = load_config("eval", ROOT / "configs/eval/itps_pointmaze_medium.yaml", [])
    policy = DiffusionPolicy.from_pretrained(ROOT / "models/policy-pointmaze-medium").eval()
    sampler = build_sampler(SamplerConfig(kind="ddpm", num_steps=100), policy)
    observations, sketches = [], []
    for seed in range(300_000, 300_016):
        env = make_env(config.rollout.env)
        observation, _ = env.reset(seed=seed)
        env.close()
        observations.append(observation)
        sketches.append(episode_sketch(config.rollout.env, seed, config.guidance.sketch, 0.05)[1])
    observations = np.stack(observations)
    follower = SketchFollower(sketches)
    index = np.arange(len(observations))
    follower.update(index, observations[:, :2])
    window, carrot = follower.targets(index)
    position, velocity, dynamics = torch.from_numpy(observations[:, :2]), torch.from_numpy(observations[:, 2:4]), PointMassDynamics()
    condition = policy.condition(torch.from_numpy(np.repeat(observations[:, None], policy.n_obs_steps, axis=1)))

    def cost(chunk):
        actions = policy.normalizer.action.unnormalize(chunk[:, policy.n_obs_steps - 1 :]).clamp(-1, 1)
        return sketch_cost(dynamics.positions(position, velocity, actions), window, carrot)

    def policy_error(chunk):
        generator, errors = torch.Generator().manual_seed(0), []
        for t in (5, 20, 50):
            noise = torch.randn(chunk.shape, generator=generator)
            alpha = policy.denoiser.alpha_bar(t, chunk)
            output = policy.denoiser.model_output(alpha.sqrt() * chunk + (1 - alpha).sqrt() * noise, torch.tensor(t), condition)
            errors.append((output - noise).square().mean(dim=(1, 2)))
        return torch.stack(errors).mean(0)

    lines = ["# ITPS: alignment cost vs staying in the policy's distribution (one decision, 16 states)", "",
             "Made by `benchmarks/itps_in_distribution.py`. Mean over the 16 states (± standard error).", "",
             "| method | scale | alignment cost | policy noise-prediction error |", "|---|---|---|---|"]
    with torch.no_grad():
        for method, scale, mcmc in SETTINGS:
            chunks = steer(Steering(method, scale=scale, mcmc_steps=mcmc), sampler, policy.denoiser, condition,
                           (len(observations), *policy.sample_shape), cost, torch.Generator().manual_seed(0))
            c, e = cost(chunks), policy_error(chunks)
            lines.append(f"| {method} | {scale} | {c.mean():.4f} (± {c.std() / len(c) ** 0.5:.4f}) | "
                         f"{e.mean():.4f} (± {e.std() / len(e) ** 0.5:.4f}) |")
            print(lines[-1], flush=True)
    (ROOT / "benchmarks" / "results" / "itps_in_distribution.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
