"""Command line: `genrl <command> CONFIG.yaml [dotted.key=value ...]`.

Works as `genrl ...`, `python -m genrl ...` and `accelerate launch -m genrl ...`.
A GenrlError becomes one line on stderr and a non-zero exit (2 for usage/config errors).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from genrl.errors import ConfigError, GenrlError

COMMANDS = {
    "collect": "run a scripted expert in an environment and write a demonstration dataset",
    "pretrain": "train a base model from scratch: the Shapes image model, or a Diffusion Policy by behaviour cloning",
    "train": "RL fine-tune a model on a reward: images (DDPO, PXPO, REBEL, SFT-PG, B^2) or policies (DDPO, DPPO, REBEL)",
    "eval": "sample a model and score it: image rewards, or a policy's success rate over seeded episodes",
    "distill": "turn a multi-step teacher (a Diffusion Policy or a Shapes model) into a few-step student",
    "export": "write a policy as ONNX + a numpy/onnxruntime runtime for a robot stack (no torch needed to run it)",
    "demo": "serve a gradio page that samples the image models side by side and runs (and steers) the policies",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genrl", description="RL fine-tuning, distillation and guidance for diffusion models.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("config", help="YAML config file (see configs/)")
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.num_epochs=3")
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    from genrl.config import load_config  # imported late so --help stays fast

    config = load_config(args.command, args.config, args.overrides)
    if args.command == "train":
        from genrl.trainers import train

        summary = train(config)
    else:
        command = importlib.import_module(f"genrl.commands.{args.command}")
        summary = command.run(config)
    for key, value in (summary or {}).items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except GenrlError as error:
        print(f"genrl: error: {error}", file=sys.stderr)
        code = error.exit_code
    except KeyboardInterrupt:
        print("genrl: interrupted; checkpoints already written are kept", file=sys.stderr)
        code = 130
    sys.exit(code)
