"""Config validation and the CLI's error contract: one line, named culprit, exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from genrl.cli import main
from genrl.config import TrainConfig, load_config
from genrl.errors import ConfigError

DDPO = "configs/ddpo/shapes_compressibility.yaml"


def test_every_shipped_recipe_validates():
    commands = {"pretrain": ["pretrain"], "eval": ["eval"], "policy": ["collect", "pretrain", "eval"]}
    paths = sorted(Path("configs").rglob("*.yaml"))
    assert len(paths) >= 20
    for path in paths:
        for command in commands.get(path.parent.name, ["train"]):
            load_config(command, path)


def test_action_commands_need_action_configs():
    with pytest.raises(ConfigError, match="collect` works on action-policy configs"):
        load_config("collect", DDPO)
    with pytest.raises(ConfigError, match="'domain'"):
        load_config("train", DDPO, ["domain=audio"])


def test_dotted_overrides_are_typed():
    config = load_config("train", DDPO, ["ddpo.clip_range=0.2", "num_epochs=3", "optimizer.learning_rate=1e-3", "lora.enabled=false"])
    assert isinstance(config, TrainConfig)
    assert config.ddpo.clip_range == 0.2 and config.num_epochs == 3
    assert config.optimizer.learning_rate == 1e-3 and config.lora.enabled is False


@pytest.mark.parametrize(
    "override,culprit",
    [("ddpo.clip_rnage=0.1", "ddpo.clip_rnage"), ("num_epochs=many", "num_epochs"), ("sampler.kind=euler", "sampler.kind"),
     ("ddpo.timestep_fraction=2", "ddpo.timestep_fraction"), ("nonsense", "nonsense")],
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
    result = _cli("train", DDPO, "ddpo.clip_rnage=0.1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ddpo.clip_rnage" in lines[0] and "Traceback" not in result.stderr


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
