"""One `genrl train` run in its own process, as the benchmark scripts record it."""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_and_measure(recipe: str, output_dir: Path, seed: int, overrides: list[str]) -> dict:
    """Run `genrl train` (without trackers); returns its command line, wall and CPU minutes (the child's
    user + system time), summary.json and metrics.jsonl."""
    command = [str(ROOT / ".venv" / "bin" / "genrl"), "train", recipe, f"output_dir={output_dir}", f"seed={seed}",
               "log_with=[]", *overrides]
    print("$", " ".join(command[1:]), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "command": " ".join(command[1:]).replace(str(ROOT) + "/", ""),
        "wall_minutes": wall / 60,
        "cpu_minutes": ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / 60,
        "summary": json.loads((output_dir / "summary.json").read_text()),
        "metrics": [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()],
    }
