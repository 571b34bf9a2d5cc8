"""The shipped recipes of `genrl collect`, `genrl pretrain` and `genrl eval` (configs/<command>/):
each validates under its command, and a task's recipes fit together (same env, the dataset
collect writes is the one pretrain reads, no two runs share an output_dir)."""

from pathlib import Path

import pytest

from genrl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("collect", "pretrain", "eval")


def recipes(command: str) -> list[Path]:
    return sorted((ROOT / "configs" / command).glob("*.yaml"))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_recipe_validates_under_its_command(command):
    paths = recipes(command)
    assert paths, f"no recipe in configs/{command}"
    for path in paths:
        load_config(command, path)


def test_no_two_recipes_write_to_the_same_output_dir():
    output_dirs = [load_config(command, path).output_dir for command in ("pretrain", "eval") for path in recipes(command)]
    assert len(set(output_dirs)) == len(output_dirs), output_dirs


@pytest.mark.parametrize("task", [path.stem for path in recipes("collect")])
def test_a_policy_task_collects_pretrains_and_evaluates_in_one_env(task):
    collect = load_config("collect", ROOT / "configs" / "collect" / f"{task}.yaml")
    pretrain = load_config("pretrain", ROOT / "configs" / "pretrain" / f"policy_{task}.yaml")
    evaluate = load_config("eval", ROOT / "configs" / "eval" / f"policy_{task}.yaml")
    assert pretrain.data.kind == "demonstrations" and pretrain.data.path == collect.dataset.path
    assert pretrain.eval.env == collect.env == evaluate.rollout.env
    assert evaluate.rollout.kind == "env" and evaluate.model.path == f"models/policy-{task.replace('_', '-')}"
    assert (ROOT / collect.dataset.path).exists()  # the shipped dataset the shipped policy was trained on
