"""argparse value types shared by the sub-commands: each rejects bad text with a message that
names the value and what was expected (argparse turns it into a usage error, exit code 2)."""

from __future__ import annotations

import argparse
import math
import os


def _number(text: str, kind: type) -> float | int:
    try:
        return kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None


def integer(text: str) -> int:
    """Any integer."""
    return int(_number(text, int))


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a non-negative integer")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = float(_number(text, float))
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite positive number")
    return value


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    value = float(_number(text, float))
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite non-negative number")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers, e.g. ``1,2,2``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers") from None


def plain(doc: str | None) -> str:
    """A module docstring as help text: reST literals ````x```` shown as ```x```."""
    return (doc or "").replace("``", "`")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends each option's default to its help (unless
    the help already states it, or there is none: ``None`` or a flag's ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


def output_file(path: str, what: str = "--json") -> str | None:
    """Check, before any work, that ``path`` can be written as a file; ``None`` if it can,
    else a message naming the path and the problem. Missing parent folders are created."""
    if os.path.isdir(path):
        return f"{what} {path!r} is a directory; expected a file name"
    parent = os.path.dirname(os.path.abspath(path))
    problem = output_dir(parent, "its folder")
    if problem is not None:
        return f"cannot write {what} {path!r}: {problem}"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{what} {path!r} exists and is not writable"
    return None


def output_dir(path: str, what: str = "--out") -> str | None:
    """Check, before any work, that ``path`` is (or can be created as) a writable folder;
    ``None`` if so, else a message naming the path and the problem."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{what} {path!r} is an existing file; expected a folder"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        return f"cannot create {what} {path!r}: {err.strerror or err}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{what} {path!r} is not writable"
    return None
