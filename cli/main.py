"""`prost` entry point: one verb per stage; each module contributes its subcommands through `register_cli`."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Callable

from prost.errors import ProstError

# Modules that define `register_cli(subparsers)`; each sets `func` on its parser(s).
COMMAND_MODULES = (
    "prost.data.synthetic",  # prost data synth
    "prost.train",  # prost train
    "prost.evaluate",  # prost eval
    "prost.checkpoint",  # prost convert
    "prost_export.onnx",  # prost export
    "prost_export.tensorrt",  # prost build-engines
    "prost_model_repository.writer",  # prost repository build
    "prost_model_repository.server",  # prost serve
    "prost_cli.gallery",  # prost gallery encode | build | search
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prost", description="ProST text-to-video retrieval: train, export, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    explain(parser)
    return parser


def explain(parser: argparse.ArgumentParser) -> None:
    """Every subcommand gets its help line as description when it has none, and every flag's help names its
    default (unless it already says it): one place instead of each stage's parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                if not subparser.description and helps.get(name):
                    subparser.description = helps[name][0].upper() + helps[name][1:] + "."
                explain(subparser)
        elif (action.help and action.option_strings and _has_default(action) and "default" not in action.help
              and not isinstance(action, argparse._HelpAction)):
            action.help += f" (default: {action.default})"


def _has_default(action: argparse.Action) -> bool:
    """A value worth showing: not None, not a switch's False, not suppressed (0 and "" are shown)."""
    return action.default is not None and action.default is not False and action.default != argparse.SUPPRESS


# Packages of the `cpu` and `gpu` extras that install the same module (whichever was installed last wins silently).
EXCLUSIVE = (("onnxruntime", "onnxruntime-gpu"), ("faiss-cpu", "faiss-gpu-cu12"))


def extras_conflict(version: Callable[[str], str] = importlib.metadata.version) -> str | None:
    """Why this environment cannot run reliably, or None: a package of the `cpu` extra and its `gpu` twin are both
    installed (ONNX Runtime, FAISS), so which one runs is an accident."""
    for cpu, gpu in EXCLUSIVE:
        found = {}
        for name in (cpu, gpu):
            try:
                found[name] = version(name)
            except importlib.metadata.PackageNotFoundError:
                pass
        if len(found) == 2:
            return (f"both {cpu} {found[cpu]} and {gpu} {found[gpu]} are installed; they provide the same module, so "
                    f"which one runs is an accident. On a GPU host: `pip uninstall -y {cpu} {gpu} && pip install "
                    f"{gpu}=={found[gpu]}`; on CPU: `pip uninstall -y {gpu}`")
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    conflict = extras_conflict()
    if conflict:
        print(f"prost: error: {conflict}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ProstError as exc:
        print(f"prost {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"prost {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
