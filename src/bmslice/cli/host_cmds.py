"""The host half of the CLI: preflight, host-config, host-apply and audit.

`register(sub)` adds the four subcommands to bmslice's parser; `main(argv)` runs them on
their own parser with bmslice's error handling (one `error:` line, exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmslice.cli.common import (
    EXIT_DRIFT,
    EXIT_OK,
    add_out_args,
    path_arg,
    print_json,
    print_warnings,
    run,
    standalone_parser,
)
from bmslice.errors import TopologyError
from bmslice.safe_text import one_line

if TYPE_CHECKING:
    from bmslice.model.plan import Plan
    from bmslice.model.topology import HostTopology
    from bmslice.render.exporter_unit import ExporterUnit


def _root(args: argparse.Namespace) -> Path:
    root: Path = args.host_root
    if not root.is_dir():
        raise TopologyError(f"--host-root {root}: no such directory")
    return root


def _plan(args: argparse.Namespace) -> tuple[HostTopology, Plan]:
    from bmslice.model.spec import load_spec
    from bmslice.plan.planner import make_plan
    from bmslice.topology.fsroot import FsRoot
    from bmslice.topology.sysfs import read_host_tree
    from bmslice.verify.defined_slices import defined_slices

    spec = load_spec(args.spec)
    root = _root(args)
    topo = read_host_tree(root)
    # the slices libvirt defines here stay where they are, holding their devices (as apply keeps them)
    return topo, make_plan(topo, spec, origin=str(args.spec), keep=defined_slices(FsRoot(root)))


def _exporter(args: argparse.Namespace) -> ExporterUnit:
    """The exporter unit's command line: this bmslice (or --exporter-command) on this spec."""
    from bmslice.render.exporter_unit import ExporterUnit

    if args.exporter_command is not None:
        command: tuple[str, ...] = (str(args.exporter_command.absolute()),)
    elif Path(sys.argv[0]).name == "bmslice":
        command = (str(Path(sys.argv[0]).absolute()),)
    else:  # run as python -m bmslice.cli.main (or from a test): the same Python runs the exporter
        command = (sys.executable, "-m", "bmslice.cli.main")
    return ExporterUnit(command, str(args.spec.absolute()), args.exporter_listen)


def cmd_preflight(args: argparse.Namespace) -> int:
    from bmslice.topology.fsroot import FsRoot
    from bmslice.verify.findings import Level
    from bmslice.verify.preflight import preflight, read_preflight_facts

    topo, plan = _plan(args)
    findings = preflight(plan, topo, read_preflight_facts(FsRoot(_root(args)), plan, topo))
    failed = [f for f in findings if f.level is Level.FAIL]
    if args.json:
        print_json({"ok": not failed, "findings": [f.to_dict() for f in findings]})
    else:
        for finding in findings:
            print(one_line(finding.line()))
        warned = sum(f.level is Level.WARN for f in findings)
        print(f"preflight: {len(failed)} fail, {warned} warn" if failed else f"preflight: ready ({warned} warn)")
    print_warnings(plan.warnings)
    return EXIT_DRIFT if failed else EXIT_OK


def cmd_host_config(args: argparse.Namespace) -> int:
    from bmslice.apply.safe_dir import out_rule, write_out
    from bmslice.apply.tree_files import EXEC_MODE
    from bmslice.render.host_files import render_host_files
    from bmslice.render.sriov_files import EXECUTABLES

    topo, plan = _plan(args)
    files = render_host_files(plan, topo, _exporter(args))
    out: Path = args.out
    modes = {rel: EXEC_MODE for rel in files if rel in EXECUTABLES}
    write_out(out, {rel: text.encode() for rel, text in files.items()}, out_rule("--out", args.out_shared), modes)
    for rel in files:
        print(out / rel)
    print(f"kernel args: {' '.join(plan.host.kernel_args)}")
    print_warnings(plan.warnings)
    return EXIT_OK


def _say(line: str) -> None:
    print(f"  {line}", flush=True)


def cmd_host_apply(args: argparse.Namespace) -> int:
    from bmslice.apply.host_apply import apply_host, bootloader_name, detect_bootloader
    from bmslice.render.exporter_unit import EXPORTER_UNIT_PATH
    from bmslice.render.host_files import render_host_files, runtime_settings
    from bmslice.topology.fsroot import FsRoot

    topo, plan = _plan(args)
    root = _root(args)
    files = render_host_files(plan, topo, _exporter(args))
    settings = runtime_settings(plan)
    if args.only == "exporter":  # the exporter's unit alone: nothing else of the host changes
        files, settings = {EXPORTER_UNIT_PATH: files[EXPORTER_UNIT_PATH]}, ()
    print(
        f"{'dry run: ' if args.dry_run else ''}host-apply on {root}; "
        f"bootloader: {bootloader_name(detect_bootloader(FsRoot(root)))}",
        flush=True,
    )
    result = apply_host(
        plan,
        files,
        settings,
        root,
        dry_run=args.dry_run,
        distro=topo.distro,
        report=_say,
        record_reboot=args.only is None,
    )
    if args.dry_run:
        for change in result.changes:
            print(f"  would {change.line()}")
    for step in result.next_steps:
        print(f"next: {step}")
    print_warnings(result.warnings)
    print_warnings(plan.warnings)
    if result.reboot_pending:
        print(f"reboot pending: {' '.join(result.reboot_pending)}")
    if not result.changes:
        print(f"no changes: {len(result.unchanged)} file(s) and setting(s) already as planned")
    elif args.dry_run:
        print(f"dry run: {len(result.changes)} change(s), nothing written")
    else:
        print(f"changed: {len(result.changes)}, unchanged: {len(result.unchanged)}")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    from bmslice.topology.fsroot import FsRoot
    from bmslice.verify.audit import audit
    from bmslice.verify.host_state import read_runtime

    topo, plan = _plan(args)
    report = audit(plan, topo, read_runtime(FsRoot(_root(args))))
    if args.json:
        print_json(report.to_dict())
    else:
        # one escaped line each: a finding quotes process names, which any user sets (prctl), and
        # the kernel escapes only "\n" and "\\" in them: "\x1b[2J" or "\r" reached the terminal
        for finding in report.passed:
            print(one_line(finding.line()))
        by_cpu: dict[str, list[str]] = {}
        for e in report.excepted:
            by_cpu.setdefault(e.cpus.format(), []).append(e.comm)
        for cpus, names in by_cpu.items():
            print(one_line(f"excepted CPU {cpus}: {len(names)} kernel thread(s) bound there: {', '.join(names)}"))
        for finding in report.warnings:
            print(one_line(finding.line()))
        for finding in report.violations:
            print(one_line(finding.line()))
        count = len(report.violations)
        print(f"audit: {count} violation(s)" if count else "audit: isolation holds")
    print_warnings(plan.warnings)
    return EXIT_DRIFT if report.violations else EXIT_OK


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=path_arg, metavar="SPEC")
    parser.add_argument(
        "--host-root", type=path_arg, default=Path("/"), metavar="DIR", help="the host's root directory (default /)"
    )


def _exporter_args(parser: argparse.ArgumentParser) -> None:
    from bmslice.model.listen import DEFAULT_LISTEN

    parser.add_argument(
        "--exporter-listen",
        default=DEFAULT_LISTEN,
        metavar="ADDR:PORT",
        help=f"where the exporter unit serves /metrics (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--exporter-command",
        type=path_arg,
        metavar="PATH",
        help="the bmslice the exporter unit runs (default: this one)",
    )


def register(sub: argparse._SubParsersAction[Any]) -> None:
    preflight = sub.add_parser("preflight", help="is this server ready to be sliced? ok/warn/fail; exit 1 on fail")
    _common(preflight)
    preflight.add_argument("--json", action="store_true")
    preflight.set_defaults(handler=cmd_preflight)

    config = sub.add_parser("host-config", help="render the host files (kernel args, hugepages, IRQ, vfio) to DIR")
    _common(config)
    add_out_args(config, required=True)
    _exporter_args(config)
    config.set_defaults(handler=cmd_host_config)

    apply_p = sub.add_parser("host-apply", help="place the host files and runtime settings; never runs the bootloader")
    _common(apply_p)
    apply_p.add_argument("--dry-run", action="store_true", help="report the changes, write nothing")
    apply_p.add_argument(
        "--only", choices=["exporter"], help="place only the exporter's unit (bmslice-exporter.service), nothing else"
    )
    _exporter_args(apply_p)
    apply_p.set_defaults(handler=cmd_host_apply)

    audit_p = sub.add_parser("audit", help="prove the isolation on the running host; exit 1 on any violation")
    _common(audit_p)
    audit_p.add_argument("--json", action="store_true")
    audit_p.set_defaults(handler=cmd_audit)


def main(argv: Sequence[str] | None = None) -> int:
    """These four commands alone (for tests), with bmslice's parser and error handling."""
    return run(standalone_parser(register), argv)


if __name__ == "__main__":
    sys.exit(main())
