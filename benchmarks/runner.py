"""What the before/after benchmark scripts share: one `genrl train` run in its own process, as they record
it, and their command line."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_measured(arguments: list[str], output_dir: Path) -> dict:
    """Run `genrl ARGUMENTS` in its own process; returns its command line, wall and CPU minutes (the child's
    user + system time), its summary (summary.json, or eval.json for `genrl distill`) and, when the
    resolved config has one, its number of optimizer steps (`max_steps`)."""
    import yaml

    command = [str(ROOT / ".venv" / "bin" / "genrl"), *arguments]
    print("$", " ".join(command[1:]), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary_path = output_dir / "summary.json" if (output_dir / "summary.json").exists() else output_dir / "eval.json"
    config = yaml.safe_load((output_dir / "config.yaml").read_text()) if (output_dir / "config.yaml").exists() else {}
    return {
        "command": " ".join(command[1:]).replace(str(ROOT) + "/", ""),
        "wall_minutes": wall / 60,
        "cpu_minutes": ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / 60,
        "summary": json.loads(summary_path.read_text()),
        **({"steps": config["max_steps"]} if "max_steps" in config else {}),
    }


def train_and_measure(recipe: str, output_dir: Path, seed: int, overrides: list[str]) -> dict:
    """Run `genrl train` (without trackers); `run_measured`'s figures and metrics.jsonl."""
    measured = run_measured(["train", recipe, f"output_dir={output_dir}", f"seed={seed}", "log_with=[]", *overrides], output_dir)
    return {**measured, "metrics": [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]}


def benchmark_command_line(description: str, run_names: list[str], run, build_table, plot, table_path: Path,
                           actions: dict | None = None) -> None:
    """`--run NAME --seeds S ...` runs (finished ones are skipped by `run`), then the table to `table_path`
    and the plots; `--table` only rebuilds the table and plots from saved results. `actions` adds flags of
    a benchmark's own: {"--flag": (help, function)}, each called after the runs when its flag is given."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", choices=run_names)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table", action="store_true")
    for flag, (help_text, _) in (actions or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = parser.parse_args()
    if args.run and not args.table:
        for seed in args.seeds:
            run(args.run, seed, args.overrides)
    for flag, (_, function) in (actions or {}).items():
        if getattr(args, flag.lstrip("-").replace("-", "_")):
            function()
    table = build_table()
    table_path.write_text(table)
    plot()
    print(table)
