"""The docs check: every shell command and Python snippet in README.md and docs/ (fenced ```bash / ```sh /
```python blocks) is checked against the code, so the docs cannot drift from it.

- Every `genrl` command (also behind `.venv/bin/`, `accelerate launch ... -m genrl` or env variables):
  its command exists, its config file exists and validates with its overrides, and every path it reads
  (model, teacher, data, adapter, classifier, reader, the demo's models) exists in the repository or
  is written by an earlier command of the same page (an `output_dir`, a collected dataset). `DIR`,
  `RECIPE`, `<...>` and `[...]` are placeholders the reader fills in; an absolute path is the
  reader's own model.
- Every Python snippet and the scripts of docs/examples/ RUN, in page order, in a scratch directory
  that links the repository's configs, models and data (runs/ and exports/ land there), after the
  page's `genrl export` commands whose output they read (those run too), all in this process (one
  import of torch for the whole check). Other `python` scripts (training, benchmarks) parse their
  arguments up to `--help`.
- Long jobs (`train`, `pretrain`, `distill`, `eval`, `collect`, `demo`) are validated, not run: the
  suite's own tests run each kind at a tiny size.
- Anything else (`bash scripts/...`, `pip install -e ".[extra]"`, `cp -r`) is checked for what it
  names; a command of an unknown form fails the check, so a new kind of command gets checked too.
"""

import importlib.util
import os
import re
import runpy
import shlex
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib
from conftest import run_cli

from genrl.cli import COMMANDS
from genrl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
PLACEHOLDERS = re.compile(r"^(DIR|RECIPE|CONFIG)$|<[^>]*>")
# config keys whose value is a path the command reads
INPUT_KEYS = ["model.path", "teacher.path", "data.path", "guidance.adapter_path", "guidance.classifier_path",
              "rollout.reader_path", "model.init_adapter"]
RUN_FOR_REAL = {"export"}  # fast genrl commands the check runs (the others are long jobs: validated)
LINKED = ["configs", "models", "docs", "benchmarks", "scripts"]


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def page_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [Block(page, text[: m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)
            if m.group(1) in ("bash", "sh", "python")]


def shell_commands(block: Block) -> list[list[str]]:
    """Each command of a shell block as tokens: continuation lines joined, comments and [...] optional
    groups dropped."""
    commands = []
    for line in re.sub(r"\\\n\s*", " ", block.text).splitlines():
        tokens, optional = [], False
        for token in shlex.split(line, comments=True):
            if token.startswith("["):
                optional = True
            if not optional:
                tokens.append(token)
            if optional and token.endswith("]"):
                optional = False
        if tokens:
            commands.append(tokens)
    return commands


def _normalise(tokens: list[str]) -> tuple[dict, list[str]]:
    """(the VAR=value prefixes, the command with `.venv/bin/` and `accelerate launch ... -m` removed)."""
    env = {}
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        key, _, value = tokens[0].partition("=")
        env[key] = value
        tokens = tokens[1:]
    tokens = [tokens[0].removeprefix(".venv/bin/"), *tokens[1:]]
    if tokens[:2] == ["accelerate", "launch"]:
        assert "-m" in tokens and tokens[tokens.index("-m") + 1] == "genrl", tokens
        tokens = ["genrl", *tokens[tokens.index("-m") + 2 :]]
    return env, tokens


def _value(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part, None)
        if config is None:
            return None
    return config


def _placeholder(token: str) -> bool:
    return bool(PLACEHOLDERS.search(token.partition("=")[2] or token))


def _readable(path: str, produced: list[str]) -> bool:
    if _placeholder(path) or Path(path).is_absolute():
        return True  # the reader's own model or a placeholder
    normal = Path(path).as_posix()
    return (ROOT / path).exists() or any(normal == p or normal.startswith(p.rstrip("/") + "/") for p in produced)


def check_genrl(tokens: list[str], produced: list[str], where: str):
    """Validate one genrl command; returns its config (None for --help)."""
    if tokens[1:] in (["--help"], []):
        return None
    command, rest = tokens[1], tokens[2:]
    assert command in COMMANDS, f"{where}: unknown command genrl {command}"
    if rest[-1:] == ["--help"]:
        return None
    config_path, overrides = rest[0], rest[1:]
    assert (ROOT / config_path).is_file(), f"{where}: {config_path} does not exist"
    config = load_config(command, ROOT / config_path, overrides)
    for key in INPUT_KEYS:
        value = _value(config, key)
        if isinstance(value, str) and not (command == "collect" and key == "data.path"):
            assert _readable(value, produced), f"{where}: {key}={value} is neither in the repository nor made by an earlier command"
    if command == "demo":
        for entry in [*config.image_models, *config.policies]:
            assert _readable(entry.path, produced), f"{where}: the demo's {entry.name!r} at {entry.path} does not exist"
    if getattr(config, "output_dir", None):
        produced.append(Path(config.output_dir).as_posix())
    if command == "collect":
        produced.append(Path(config.dataset.path).as_posix())
    return config


def workspace(tmp_path: Path) -> Path:
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "data").mkdir()  # documented commands write datasets here: link the shipped ones one by one
    for entry in (ROOT / "data").iterdir():
        (tmp_path / "data" / entry.name).symlink_to(entry)
    return tmp_path


@contextmanager
def inside(cwd: Path, env: dict | None = None):
    """Run documented code in this process, as the reader would from `cwd`: there as the working directory,
    its PYTHONPATH entries importable, other VAR=value set; everything restored after, and modules
    imported from the workspace (the examples' my_env, an export's policy_runtime) forgotten."""
    env = dict(env or {})
    paths = [str(cwd / p) for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p]
    old_cwd, old_path, old_argv = os.getcwd(), list(sys.path), list(sys.argv)
    old_env = {key: os.environ.get(key) for key in env}  # only what the command sets: imports may set others
    modules = set(sys.modules)
    os.chdir(cwd)
    sys.path[:0] = [str(cwd), *paths]
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.path[:], sys.argv[:] = old_path, old_argv
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name in set(sys.modules) - modules:
            if str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(cwd)):
                del sys.modules[name]


def run_genrl(args: list[str], cwd: Path, where: str) -> None:
    with inside(cwd):
        assert run_cli(*args) == 0, f"{where}: genrl {' '.join(args)} failed"


def run_python(path: Path, argv: list[str], cwd: Path, where: str, env: dict | None = None) -> None:
    """A script or a snippet's file, as `python path argv...`; a script's --help exit counts as success."""
    with inside(cwd, env):
        sys.argv[:] = [str(path), *argv]
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as stop:
            assert stop.code in (0, None), f"{where}: python {path} {' '.join(argv)} exited with {stop.code}"


class Page:
    """The state of one page's check: the paths its commands write, and the fast commands not yet run."""

    def __init__(self, cwd: Path):
        self.cwd, self.produced, self.pending = cwd, [], {}

    def materialise(self, text: str) -> None:
        """Run the pending fast commands whose output `text` (a snippet, a command line) reads."""
        for output_dir in [d for d in self.pending if d in text]:
            tokens, where = self.pending.pop(output_dir)
            run_genrl(tokens[1:], self.cwd, where)


def check_shell_command(tokens: list[str], page: Page, block: Block) -> None:
    where, produced, cwd = block.where(), page.produced, page.cwd
    env, tokens = _normalise(tokens)
    program = tokens[0]
    if program == "genrl":
        config = check_genrl(tokens, produced, where)
        if config is not None and tokens[1] in RUN_FOR_REAL and not any(_placeholder(t) for t in tokens):
            page.pending[Path(config.output_dir).as_posix()] = (tokens, where)  # run once something reads it
    elif program == "python":
        page.materialise(" ".join(tokens))
        if tokens[1] == "-m":
            assert importlib.util.find_spec(tokens[2]) is not None, f"{where}: no module {tokens[2]}"
        else:
            assert (ROOT / tokens[1]).is_file(), f"{where}: {tokens[1]} does not exist"
            # docs/examples/ run as documented; training and benchmark scripts are long jobs: their
            # arguments are parsed (values typed and checked) up to --help
            example = tokens[1].startswith("docs/examples/")
            run_python(cwd / tokens[1], [*tokens[2:], *([] if example else ["--help"])], cwd, where, env)
            # what an example wrote (a dataset, an export) is there for the commands after it
            produced += [t for t in tokens[2:] if example and not t.startswith("-") and (cwd / t).exists() and not (ROOT / t).exists()]
    elif program == "bash":
        assert (ROOT / tokens[1]).is_file(), f"{where}: {tokens[1]} does not exist"
    elif program == "pip":
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for wanted in re.findall(r"\.\[([\w,]+)\]", " ".join(tokens)):
            assert set(wanted.split(",")) <= set(extras), f"{where}: pip extra {wanted} is not in pyproject.toml"
    elif program == "cp":
        source = tokens[-2]
        assert _readable(source, produced), f"{where}: cp {source}: nothing documented before it makes it"
    else:
        raise AssertionError(f"{where}: the docs check does not know how to check {' '.join(tokens)!r}")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_documented_command_and_snippet_works(page, tmp_path):
    blocks = page_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no shell or Python block")
    checked = Page(workspace(tmp_path))
    for block in blocks:
        if block.lang == "python":
            checked.materialise(block.text)
            script = tmp_path / f"snippet_{block.line}.py"
            script.write_text(block.text)
            run_python(script, [], checked.cwd, block.where())
        else:
            for tokens in shell_commands(block):
                check_shell_command(tokens, checked, block)


def test_the_docs_check_catches_drift(tmp_path):
    """The check fails on a renamed config key, a missing file and a path nothing makes."""
    produced: list[str] = []
    with pytest.raises(Exception, match="unknown config key"):
        check_genrl(["genrl", "train", "configs/ddpo/shapes_compressibility.yaml", "ppo.clip_rnage=1"], produced, "x")
    with pytest.raises(AssertionError, match="does not exist"):
        check_genrl(["genrl", "eval", "configs/eval/no_such.yaml"], produced, "x")
    with pytest.raises(AssertionError, match="neither in the repository nor made"):
        check_genrl(["genrl", "eval", "configs/eval/shapes.yaml", "model.path=runs/never_made/model"], produced, "x")
    check_genrl(["genrl", "pretrain", "configs/pretrain/shapes.yaml", "output_dir=runs/made"], produced, "x")
    check_genrl(["genrl", "eval", "configs/eval/shapes.yaml", "model.path=runs/made/model"], produced, "x")  # made above
    block = Block(ROOT / "README.md", 1, "bash", "genrl eval configs/eval/shapes.yaml \\\n    model.path=DIR [key=value ...]  # c\n")
    assert shell_commands(block) == [["genrl", "eval", "configs/eval/shapes.yaml", "model.path=DIR"]]
    with pytest.raises(AssertionError, match="does not know how to check"):
        check_shell_command(["rm", "-rf", "runs"], Page(tmp_path), block)
