"""apply, verify, status and destroy: the slices' lifecycle through libvirt."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from bmslice.cli.common import EXIT_DRIFT, EXIT_OK, path_arg, print_json, print_warnings, run, standalone_parser
from bmslice.safe_text import one_line


def _lifecycle_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=path_arg, metavar="SPEC")
    parser.add_argument(
        "--connect", default="qemu:///system", metavar="URI", help="libvirt URI (default qemu:///system)"
    )
    parser.add_argument("--host-root", type=path_arg, metavar="DIR", help="read the host from DIR/sys, DIR/proc")


def _say(line: str) -> None:
    print(f"  {line}", flush=True)


def cmd_apply(args: argparse.Namespace) -> int:
    from bmslice.apply.applier import ApplyOptions, apply
    from bmslice.cli.spec_input import load_spec_for, uri_is_local

    # Before the lock and the connection: a bad file named by the spec changes nothing.
    spec = load_spec_for(args.spec, local_host=uri_is_local(args.connect), cloud_init=True)
    opts = ApplyOptions(args.connect, args.dry_run, args.allow_move, args.host_root, args.spec.resolve().parent)
    print(f"{'dry run: ' if args.dry_run else ''}applying {args.spec} to {args.connect}")
    result = apply(spec, str(args.spec), opts, _say)
    print_warnings(result.warnings)
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
        print_json(report.to_dict())
    else:
        for line in report.drift:
            print(one_line(line))  # it quotes what libvirt and /proc say, whoever wrote it there
        for note in [*report.unreadable, *report.notes]:
            print(f"note: {one_line(note)}")
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
    for line in report.unreadable:
        print(f"note: {one_line(line)}")
    return EXIT_DRIFT if report.drift else EXIT_OK


def cmd_destroy(args: argparse.Namespace) -> int:
    from bmslice.apply.destroyer import DestroyOptions, destroy
    from bmslice.model.spec import load_spec

    spec = load_spec(args.spec)
    only = tuple(args.vm or ())
    print(f"destroying {', '.join(only) if only else 'the slices'} of {args.spec} on {args.connect}")
    done = destroy(
        spec,
        DestroyOptions(args.connect, args.keep_disks, args.host_root, only),
        _say,
        lambda line: print_warnings([line]),
    )
    print(f"destroyed: {len(done)} step(s)" if done else "nothing to destroy")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
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
    destroy_p.add_argument(
        "--vm", action="append", metavar="NAME", help="only this slice of SPEC (repeatable); default: all of them"
    )
    destroy_p.set_defaults(handler=cmd_destroy)


def main(argv: Sequence[str] | None = None) -> int:
    return run(standalone_parser(register), argv)


if __name__ == "__main__":
    sys.exit(main())
