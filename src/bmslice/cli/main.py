"""`bmslice` command line: the only place that prints or exits.

Exit codes: 0 success; 1 drift or failed checks (verify, preflight, audit); 2 bad input or
infeasible plan, with one `error: ...` line on stderr and never a traceback.

This module only assembles the command modules; what they share lives in `cli.common`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bmslice import __version__
from bmslice.cli import capacity_cmd, fleet_cmd, host_cmds, lab_cmd, lifecycle_cmds, metrics_cmd, show_cmd, slice_cmds
from bmslice.cli.common import Parser, run

COMMAND_MODULES = (slice_cmds, lifecycle_cmds, host_cmds, capacity_cmd, metrics_cmd, show_cmd, fleet_cmd, lab_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bmslice", description="Slice a bare-metal server into pinned, NUMA-local VMs with bare-metal performance."
    )
    parser.add_argument("--version", action="version", version=f"bmslice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
