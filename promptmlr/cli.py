"""The ``promptmlr`` command line: parse arguments, call the Python API, report. Nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from promptmlr import __version__

NOT_BUILT = {
    "tune": "training (issue #5)",
    "eval": "evaluation (issue #5)",
    "predict": "prediction (issue #5)",
    "export": "export (issue #5)",
    "zeroshot": "the zero-shot command (issue #5; the Python API is promptmlr.zeroshot)",
}


class CommandError(Exception):
    """A user-facing failure: printed as one clear message, exit status 1, no traceback."""


def _not_built(name: str) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        print(f"promptmlr {name}: not built yet — {NOT_BUILT[name]}.", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptmlr",
        description="Multi-label recognition with partial labels on a frozen CLIP.")
    parser.add_argument("--version", action="version", version=f"promptmlr {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    help_texts = {
        "tune": "learn prompts and head on a partially labelled dataset",
        "eval": "evaluate a run or a prompts file on a dataset split",
        "predict": "label images with learned prompts",
        "export": "write a run's learned prompts to a file",
        "zeroshot": "zero-shot multi-label scores for a dataset",
    }
    for name, help_text in help_texts.items():
        command = commands.add_parser(name, help=help_text)
        command.set_defaults(handler=_not_built(name))
    from promptmlr.data.commands import add_data_commands

    add_data_commands(commands.add_parser("data", help="prepare, mask and verify datasets"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CommandError as error:
        print(f"promptmlr {args.command}: error: {error}", file=sys.stderr)
        return 1
