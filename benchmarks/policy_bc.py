"""Success of the shipped Diffusion Policies (behaviour cloning) and of the experts that taught them.

    .venv/bin/python benchmarks/policy_bc.py [--tasks pointmaze_umaze pointmaze_medium pusht] [--seeds 0 1 2] [--table]

Each shipped policy (models/policy-*) is evaluated with its eval recipe's settings
(configs/eval/policy_<task>.yaml: DDPM, 100 steps, Diffusion Policy's reference sampler) on
`--episodes` episodes for each of several seed sets (seed set s uses env seeds
eval.seed + s * 10000 + i), and also with 10 DDIM steps (eta 0). The expert's own success and
score come from the dataset the policy was trained on (the pretrain recipe's data.path, recorded
by `genrl collect`). Results: benchmarks/results/policy_bc.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from genrl.config import SamplerConfig, load_config
from genrl.data.demonstrations import load_demonstrations
from genrl.evaluation.episodes import evaluate_policy
from genrl.policies.diffusion import DiffusionPolicy
from genrl.samplers import build_sampler

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLERS = {"ddpm100": SamplerConfig(kind="ddpm", num_steps=100), "ddim10": SamplerConfig(kind="ddim", num_steps=10, eta=0.0)}


def mean_spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["pointmaze_umaze", "pointmaze_medium", "pusht"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--table", action="store_true", help="only rebuild the table from the saved results")
    args = parser.parse_args()
    if args.table:
        table_text = table(json.loads((RESULTS / "policy_bc.json").read_text()), args.episodes, args.seeds)
        (RESULTS / "policy_bc.md").write_text(table_text)
        print(table_text)
        return
    results = {}
    for task in args.tasks:
        config = load_config("eval", ROOT / "configs" / "eval" / f"policy_{task}.yaml")
        dataset = load_config("pretrain", ROOT / "configs" / "pretrain" / f"policy_{task}.yaml").data.path
        policy = DiffusionPolicy.from_pretrained(ROOT / config.model.path).eval()
        demos = load_demonstrations(ROOT / dataset)
        task_result = {"policy": config.model.path, "expert": demos.attrs.get("summary", {}),
                       "dataset_episodes": demos.num_episodes, "dataset_steps": int(len(demos.action))}
        for name, sampler_config in SAMPLERS.items():
            runs = []
            for seed in args.seeds:
                eval_config = config.rollout.eval.model_copy(update={"num_episodes": args.episodes, "num_videos": 0})
                started = time.perf_counter()
                summary = evaluate_policy(policy, config.rollout.env, eval_config, build_sampler(sampler_config, policy),
                                          seed_offset=seed * 10000, progress=False)
                summary["seconds"] = time.perf_counter() - started
                print(task, name, seed, json.dumps(summary), flush=True)
                runs.append(summary)
            task_result[name] = runs
        results[task] = task_result
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "policy_bc.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(results)
    path.write_text(json.dumps(previous, indent=1))
    (RESULTS / "policy_bc.md").write_text(table(previous, args.episodes, args.seeds))
    print(table(previous, args.episodes, args.seeds))


def table(results: dict, episodes: int, seeds: list[int]) -> str:
    lines = ["# Shipped Diffusion Policies (behaviour cloning) vs their experts", "",
             f"`.venv/bin/python benchmarks/policy_bc.py`: {episodes} episodes per seed set, mean ± std over "
             f"{len(seeds)} seed sets. Success for PushT = final coverage > 0.95.", "",
             "| task | expert success (demos) | sampler | success rate | return | episode length | max coverage | "
             "final coverage | s per seed set |", "|---|---|---|---|---|---|---|---|---|"]
    for task, result in results.items():
        expert = result["expert"]
        expert_text = f"{expert.get('expert_success_rate', float('nan')):.3f} ({result['dataset_episodes']} episodes kept)"
        for name in SAMPLERS:
            runs = result[name]
            coverage = "coverage_max_mean" in runs[0]
            lines.append(
                f"| {task} | {expert_text} | {name} | {mean_spread([r['success_rate'] for r in runs])} | "
                f"{mean_spread([r['return_mean'] for r in runs])} | "
                f"{mean_spread([r['episode_length_mean'] for r in runs])} | "
                f"{mean_spread([r['coverage_max_mean'] for r in runs]) if coverage else '-'} | "
                f"{mean_spread([r['coverage_mean'] for r in runs]) if coverage else '-'} | "
                f"{mean_spread([r['seconds'] for r in runs])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
