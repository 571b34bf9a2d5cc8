"""Config validation and the CLI's error contract: one line, named culprit, exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from genrl.cli import main
from genrl.config import COMMAND_CONFIGS, TrainConfig, load_config
from genrl.errors import ConfigError

DDPO = "configs/ddpo/shapes_compressibility.yaml"


def test_every_shipped_recipe_validates():
    # A recipe's folder names its command (configs/eval/ -> genrl eval); the others are `train`.
    # configs/accelerate/ holds accelerate's launch configs (tests/test_distributed.py parses them).
    paths = sorted(p for p in Path("configs").rglob("*.yaml") if p.parent.name != "accelerate")
    assert len(paths) >= 20
    for path in paths:
        command = path.parent.name if path.parent.name in COMMAND_CONFIGS else "train"
        load_config(command, path)


def test_one_schema_tells_images_from_actions_by_the_rollout_kind():
    images = load_config("train", DDPO)
    actions = load_config("train", "configs/policy_rl/pointmaze_medium_dppo.yaml")
    assert images.rollout.kind == "prompts" and actions.rollout.kind == "env"
    assert type(images) is type(actions)  # one schema, one set of algorithm sections
    with pytest.raises(ConfigError, match="unknown config key 'rollout.num_envs'"):
        load_config("train", DDPO, ["rollout.num_envs=4"])  # an env key in a prompts rollout
    with pytest.raises(ConfigError, match="unknown config key 'domain'"):
        load_config("train", DDPO, ["domain=action"])


def test_an_empty_prompt_list_is_a_one_line_error():
    with pytest.raises(ConfigError, match="rollout.prompts.*at least one prompt"):
        load_config("train", DDPO, ["rollout.prompts.source=list", "rollout.prompts.prompts=[]"])


def test_dotted_overrides_are_typed():
    config = load_config("train", DDPO, ["ppo.clip_range=0.2", "num_epochs=3", "optimizer.learning_rate=1e-3", "lora.enabled=false"])
    assert isinstance(config, TrainConfig)
    assert config.ppo.clip_range == 0.2 and config.num_epochs == 3
    assert config.optimizer.learning_rate == 1e-3 and config.lora.enabled is False


@pytest.mark.parametrize(
    "override,culprit",
    [("ppo.clip_rnage=0.1", "ppo.clip_rnage"), ("num_epochs=many", "num_epochs"), ("sampler.kind=euler", "sampler.kind"),
     ("ppo.timestep_fraction=2", "ppo.timestep_fraction"), ("nonsense", "nonsense")],
)
def test_bad_config_names_the_culprit(override, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        load_config("train", DDPO, [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does-not-exist.yaml"):
        load_config("train", "does-not-exist.yaml")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "genrl", *args], capture_output=True, text=True, timeout=120)


def test_cli_usage_error_is_one_line_with_exit_code_2():
    result = _cli("train", DDPO, "ppo.clip_rnage=0.1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ppo.clip_rnage" in lines[0] and "Traceback" not in result.stderr


def test_cli_help_lists_commands():
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("collect", "pretrain", "train", "eval"):
        assert command in result.stdout


def test_cli_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fly", "x.yaml"])
    assert exit_info.value.code == 2
    assert "fly" in capsys.readouterr().err
