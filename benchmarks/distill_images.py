"""Few-step students of the shipped Shapes models: distance to data, prompt match and diversity against NFE.

    .venv/bin/python benchmarks/distill_images.py --run piflow_gmm_flow --seeds 0
    .venv/bin/python benchmarks/distill_images.py --table        # rebuild the table and plot from saved results

A student run is a real `genrl distill` of its recipe in its own process (`seed=S`, outputs under
runs/benchmarks/distill_images/), then its saved model is sampled at each NFE; a teacher run only
samples the shipped model (its ODE sampler at 1, 2, 4 and 50 steps). Every run of one seed sees the
same prompts and the same initial noise. Figures, per NFE:

- `FD`: Frechet distance between the features of 512 samples (128 prompts of 1 to 3 objects, 4 samples
  each) and those of 512 real Shapes images (genrl/metrics: the Shapes feature net, 64-d); lower is
  closer. It is biased upwards at this sample count: 512 other real images score `real floor`.
- `prompt match`: the share of samples whose every prompted object the reader finds (shapes_alignment).
- `diversity`: per prompt, the mean Euclidean distance between the feature vectors of its 4 samples
  (6 pairs), averaged over the 128 prompts; `pixel div.` the same with the RMS pixel distance
  (rewards/diversity.py). Real images of one caption differ in position jitter, colour shade and
  background, so the teacher's value is the reference, not a maximum.
- `ms/img`: sampling wall time per image (batches of 64, one torch thread).

Per-run results: benchmarks/results/distill_images/<name>_seed<S>.json; the table
benchmarks/results/distill_images.md; the plot benchmarks/results/distill_images.png (FD vs NFE).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

from runner import benchmark_command_line

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "distill_images"
RUNS_DIR = ROOT / "runs" / "benchmarks" / "distill_images"
NUM_PROMPTS, PER_PROMPT = 128, 4  # 512 samples
STUDENT_NFE = (1, 2, 4)

RUNS = {
    # name: (recipe or None for a shipped teacher, overrides, model path (teacher) , sampler kind, NFEs)
    "teacher_flow": (None, [], "models/shapes-flow", "flow_sde", (1, 2, 4, 50)),
    "teacher_diffusion": (None, [], "models/shapes-diffusion", "ddim", (1, 2, 4, 50)),
    "piflow_gmm_flow": ("configs/distill/piflow_gmm_shapes_flow.yaml", [], None, "piflow", STUDENT_NFE),
    "piflow_dx_flow": ("configs/distill/piflow_dx_shapes_flow.yaml", [], None, "piflow", STUDENT_NFE),
    # the same GMM recipe trained for 1 and for 2 segments (a pi-Flow student is trained for its NFE)
    "piflow_gmm_flow_nfe1": ("configs/distill/piflow_gmm_shapes_flow.yaml", ["method.nfe=1", "eval.num_steps=1"], None, "piflow", (1,)),
    "piflow_gmm_flow_nfe2": ("configs/distill/piflow_gmm_shapes_flow.yaml", ["method.nfe=2", "eval.num_steps=2"], None, "piflow", (2,)),
    "piflow_gmm_diffusion": ("configs/distill/piflow_gmm_shapes_diffusion.yaml", [], None, "piflow", STUDENT_NFE),
    # the consistency student of the DDPM teacher, at the pi-Flow students' budget (400 steps of 16)
    "consistency_diffusion": ("configs/distill/consistency_shapes.yaml", ["max_steps=400", "batch_size=16"], None,
                              "consistency", STUDENT_NFE),
}
TEACHER_OF = {"piflow_gmm_flow": "teacher_flow", "piflow_dx_flow": "teacher_flow", "piflow_gmm_flow_nfe1": "teacher_flow",
              "piflow_gmm_flow_nfe2": "teacher_flow", "piflow_gmm_diffusion": "teacher_diffusion",
              "consistency_diffusion": "teacher_diffusion"}


def distill(recipe: str, output_dir: Path, seed: int, overrides: list[str]) -> dict:
    """`genrl distill` in its own process; its command line, wall and CPU minutes, and metrics."""
    command = [str(ROOT / ".venv" / "bin" / "genrl"), "distill", recipe, f"output_dir={output_dir}", f"seed={seed}", *overrides]
    print("$", " ".join(command[1:]), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"command": " ".join(command[1:]).replace(str(ROOT) + "/", ""),
            "wall_minutes": (time.perf_counter() - started) / 60,
            "cpu_minutes": ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / 60,
            "metrics": [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]}


def reuse(recipe: str, output_dir: Path, seed: int, overrides: list[str]) -> dict:
    """What `distill` records, for a finished run directory: wall minutes from its first and last files
    (CPU time is not known afterwards)."""
    started, ended = (output_dir / "config.yaml").stat().st_mtime, (output_dir / "eval.json").stat().st_mtime
    return {"command": " ".join(["genrl distill", recipe, f"output_dir={output_dir.relative_to(ROOT)}", f"seed={seed}", *overrides]),
            "wall_minutes": (ended - started) / 60, "cpu_minutes": None, "reused_run": True,
            "metrics": [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]}


def real_images(count: int, seed: int):
    import numpy as np

    from genrl.shapes import generate_batch

    return generate_batch(np.random.default_rng(seed), count, (1, 3), 32)[0]


def feature_diversity(features, prompts: list[str]) -> float:
    """Mean over prompts of the mean pairwise Euclidean feature distance among that prompt's samples."""
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(index)
    per_prompt = [statistics.mean(float((features[i] - features[j]).norm()) for i, j in combinations(rows, 2))
                  for rows in groups.values() if len(rows) > 1]
    return statistics.mean(per_prompt)


def measure(model_path: str, sampler_kind: str, nfes: tuple, seed: int) -> dict:
    """FD, prompt match, diversity and sampling time at each NFE; the same prompts and noise for every run of `seed`."""
    import numpy as np
    import torch

    from genrl.config import PromptConfig, SamplerConfig
    from genrl.evaluation.images import make_prompt_groups, sample_images, score_images
    from genrl.metrics import frechet_distance, load_shapes_features
    from genrl.metrics.distribution_distance import extract_features
    from genrl.models.loading import load_model
    from rewards.diversity import prompt_diversity

    torch.set_num_threads(1)
    model = load_model(model_path).eval()
    prompts = make_prompt_groups(PromptConfig(num_objects=(1, 3)), np.random.default_rng([seed, 31337]), NUM_PROMPTS * PER_PROMPT,
                                 PER_PROMPT)
    features_net = load_shapes_features()
    real = extract_features(real_images(NUM_PROMPTS * PER_PROMPT, 2024), features_net)
    figures = {}
    for nfe in nfes:
        options = {"noise_level": 0.0} if sampler_kind == "flow_sde" else {"eta": 0.0} if sampler_kind == "ddim" else {}
        sampler = SamplerConfig(kind=sampler_kind, num_steps=nfe, **options)
        started = time.perf_counter()
        images = sample_images(model, prompts, sampler, seed=seed + 1000, batch_size=64)
        seconds = time.perf_counter() - started
        features = extract_features(images, features_net)
        scores = score_images(images, prompts, ["shapes_alignment"])
        figures[str(nfe)] = {"fd": frechet_distance(features, real), "prompt_match": scores["shapes_alignment/prompt_match"],
                             "object_recall": scores["shapes_alignment/object_recall"],
                             "diversity": feature_diversity(features, prompts),
                             "pixel_diversity": prompt_diversity(images, prompts, "pixel"),
                             "ms_per_image": 1000 * seconds / len(prompts)}
        print(model_path, sampler_kind, nfe, figures[str(nfe)], flush=True)
    return figures


def real_floor() -> float:
    """FD of 512 other real images (another seed) against the reference real set."""
    path = RESULTS / "real_floor.json"
    if path.exists():
        return json.loads(path.read_text())["fd"]
    from genrl.metrics import frechet_distance, load_shapes_features
    from genrl.metrics.distribution_distance import extract_features

    net = load_shapes_features()
    count = NUM_PROMPTS * PER_PROMPT
    fd = frechet_distance(extract_features(real_images(count, 2025), net), extract_features(real_images(count, 2024), net))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fd": fd, "samples": count}, indent=1))
    return fd


def run(name: str, seed: int, extra: list[str]) -> dict:
    path = RESULTS / f"{name}_seed{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    recipe, overrides, model_path, sampler_kind, nfes = RUNS[name]
    result = {"name": name, "seed": seed}
    if recipe is not None:
        finished = sorted(RUNS_DIR.glob(f"{name}_seed{seed}_*/eval.json"))
        if finished and not extra:  # trained before, measured not yet (an interrupted measurement)
            output_dir = finished[-1].parent
            result.update(reuse(recipe, output_dir, seed, overrides))
        else:
            output_dir = RUNS_DIR / f"{name}_seed{seed}_{time.strftime('%Y%m%d-%H%M%S')}"
            result.update(distill(recipe, output_dir, seed, overrides + extra))
        model_path = str(output_dir / "model")
    result["model"] = model_path
    started = time.perf_counter()
    result["figures"] = measure(model_path, sampler_kind, nfes, seed)
    result["measure_minutes"] = (time.perf_counter() - started) / 60
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def _load(name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{name}_seed*.json"))]


def _mean_spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _figure(results: list[dict], nfe, key: str) -> list[float]:
    return [r["figures"][str(nfe)][key] for r in results if str(nfe) in r["figures"]]


def build_table() -> str:
    intro = ("Made by `benchmarks/distill_images.py` (its docstring defines every figure); mean ± std over seeds. "
             f"{NUM_PROMPTS} prompts x {PER_PROMPT} samples = {NUM_PROMPTS * PER_PROMPT} samples per row against as "
             f"many real images; real floor (512 other real images): FD {real_floor():.1f}. `vs teacher`: the "
             "row's FD and diversity relative to its own teacher's 50-step ODE sampler (same seed, prompts and noise).")
    header = ("| run | NFE | seeds | FD | FD vs teacher | prompt match | diversity | div. vs teacher | pixel div. | ms/img | "
              "train steps | train wall min | train CPU min |")
    lines = ["# Few-step students of the Shapes models: distance to data, prompt match, diversity (CPU)", "", intro, "",
             header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (recipe, overrides, _, _, nfes) in RUNS.items():
        results = _load(name)
        if not results:
            continue
        teachers = {r["seed"]: r for r in _load(TEACHER_OF.get(name, name))}
        for nfe in nfes:
            fd, div = _figure(results, nfe, "fd"), _figure(results, nfe, "diversity")
            paired = [(r, teachers[r["seed"]]) for r in results if r["seed"] in teachers and str(nfe) in r["figures"]]
            fd_ratio = [r["figures"][str(nfe)]["fd"] / t["figures"]["50"]["fd"] for r, t in paired]
            div_ratio = [r["figures"][str(nfe)]["diversity"] / t["figures"]["50"]["diversity"] for r, t in paired]
            steps = [r["metrics"][-1]["step"] for r in results if "metrics" in r]
            wall = [r["wall_minutes"] for r in results if "wall_minutes" in r]
            cpu = [r["cpu_minutes"] for r in results if r.get("cpu_minutes") is not None]
            lines.append(f"| {name} | {nfe} | {len(fd)} | {_mean_spread(fd, 1)} | {_mean_spread(fd_ratio, 2) if fd_ratio else '-'} | "
                         f"{_mean_spread(_figure(results, nfe, 'prompt_match'))} | {_mean_spread(div, 2)} | "
                         f"{_mean_spread(div_ratio, 2) if div_ratio else '-'} | {_mean_spread(_figure(results, nfe, 'pixel_diversity'))} | "
                         f"{_mean_spread(_figure(results, nfe, 'ms_per_image'), 1)} | {_mean_spread(steps, 0) if steps else '-'} | "
                         f"{_mean_spread(wall, 1) if wall else '-'} | "
                         f"{_mean_spread(cpu, 1) if cpu else '-'} |")
    notes = ("Notes: the teacher's few-step rows use the toolkit's flow ODE grid (diffusers' FlowMatchEuler: n steps "
             "from sigma 1 to 1/1000, then to 0), so its 2-step row is one real step plus a tiny one. `ms/img` and the "
             "training minutes were measured while other jobs shared the 2 cores (compare them within a row set, not "
             "across sessions). A run whose `vs teacher` is `-` has no teacher row of the same seed yet.")
    lines += ["", notes]
    lines += ["", "## Commands (`seed=S` for S in the seeds; each run's own command line is in its result file)", ""]
    for name, (recipe, overrides, model_path, sampler_kind, nfes) in RUNS.items():
        if not _load(name):
            continue
        if recipe is None:
            lines.append(f"- {name}: `{model_path}` sampled with `sampler.kind={sampler_kind}` (deterministic) at NFE {list(nfes)}")
        else:
            command = " ".join(["genrl distill", recipe, "seed=S", *overrides])
            lines.append(f"- {name}: `{command}`, sampled with `sampler.kind={sampler_kind}` at NFE {list(nfes)}")
    return "\n".join(lines) + "\n"


PER_NFE_STUDENTS = [("piflow_gmm_flow_nfe1", 1), ("piflow_gmm_flow_nfe2", 2), ("piflow_gmm_flow", 4)]


def plot() -> list[Path]:
    """FD against NFE (log-log), one line per run: mean over seeds with its min-max band."""
    series = {}
    for name, (_, _, _, _, nfes) in RUNS.items():
        results = [r for r in _load(name) if all(str(n) in r["figures"] for n in nfes)]
        if results and len(nfes) > 1:
            series[name] = (list(nfes), [[r["figures"][str(n)]["fd"] for n in nfes] for r in results])
    # one GMM student per NFE, as the method is meant to be used
    points = [(_load(name), nfe) for name, nfe in PER_NFE_STUDENTS]
    seeds = set.intersection(*[{r["seed"] for r in results} for results, _ in points])
    if seeds:
        series["piflow_gmm_flow, a student per NFE"] = (
            [nfe for _, nfe in points],
            [[next(r for r in results if r["seed"] == seed)["figures"][str(nfe)]["fd"] for results, nfe in points]
             for seed in sorted(seeds)])
    if not series:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for label, (x, curves) in series.items():
        curves = np.asarray(curves)
        axis.plot(x, curves.mean(0), marker="o", label=f"{label} (n={len(curves)})")
        axis.fill_between(x, curves.min(0), curves.max(0), alpha=0.2)
    axis.axhline(real_floor(), color="grey", linestyle="--", label="real vs real")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xticks([1, 2, 4, 50], labels=["1", "2", "4", "50"])
    axis.set_xlabel("NFE (network calls per sample)")
    axis.set_ylabel("Frechet distance to real data (lower is better)")
    axis.set_title("Frechet distance vs NFE (Shapes feature net, 512 samples)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = ROOT / "benchmarks" / "results" / "distill_images.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return [path]


def main() -> None:
    benchmark_command_line(__doc__, list(RUNS), run, build_table, plot, ROOT / "benchmarks" / "results" / "distill_images.md")


if __name__ == "__main__":
    sys.exit(main())
