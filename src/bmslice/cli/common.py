"""What every command module shares: exit codes, the parser class, JSON output and `run`.

Command modules import this module, never `cli.main`; `cli.main` only assembles them, so
imports run one way: main -> command modules -> common.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from bmslice.errors import BmsliceError
from bmslice.safe_text import one_line

EXIT_OK, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]
Register = Callable[["argparse._SubParsersAction[Any]"], None]


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def print_warnings(warnings: Sequence[str]) -> None:
    """One line each, whatever the warning quotes (a tree's value, a fleet file's path with a newline)."""
    for warning in warnings:
        print(f"warning: {one_line(warning)}", file=sys.stderr)


OUT_SHARED_HELP = (
    "write into a directory that another user owns or others can write (refused otherwise); "
    "no link is followed either way"
)


def path_arg(text: str) -> Path:
    """argparse's type for a path: one the kernel takes, or one usage line naming it."""
    from bmslice.model.fields import bounded_path

    try:
        return bounded_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_out_args(parser: argparse.ArgumentParser, required: bool, help: str | None = None) -> None:
    """--out DIR and --out-shared, the same on every command that writes files (apply/safe_dir.py)."""
    parser.add_argument("--out", type=path_arg, required=required, metavar="DIR", help=help)
    parser.add_argument("--out-shared", action="store_true", help=OUT_SHARED_HELP)


def _columns() -> int:
    """The terminal's width as `shutil.get_terminal_size` reads it: $COLUMNS, else stdout's, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter with its width found without importing `shutil` (argparse
    does on every add_argument): shutil, bz2 and lzma are 5% of a one-shot `bmslice plan`."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, _columns() - 2 if width is None else width)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line and exit 2 like every other error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # one line: argparse quotes unrecognized arguments as typed, a newline or escape included
        self.exit(EXIT_ERROR, f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch to the command's handler, and turn every BmsliceError into one line + exit 2.

    The line is one line whatever the message quotes (a file name with a newline in it), and
    printing a file name that is not UTF-8 never fails (escaped, not a traceback).
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # absent on some test captures
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BmsliceError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        for line in getattr(exc, "details", "").splitlines():
            print(f"  | {one_line(line)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # the reader of stdout left (`| head`): what ran before said its own error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second failure at exit's flush
        print("error: standard output was closed before the command finished", file=sys.stderr)
        return EXIT_ERROR


def standalone_parser(register: Register) -> argparse.ArgumentParser:
    """A parser holding only the commands `register` adds (each command module's own `main`)."""
    parser = Parser(prog="bmslice")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser
