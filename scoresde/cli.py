"""The ``scoresde`` command line. Each sub-command lives in its own module under
``scoresde.commands`` and is listed in ``COMMANDS``."""

from __future__ import annotations

import argparse
import importlib
import sys

DESCRIPTION = """\
scoresde: continuous-time score-based diffusion models.

Train a score model, sample from it with any solver, compute its exact likelihood, and check
solver accuracy against analytic ground truth. Run `scoresde COMMAND --help` for the options
of one command."""

# module names under scoresde.commands; each defines add_parser(subparsers) -> parser whose
# default ``func(args) -> int`` runs the command.
COMMANDS: list[str] = [
    "train",
    "sample",
    "likelihood",
    "check",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="scoresde",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"scoresde.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
