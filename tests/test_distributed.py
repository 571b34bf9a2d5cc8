"""Two-process DDP on CPU through `accelerate launch`: the run the users make on GPUs."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY_TRAIN_OVERRIDES

from genrl.run_dir import read_metrics


def test_ddpo_under_accelerate_launch_with_two_processes(tiny_model_dir, tmp_path):
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "genrl", "train",
               "configs/ddpo/shapes_compressibility.yaml", f"model.path={tiny_model_dir}", f"output_dir={out}",
               "num_epochs=1", *TINY_TRAIN_OVERRIDES]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-12000:]
    records = read_metrics(out / "metrics.jsonl")
    assert len(records) == 1  # one line per epoch, written by the main process only
    assert records[0]["samples_seen"] == 2 * 8  # both ranks' samples were gathered
    # save_state on every rank: one RNG state file per process.
    checkpoint = out / "checkpoints" / "checkpoint-1"
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()


def test_branching_and_critic_trainers_under_two_processes(tiny_model_dir, tmp_path):
    """B^2-DiffuRL keeps a different number of children on each rank (padded so DDP sees equal
    passes), and SFT-PG's critic and baseline are DDP modules too: neither may hang or fail."""
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    runs = {
        "b2": ["configs/b2diffurl/shapes_sparse_alignment.yaml", "rollout.reward.name=jpeg_compressibility", "rollout.batch_size=10",
               "train_batch_size=2", "b2diffurl.split_step_start=2", "b2diffurl.split_step_end=4"],
        "sft": ["configs/sft/shapes_10step.yaml", "sft_pg.critic_batch_size=4", "sft_pg.critic_warmup_steps=2"],
    }
    for name, (recipe, *extra) in runs.items():
        out = tmp_path / name
        command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "genrl", "train", recipe,
                   f"model.path={tiny_model_dir}", f"output_dir={out}", *TINY_TRAIN_OVERRIDES, "num_epochs=2", *extra]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-12000:]
        assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_policy_rl_splits_environments_across_two_processes(tiny_policy_dir, tmp_path):
    """DPPO (a DDP policy and a DDP value net; ranks whose episodes differ in length pad their
    minibatches) and REBEL (padded gradient chunks) under two processes: each rank runs its own
    envs with its own seeds, and the episodes of both are counted."""
    from test_policy_rl import DPPO, TINY_RL

    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    for trainer, extra in [("dppo", ["dppo.ft_denoising_steps=2"]), ("rebel", ["rollout.group_size=2"])]:
        out = tmp_path / trainer
        command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "genrl", "train", DPPO, f"trainer={trainer}",
                   f"model.path={tiny_policy_dir}", f"output_dir={out}", *TINY_RL, "num_epochs=2", *extra]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-12000:]
        records = read_metrics(out / "metrics.jsonl")
        assert [r["epoch"] for r in records] == [1, 2]
        assert all(r["episodes"] == 2 * 4 for r in records)  # 4 envs on each of the 2 ranks
