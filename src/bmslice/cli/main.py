"""`bmslice` command line: the only place that prints or exits.

Exit codes: 0 success; 1 drift or failed checks (verify, preflight, audit); 2 bad input or
infeasible plan, with one `error: ...` line on stderr and never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bmslice import __version__
from bmslice.cli.sources import add_source_args, read_topology
from bmslice.errors import BmsliceError

if TYPE_CHECKING:
    from bmslice.model.plan import Plan

EXIT_OK, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def cmd_discover(args: argparse.Namespace) -> int:
    from bmslice.cli.tables import console, topology_view
    from bmslice.model.topology import topology_to_dict

    topo = read_topology(args)
    if args.json:
        _print_json(topology_to_dict(topo))
    else:
        console().print(topology_view(topo))
    return EXIT_OK


def _plan(args: argparse.Namespace) -> Plan:
    from bmslice.model.spec import load_spec
    from bmslice.plan.planner import make_plan

    spec = load_spec(args.spec)
    topo = read_topology(args)
    return make_plan(topo, spec, origin=str(args.spec))


def cmd_plan(args: argparse.Namespace) -> int:
    from bmslice.cli.tables import console, plan_view
    from bmslice.model.plan import plan_to_dict

    plan = _plan(args)
    if args.json:
        _print_json(plan_to_dict(plan))
    else:
        console().print(plan_view(plan))
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from bmslice.render.artifacts import render_plan

    plan = _plan(args)
    out: Path = args.out
    files = render_plan(plan)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
    except OSError as exc:
        raise BmsliceError(f"--out {out}: cannot write: {exc.strerror or exc}") from None
    for name in files:
        print(out / name)
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line and exit 2 like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bmslice", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"bmslice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    discover = sub.add_parser("discover", help="read a host's CPUs, NUMA nodes, memory and PCI NICs")
    add_source_args(discover)
    discover.add_argument("--json", action="store_true", help="print the model as JSON")
    discover.set_defaults(handler=cmd_discover)

    plan = sub.add_parser("plan", help="plan the slices of SPEC on a host")
    plan.add_argument("spec", type=Path, metavar="SPEC")
    add_source_args(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=cmd_plan)

    render = sub.add_parser("render", help="write libvirt domain XML and kernel args for SPEC")
    render.add_argument("spec", type=Path, metavar="SPEC")
    add_source_args(render)
    render.add_argument("--out", type=Path, required=True, metavar="DIR")
    render.set_defaults(handler=cmd_render)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BmsliceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
