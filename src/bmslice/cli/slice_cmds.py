"""discover, plan and render: read a host, plan its slices, write their files (nothing changes on the host)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmslice.cli.common import EXIT_OK, add_out_args, path_arg, print_json, print_warnings, run, standalone_parser
from bmslice.cli.sources import add_source_args, read_topology

if TYPE_CHECKING:
    from bmslice.model.plan import Plan


def cmd_discover(args: argparse.Namespace) -> int:
    topo = read_topology(args)
    if args.json:
        from bmslice.model.topology import topology_to_dict

        print_json(topology_to_dict(topo))
    else:
        from bmslice.cli.tables import console, topology_view  # rich: only for the table

        console().print(topology_view(topo))
    return EXIT_OK


def _plan(args: argparse.Namespace) -> Plan:
    from bmslice.cli.spec_input import load_spec_for, reads_this_machine
    from bmslice.plan.planner import make_plan

    spec = load_spec_for(args.spec, local_host=reads_this_machine(args))
    topo = read_topology(args)
    return make_plan(topo, spec, origin=str(args.spec))


def cmd_plan(args: argparse.Namespace) -> int:
    plan = _plan(args)
    if args.json:
        from bmslice.model.plan import plan_to_dict

        print_json(plan_to_dict(plan))
    else:
        from bmslice.cli.plan_text import plan_lines

        print("\n".join(plan_lines(plan)))
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from bmslice.apply.safe_dir import out_rule, write_out
    from bmslice.render.artifacts import render_plan

    plan = _plan(args)
    out: Path = args.out
    files = render_plan(plan)
    write_out(out, {name: text.encode() for name, text in files.items()}, out_rule("--out", args.out_shared))
    for name in files:
        print(out / name)
    print_warnings(plan.warnings)
    return EXIT_OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    discover = sub.add_parser("discover", help="read a host's CPUs, NUMA nodes, memory and PCI NICs")
    add_source_args(discover)
    discover.add_argument("--json", action="store_true", help="print the model as JSON")
    discover.set_defaults(handler=cmd_discover)

    plan = sub.add_parser("plan", help="plan the slices of SPEC on a host")
    plan.add_argument("spec", type=path_arg, metavar="SPEC")
    add_source_args(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=cmd_plan)

    render = sub.add_parser("render", help="write libvirt domain XML and kernel args for SPEC")
    render.add_argument("spec", type=path_arg, metavar="SPEC")
    add_source_args(render)
    add_out_args(render, required=True)
    render.set_defaults(handler=cmd_render)


def main(argv: Sequence[str] | None = None) -> int:
    return run(standalone_parser(register), argv)


if __name__ == "__main__":
    sys.exit(main())
