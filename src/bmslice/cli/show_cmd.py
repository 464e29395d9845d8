"""`bmslice show SPEC`: a picture of the sliced server, in the terminal or as SVG / HTML files.

    bmslice show SPEC [--host-root DIR | --connect URI | --hwloc FILE] [--svg FILE] [--html FILE]

Without --svg or --html it draws the coloured grid in the terminal; with them it writes
the files (and prints their paths) instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bmslice.cli.common import EXIT_OK, OUT_SHARED_HELP, path_arg, print_warnings, run, standalone_parser
from bmslice.cli.sources import add_source_args, read_topology


def cmd_show(args: argparse.Namespace) -> int:
    from bmslice.apply.safe_dir import check_out, out_rule, write_out
    from bmslice.cli.picture_view import picture_view
    from bmslice.cli.spec_input import load_spec_for, reads_this_machine
    from bmslice.cli.tables import console
    from bmslice.plan.planner import make_plan
    from bmslice.plan.room import free_room, spec_shapes
    from bmslice.render.picture_svg import render_svg
    from bmslice.render.report_html import render_report

    spec = load_spec_for(args.spec, local_host=reads_this_machine(args))
    topo = read_topology(args)
    plan = make_plan(topo, spec, origin=str(args.spec))
    room = free_room(topo, spec, plan, spec_shapes(spec), str(args.spec), per_node=True)
    files: list[tuple[str, Path, bytes]] = []
    if args.svg is not None:
        files.append(("--svg", args.svg, render_svg(topo, plan)))
    if args.html is not None:
        files.append(("--html", args.html, render_report(topo, plan, spec_name=str(args.spec), room=room)))
    if not files:
        out = console()
        out.print(picture_view(topo, plan, out.width, room))
        return EXIT_OK
    # Both checked before either is written: a refusal leaves both places as they were.
    for option, path, _data in files:
        check_out(path.parent, [path.name], out_rule(option, args.out_shared, create=False))
    for option, path, data in files:
        write_out(path.parent, {path.name: data}, out_rule(option, args.out_shared, create=False))
        print(path)
    print_warnings(plan.warnings)
    return EXIT_OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `show` to the subcommands of the bmslice parser (`sub` from add_subparsers)."""
    show = sub.add_parser("show", help="draw the sliced server: terminal grid, or --svg / --html files")
    show.add_argument("spec", type=path_arg, metavar="SPEC")
    add_source_args(show)
    show.add_argument("--svg", type=path_arg, metavar="FILE", help="write the picture as SVG")
    show.add_argument("--html", type=path_arg, metavar="FILE", help="write a self-contained HTML report")
    show.add_argument("--out-shared", action="store_true", help=OUT_SHARED_HELP)
    show.set_defaults(handler=cmd_show)


def main(argv: Sequence[str] | None = None) -> int:
    """`bmslice show ...` alone, for tests."""
    return run(standalone_parser(register), argv)
