"""Two-process DDP on CPU through `accelerate launch`: the run the users make on GPUs."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import TINY_TRAIN_OVERRIDES

from genrl.run_dir import read_metrics

ACCELERATE = Path(sys.executable).with_name("accelerate")
# the shipped DDP config file, with its process count set for this machine's two CPU processes
TWO_CPU_PROCESSES = [str(ACCELERATE), "launch", "--config_file", "configs/accelerate/ddp_single_node.yaml", "--num_processes", "2",
                     "--dynamo_backend", "no", "-m", "genrl"]


def launch_two(*args) -> None:
    """`accelerate launch` genrl over two CPU processes (gloo DDP); tests/ importable for toy rewards."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([*TWO_CPU_PROCESSES, *map(str, args)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-12000:]


def network_weights(model_dir) -> dict:
    from safetensors.torch import load_file

    return {path.relative_to(model_dir).as_posix(): load_file(path) for path in sorted(Path(model_dir).rglob("*.safetensors"))}


def test_branching_and_critic_trainers_under_two_processes(tiny_model_dir, tmp_path):
    """B^2-DiffuRL keeps a different number of children on each rank (padded so DDP sees equal
    passes), and SFT-PG's critic and baseline are DDP modules too: neither may hang or fail."""
    runs = {
        "b2": ["configs/b2diffurl/shapes_sparse_alignment.yaml", "rollout.reward.name=jpeg_compressibility", "rollout.batch_size=10",
               "train_batch_size=2", "b2diffurl.split_step_start=2", "b2diffurl.split_step_end=4"],
        "sft": ["configs/sft/shapes_10step.yaml", "sft_pg.critic_batch_size=4", "sft_pg.critic_warmup_steps=2"],
    }
    for name, (recipe, *extra) in runs.items():
        out = tmp_path / name
        launch_two("train", recipe, f"model.path={tiny_model_dir}", f"output_dir={out}", *TINY_TRAIN_OVERRIDES, "num_epochs=2", *extra)
        records = read_metrics(out / "metrics.jsonl")
        assert [r["epoch"] for r in records] == [1, 2]
        assert all(r["weights_rank_spread"] == 0.0 for r in records)  # padded passes kept the ranks in step


def test_policy_rl_splits_environments_across_two_processes(tiny_policy_dir, tmp_path):
    """DPPO (a DDP policy and a DDP value net; ranks whose episodes differ in length pad their
    minibatches) and REBEL (padded gradient chunks) under two processes: each rank runs its own
    envs with its own seeds, and the episodes of both are counted."""
    from test_policy_rl import DPPO, TINY_RL

    for trainer, extra in [("dppo", ["dppo.ft_denoising_steps=2"]), ("rebel", ["rollout.group_size=2"])]:
        out = tmp_path / trainer
        launch_two("train", DPPO, f"trainer={trainer}", f"model.path={tiny_policy_dir}", f"output_dir={out}", *TINY_RL,
                   "num_epochs=2", *extra)
        records = read_metrics(out / "metrics.jsonl")
        assert [r["epoch"] for r in records] == [1, 2]
        assert all(r["episodes"] == 2 * 4 for r in records)  # 4 envs on each of the 2 ranks
        assert all(r["weights_rank_spread"] == 0.0 for r in records)  # the policy's weights agree on both ranks


def test_two_process_ddpo_learns_from_gathered_rewards_keeps_ranks_identical_and_resumes_exactly(tiny_model_dir, tmp_path):
    """What a user on 8 GPUs relies on: (1) advantages standardised over every rank's rewards (each rank's
    rewards are constant here, so per-rank advantages would be 0); (2) every rank holds the same weights
    after each epoch's updates; (3) a run resumed from a checkpoint under two processes ends with the same
    weights as the uninterrupted run."""
    import shutil

    out = tmp_path / "ddp"
    args = ["train", "configs/ddpo/shapes_compressibility.yaml", f"model.path={tiny_model_dir}", f"output_dir={out}",
            *TINY_TRAIN_OVERRIDES, "num_epochs=2", "rollout.reward.name=toy_rewards:process_rank",
            "rollout.metric_rewards=[]", "ppo.per_group_advantages=false", "lora.enabled=false", "optimizer.learning_rate=1e-3",
            "keep_checkpoints=3"]
    launch_two(*args)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]  # one line per epoch, written by the main process only
    assert [r["samples_seen"] for r in records] == [2 * 8, 4 * 8]  # both ranks' samples were gathered
    assert all(abs(r["reward_mean"] - 0.5) < 1e-6 for r in records)  # ranks 0 and 1, gathered
    assert all(r["advantage_abs_mean"] > 0.99 for r in records)  # +-1: standardised over both ranks
    assert all(r["optimizer_steps"] > 0 for r in records) and records[-1]["approx_kl"] > 0
    assert all(r["weights_rank_spread"] == 0.0 for r in records)
    finished = network_weights(out / "model")
    checkpoint = out / "checkpoints" / "checkpoint-1"  # save_state on every rank: one RNG state file per process
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()

    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    shutil.rmtree(out / "model")
    launch_two(*args, "resume=true")
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]  # epoch 2 redone, logged once
    resumed = network_weights(out / "model")
    assert finished.keys() == resumed.keys() and finished
    for name in finished:
        for key in finished[name]:
            assert torch.equal(finished[name][key], resumed[name][key]), (name, key)


def test_a_distiller_under_two_processes_keeps_ranks_identical(tiny_policy_dir, umaze_demos, tmp_path):
    out = tmp_path / "distill"
    launch_two("distill", "configs/distill/consistency_pointmaze_umaze.yaml", f"teacher.path={tiny_policy_dir}",
               f"data.path={umaze_demos}", f"output_dir={out}", "method.num_intervals=6", "max_steps=10", "batch_size=16",
               "warmup_steps=2", "checkpoint_every=5", "log_every=5", "eval.episodes.num_episodes=2",
               "eval.episodes.num_envs=2", "eval.episodes.num_videos=0")
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [5, 10]
    assert all(r["weights_rank_spread"] == 0.0 for r in records)
    checkpoint = out / "checkpoints" / "checkpoint-10"
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()
    assert (out / "model" / "policy_config.json").exists()


def test_the_shipped_accelerate_configs_parse_as_documented():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    expected = {"ddp_single_node": (DistributedType.MULTI_GPU, 1, 8), "fsdp_single_node": (DistributedType.FSDP, 1, 8),
                "multi_node": (DistributedType.MULTI_GPU, 2, 16)}
    paths = sorted(Path("configs/accelerate").glob("*.yaml"))
    assert [p.stem for p in paths] == sorted(expected)
    for path in paths:
        config = load_config_from_file(str(path))
        assert (config.distributed_type, config.num_machines, config.num_processes) == expected[path.stem], path
        assert config.mixed_precision == "no"  # the recipe's mixed_precision decides (genrl passes it to Accelerator)
        assert f"--config_file {path.as_posix()}" in path.read_text()  # the file says how to launch it
    fsdp = load_config_from_file("configs/accelerate/fsdp_single_node.yaml").fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "SIZE_BASED_WRAP"
