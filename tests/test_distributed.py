"""Two-process DDP on CPU through `accelerate launch`: the run the users make on GPUs."""

import os
import subprocess
import sys
from pathlib import Path

from genrl.run_dir import read_metrics

from conftest import TINY_TRAIN_OVERRIDES


def test_ddpo_under_accelerate_launch_with_two_processes(tiny_model_dir, tmp_path):
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "genrl", "train",
               "configs/ddpo/shapes_compressibility.yaml", f"model.path={tiny_model_dir}", f"output_dir={out}",
               "num_epochs=1", *TINY_TRAIN_OVERRIDES]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    assert len(records) == 1  # one line per epoch, written by the main process only
    assert records[0]["samples_seen"] == 2 * 8  # both ranks' samples were gathered
    # save_state on every rank: one RNG state file per process.
    checkpoint = out / "checkpoints" / "checkpoint-1"
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()
