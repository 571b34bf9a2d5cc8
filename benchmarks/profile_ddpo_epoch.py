"""Where a DDPO epoch's time goes, on race_trl.py's tiny Stable Diffusion workload.

Runs genrl's own training loop (`genrl.trainers.train`, the same overrides as the race) in this
process with timers around its parts, and splits every epoch into
  sampling  -- the chain (network forwards, and the sampler's own arithmetic around them)
  decode    -- the VAE, final latents to images
  reward    -- the JPEG reward
  training  -- the update: network forwards and backward passes, the optimizer, and the rest
               (item selection, log-probs, the loss)
The network's share is measured by forward hooks on the UNet and a timer around `backward`;
"outside" is what is left. The first epoch (warm-up) is left out.

Run:   .venv/bin/python benchmarks/profile_ddpo_epoch.py --suite [--repeats 2] [--epochs 4]
       every variant of VARIANTS (the race's budget with other microbatching, one sampling batch, or
       two single-thread DDP ranks), each in fresh processes with race_trl's child environment,
       interleaved; writes benchmarks/results/race_trl_profile.{json,md} (runs under runs/race_trl/).
One:   OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/profile_ddpo_epoch.py [--pipeline DIR] [--channels-last]
       [key=value ...]  (extra genrl overrides); prints one JSON line of per-epoch medians (`--out FILE`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import race_trl  # noqa: E402


class Clock:
    """Seconds per (epoch, phase, part); `phase` is set by the wrappers around the loop's parts."""

    def __init__(self):
        self.epoch, self.phase = 0, "setup"
        self.seconds = defaultdict(float)

    def add(self, part: str, seconds: float) -> None:
        self.seconds[(self.epoch, self.phase, part)] += seconds

    @contextmanager
    def phase_of(self, phase: str):
        previous, self.phase = self.phase, phase
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add("total", time.perf_counter() - started)
            self.phase = previous


def instrument(clock: Clock, channels_last: bool = False) -> None:
    """Wrap the loop's parts (by module attribute, so the loop's own code is unchanged)."""
    import genrl.trainers.loop as loop
    import genrl.trainers.prompt_rollout as prompt_rollout
    from accelerate import Accelerator
    from genrl.models.latent_pipeline import LatentPipelineModel
    from genrl.trainers.updates import GradientSteps

    def wrap(owner, name, phase=None, part=None):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if phase is not None:
                with clock.phase_of(phase):
                    return original(*args, **kwargs)
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                clock.add(part, time.perf_counter() - started)

        setattr(owner, name, wrapper)

    wrap(prompt_rollout, "sample_trajectory", phase="sampling")
    wrap(LatentPipelineModel, "decode", phase="decode")
    wrap(prompt_rollout, "compute_configured_reward", phase="reward")
    wrap(Accelerator, "backward", part="backward")
    wrap(GradientSteps, "backward", part="stepper")  # backward + clip + optimizer step
    original_load = loop.build_rollout

    def build_rollout(config):
        rollout = original_load(config)
        network = rollout.model.network
        if channels_last:  # a variant to measure (not genrl's default): conv weights in NHWC
            network.to(memory_format=torch.channels_last)
        starts = []
        network.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
        network.register_forward_hook(lambda *_: clock.add("network_forward", time.perf_counter() - starts.pop()))

        return rollout

    loop.build_rollout = build_rollout

    # The update: every algorithm's `update` runs inside loop.train between these two calls.
    from genrl.trainers.registry import TRAINERS

    for algorithm in set(TRAINERS.values()):
        if hasattr(algorithm, "update"):
            wrap(algorithm, "update", phase="training")
    original_collect = prompt_rollout.PromptRollout.collect

    def collect(self, epoch, *args, **kwargs):
        clock.epoch = epoch + 1
        return original_collect(self, epoch, *args, **kwargs)

    prompt_rollout.PromptRollout.collect = collect


def summarise(clock: Clock, epochs: int) -> dict:
    """Per epoch (2..epochs) the phases and their network / outside parts; the median of each over epochs."""
    rows = []
    for epoch in range(2, epochs + 1):
        get = lambda phase, part: clock.seconds.get((epoch, phase, part), 0.0)  # noqa: E731
        sampling, decode, reward, training = (get(p, "total") for p in ("sampling", "decode", "reward", "training"))
        row = {
            "epoch_s": sampling + decode + reward + training,
            "sampling_s": sampling, "sampling_network_s": get("sampling", "network_forward"),
            "decode_s": decode, "reward_s": reward,
            "training_s": training, "training_forward_s": get("training", "network_forward"),
            "training_backward_s": get("training", "backward"),
            "training_optimizer_s": get("training", "stepper") - get("training", "backward"),
        }
        row["sampling_outside_s"] = row["sampling_s"] - row["sampling_network_s"]
        row["training_outside_s"] = (row["training_s"] - row["training_forward_s"] - row["training_backward_s"]
                                     - row["training_optimizer_s"])
        network = row["sampling_network_s"] + row["training_forward_s"] + row["training_backward_s"]
        row["network_share"] = network / row["epoch_s"]
        rows.append(row)
    return {key: round(statistics.median(r[key] for r in rows), 4) for key in rows[0]}


VARIANTS = {  # name -> extra genrl overrides (the race's budget otherwise); "ddp" launches 2 ranks x 1 thread
    "as the race (8 items per backward, 20 backwards per optimizer step)": [],
    "32 items per backward, 5 per optimizer step": ["train_batch_size=32", "gradient_accumulation_steps=5"],
    "160 items per backward, 1 per optimizer step": ["train_batch_size=160", "gradient_accumulation_steps=1"],
    "160 items per backward + one sampling batch of 16": ["train_batch_size=160", "gradient_accumulation_steps=1",
                                                          "rollout.batch_size=16", "rollout.num_batches=1"],
    "2 ranks x 1 thread (DDP), 80 items per backward": ["ddp", "rollout.batch_size=8", "rollout.num_batches=1",
                                                         "train_batch_size=80", "gradient_accumulation_steps=1"],
}


def run_variant(extra: list[str], pipeline: Path, epochs: int, work: Path) -> dict:
    """One variant in a fresh process (or two, for DDP), with race_trl's child environment."""
    env = {**race_trl.child_env(), "PYTHONPATH": str(ROOT)}
    work.mkdir(parents=True)
    if extra and extra[0] == "ddp":
        command, _ = race_trl.genrl_command(ROOT, pipeline, work / "run", epochs)
        at = command.index("train")
        keys = {item.split("=")[0] for item in extra[1:]}
        overrides = [o for o in command[at + 2:] if o.split("=")[0] not in keys] + extra[1:]
        env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
        subprocess.run([str(ROOT / ".venv/bin/accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "genrl", "train", command[at + 1], *overrides],
                       cwd=ROOT, env=env, check=True, stdout=(work / "log.txt").open("w"), stderr=subprocess.STDOUT)
        records = [json.loads(line) for line in (work / "run/metrics.jsonl").read_text().splitlines() if line.strip()]
        times = [r["time_sampling"] + r["time_reward"] + r["time_training"] for r in records[1:]]
        return {"epoch_s": statistics.median(times),
                "sampling_s": statistics.median(r["time_sampling"] for r in records[1:]),
                "training_s": statistics.median(r["time_training"] for r in records[1:]),
                "reward_mean": [r["reward_mean"] for r in records]}
    out = work / "result.json"
    subprocess.run([sys.executable, __file__, "--pipeline", str(pipeline), "--epochs", str(epochs), "--out", str(out), *extra],
                   cwd=ROOT, env=env, check=True, stdout=(work / "log.txt").open("w"), stderr=subprocess.STDOUT)
    return json.loads(out.read_text())


def suite(repeats: int, epochs: int, tag: str) -> None:
    """Every variant `repeats` times, interleaved; medians to benchmarks/results/race_trl_profile{_tag}.{json,md}."""
    started = time.strftime("%Y%m%d-%H%M%S")
    work = ROOT / "runs/race_trl" / f"profile-{started}"
    work.mkdir(parents=True, exist_ok=False)
    pipeline = race_trl.build_pipeline(work / "pipeline")
    runs = {name: [] for name in VARIANTS}
    for repeat in range(repeats):
        for number, (name, extra) in enumerate(VARIANTS.items()):
            runs[name].append(run_variant(extra, pipeline, epochs, work / f"r{repeat}_v{number}"))
            print(f"repeat {repeat + 1} {name}: {runs[name][-1]['epoch_s']:.2f} s/epoch", flush=True)
    fields = [k for k, v in runs[next(iter(runs))][0].items() if isinstance(v, float)]
    summary = {name: {k: statistics.median(r[k] for r in rs) for k in fields if k in rs[0]} for name, rs in runs.items()}
    base_name = next(iter(VARIANTS))
    base = summary[base_name]
    results = {"command": "python benchmarks/profile_ddpo_epoch.py " + " ".join(sys.argv[1:]), "started": started,
               "epochs": epochs, "repeats": repeats, "variants": VARIANTS, "median": summary, "runs": runs}
    name = "race_trl_profile" + (f"_{tag}" if tag else "")
    (ROOT / "benchmarks/results" / f"{name}.json").write_text(json.dumps(results, indent=1))
    f = lambda r, k: f"{r[k]:.2f}" if k in r else "-"  # noqa: E731
    lines = [
        "# Where genrl's DDPO epoch goes (race_trl.py's tiny SD workload, CPU, 2 threads)", "",
        f"Command: `{results['command']}`; started {started}; each variant {repeats}x in a fresh process, interleaved; "
        f"per run the median of epochs 2-{epochs}, then the median over runs.", "",
        "Network = the UNet's forward passes (forward hooks) and the backward passes; outside = the rest of the phase "
        "(sampler arithmetic, log-probs, item selection, loss). Decode + reward together are under 0.1 s.", "",
        "| variant | s / epoch | speed-up | sampling (network / outside) | training: forward / backward / optimizer / outside | network share | same rewards as row 1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, r in summary.items():
        same = runs[variant][0]["reward_mean"] == runs[base_name][0]["reward_mean"]
        diff = max(abs(a - b) for a, b in zip(runs[variant][0]["reward_mean"], runs[base_name][0]["reward_mean"]))
        lines.append(
            f"| {variant} | {r['epoch_s']:.2f} | {base['epoch_s'] / r['epoch_s']:.2f}x | "
            f"{f(r, 'sampling_s')} ({f(r, 'sampling_network_s')} / {f(r, 'sampling_outside_s')}) | "
            f"{f(r, 'training_s')}: {f(r, 'training_forward_s')} / {f(r, 'training_backward_s')} / "
            f"{f(r, 'training_optimizer_s')} / {f(r, 'training_outside_s')} | "
            + (f"{r['network_share']:.0%}" if "network_share" in r else "-")
            + f" | {'identical' if same else f'max diff {diff:.1e}'} |")
    (ROOT / "benchmarks/results" / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--pipeline", type=Path, help="a pipeline built by race_trl.build_pipeline (default: build one)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--channels-last", action="store_true", help="measure the UNet with channels_last weights")
    parser.add_argument("--suite", action="store_true", help="run every variant of VARIANTS and write the results files")
    parser.add_argument("--repeats", type=int, default=2, help="--suite: runs per variant")
    parser.add_argument("--tag", default="", help="--suite: suffix of the result files")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.suite:
        suite(args.repeats, args.epochs, args.tag)
        return
    torch.set_num_threads(2)
    clock = Clock()
    instrument(clock, args.channels_last)
    from genrl.config import load_config
    from genrl.trainers import train

    with tempfile.TemporaryDirectory() as tmp:
        pipeline = args.pipeline or race_trl.build_pipeline(Path(tmp) / "pipeline")
        command, _ = race_trl.genrl_command(ROOT, pipeline.resolve(), Path(tmp) / "run", args.epochs)
        config_path, overrides = command[command.index("train") + 1], command[command.index("train") + 2:]
        config = load_config("train", config_path, [*overrides, *args.overrides])
        train(config)
        records = [json.loads(line) for line in (Path(tmp) / "run/metrics.jsonl").read_text().splitlines() if line.strip()]
    result = {"overrides": args.overrides + (["--channels-last"] if args.channels_last else []), "epochs": args.epochs,
              **summarise(clock, args.epochs), "reward_mean": [r["reward_mean"] for r in records]}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
