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
from typing import TYPE_CHECKING, Any, NoReturn

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


def _lifecycle_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, metavar="SPEC")
    parser.add_argument(
        "--connect", default="qemu:///system", metavar="URI", help="libvirt URI (default qemu:///system)"
    )
    parser.add_argument("--host-root", type=Path, metavar="DIR", help="read the host from DIR/sys, DIR/proc")


def _say(line: str) -> None:
    print(f"  {line}", flush=True)


def cmd_apply(args: argparse.Namespace) -> int:
    from bmslice.apply.applier import ApplyOptions, apply
    from bmslice.model.spec import load_spec

    spec = load_spec(args.spec)
    opts = ApplyOptions(args.connect, args.dry_run, args.allow_move, args.host_root, args.spec.resolve().parent)
    print(f"{'dry run: ' if args.dry_run else ''}applying {args.spec} to {args.connect}")
    result = apply(spec, str(args.spec), opts, _say)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.dry_run:
        for step in result.steps:
            print(f"  would {step}")
        print(
            f"dry run: {len(result.steps)} step(s), nothing changed" if result.steps else "dry run: no changes needed"
        )
    elif result.changed:
        print(f"applied: {len(result.steps)} step(s)")
    else:
        print(f"no changes: all {len(spec.vms)} slice(s) match the plan")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from bmslice.model.spec import load_spec
    from bmslice.verify.verifier import verify

    report = verify(load_spec(args.spec), str(args.spec), args.connect, args.host_root)
    if args.json:
        _print_json(report.to_dict())
    else:
        for line in report.drift:
            print(line)
        for note in report.notes:
            print(f"note: {note}")
        print(
            "drift: " + str(len(report.drift)) if report.drift else f"ok: {len(report.slices)} slice(s) match the plan"
        )
    return EXIT_DRIFT if report.drift else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from bmslice.cli.tables import console
    from bmslice.model.spec import load_spec
    from bmslice.verify.verifier import verify

    report = verify(load_spec(args.spec), str(args.spec), args.connect, args.host_root)
    table = Table(title=f"slices on {args.connect}", title_justify="left")
    for col in ("slice", "state", "matches plan", "first difference"):
        table.add_column(col)
    for s in report.slices:
        table.add_row(s.name, s.state, "yes" if not s.drift else f"no ({len(s.drift)})", s.drift[0] if s.drift else "")
    console().print(table)
    return EXIT_DRIFT if report.drift else EXIT_OK


def cmd_destroy(args: argparse.Namespace) -> int:
    from bmslice.apply.destroyer import DestroyOptions, destroy
    from bmslice.model.spec import load_spec

    spec = load_spec(args.spec)
    print(f"destroying the slices of {args.spec} on {args.connect}")
    done = destroy(spec, DestroyOptions(args.connect, args.keep_disks, args.host_root), _say)
    print(f"destroyed: {len(done)} step(s)" if done else "nothing to destroy")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bmslice", description="Slice a bare-metal server into pinned, NUMA-local VMs with bare-metal performance."
    )
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

    apply_p = sub.add_parser("apply", help="define and start the slices of SPEC through libvirt (idempotent)")
    _lifecycle_args(apply_p)
    apply_p.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    apply_p.add_argument("--allow-move", action="store_true", help="stop, redefine and restart slices that must move")
    apply_p.set_defaults(handler=cmd_apply)

    verify_p = sub.add_parser("verify", help="compare the live slices with the plan; exit 1 on drift")
    _lifecycle_args(verify_p)
    verify_p.add_argument("--json", action="store_true")
    verify_p.set_defaults(handler=cmd_verify)

    status_p = sub.add_parser("status", help="each slice, its state and whether it matches the plan")
    _lifecycle_args(status_p)
    status_p.set_defaults(handler=cmd_status)

    destroy_p = sub.add_parser("destroy", help="stop and undefine the slices, delete volumes, return NICs")
    _lifecycle_args(destroy_p)
    destroy_p.add_argument("--keep-disks", action="store_true", help="keep each slice's root disk volume")
    destroy_p.set_defaults(handler=cmd_destroy)

    from bmslice.cli import fleet_cmd, host_cmds, show_cmd

    host_cmds.register(sub)
    show_cmd.register(sub)
    fleet_cmd.register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch to the command's handler, and turn every BmsliceError into one line + exit 2."""
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


def standalone_parser(register: Callable[[argparse._SubParsersAction[Any]], None]) -> argparse.ArgumentParser:
    """A parser holding only the commands `register` adds (each command module's own `main`)."""
    parser = _Parser(prog="bmslice")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
