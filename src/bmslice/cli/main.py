"""`bmslice` command line: the only place that prints or exits.

Exit codes: 0 success; 1 drift or failed checks (verify, preflight, audit); 2 bad input or
infeasible plan, with one `error: ...` line on stderr and never a traceback.

This module only assembles the command modules; what they share lives in `cli.common`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from bmslice import __version__
from bmslice.cli.common import Parser, run

COMMAND_MODULES = (
    "slice_cmds",
    "lifecycle_cmds",
    "host_cmds",
    "capacity_cmd",
    "metrics_cmd",
    "show_cmd",
    "fleet_cmd",
    "lab_cmd",
)

# Which module registers each command: a run of one command imports and registers only that
# module (start-up time of a one-shot `bmslice plan`); any other first word, every module.
COMMANDS = {
    **dict.fromkeys(("discover", "plan", "render"), "slice_cmds"),
    **dict.fromkeys(("apply", "verify", "status", "destroy"), "lifecycle_cmds"),
    **dict.fromkeys(("preflight", "host-config", "host-apply", "audit"), "host_cmds"),
    "capacity": "capacity_cmd",
    **dict.fromkeys(("metrics", "exporter"), "metrics_cmd"),
    "show": "show_cmd",
    "fleet": "fleet_cmd",
    "lab": "lab_cmd",
}


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = Parser(
        prog="bmslice", description="Slice a bare-metal server into pinned, NUMA-local VMs with bare-metal performance."
    )
    parser.add_argument("--version", action="version", version=f"bmslice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        import_module(f"bmslice.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    module = COMMANDS.get(words[0]) if words else None
    return run(build_parser(COMMAND_MODULES if module is None else (module,)), argv)


if __name__ == "__main__":
    sys.exit(main())
