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

from bmslice.cli.common import EXIT_DRIFT, EXIT_OK, print_json, print_warnings, run, standalone_parser
from bmslice.errors import BmsliceError, TopologyError

if TYPE_CHECKING:
    from bmslice.model.plan import Plan
    from bmslice.model.topology import HostTopology


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
            print(finding.line())
        warned = sum(f.level is Level.WARN for f in findings)
        print(f"preflight: {len(failed)} fail, {warned} warn" if failed else f"preflight: ready ({warned} warn)")
    print_warnings(plan.warnings)
    return EXIT_DRIFT if failed else EXIT_OK


def cmd_host_config(args: argparse.Namespace) -> int:
    from bmslice.apply.tree_files import EXEC_MODE
    from bmslice.render.host_files import render_host_files
    from bmslice.render.sriov_files import EXECUTABLES

    topo, plan = _plan(args)
    files = render_host_files(plan, topo)
    out: Path = args.out
    try:
        for rel, text in files.items():
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if rel in EXECUTABLES:
                path.chmod(EXEC_MODE)
    except OSError as exc:
        raise BmsliceError(f"--out {out}: cannot write: {exc.strerror or exc}") from None
    for rel in files:
        print(out / rel)
    print(f"kernel args: {' '.join(plan.host.kernel_args)}")
    print_warnings(plan.warnings)
    return EXIT_OK


def cmd_host_apply(args: argparse.Namespace) -> int:
    from bmslice.apply.host_apply import apply_host, bootloader_name
    from bmslice.render.host_files import render_host_files, runtime_settings

    topo, plan = _plan(args)
    root = _root(args)
    files = render_host_files(plan, topo)
    result = apply_host(plan, files, runtime_settings(plan), root, dry_run=args.dry_run, distro=topo.distro)
    verb = {"create": "wrote", "update": "updated", "remove": "removed", "set": "set"}
    print(
        f"{'dry run: ' if args.dry_run else ''}host-apply on {root}; bootloader: {bootloader_name(result.bootloader)}"
    )
    for change in result.changes:
        detail = f" ({change.detail})" if change.detail else ""
        action = f"would {change.action}" if args.dry_run else verb[change.action]
        print(f"  {action} /{change.path}{detail}")
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
        for finding in report.passed:
            print(finding.line())
        by_cpu: dict[str, list[str]] = {}
        for e in report.excepted:
            by_cpu.setdefault(e.cpus.format(), []).append(e.comm)
        for cpus, names in by_cpu.items():
            print(f"excepted CPU {cpus}: {len(names)} kernel thread(s) bound there: {', '.join(names)}")
        for finding in report.warnings:
            print(finding.line())
        for finding in report.violations:
            print(finding.line())
        count = len(report.violations)
        print(f"audit: {count} violation(s)" if count else "audit: isolation holds")
    print_warnings(plan.warnings)
    return EXIT_DRIFT if report.violations else EXIT_OK


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=Path, metavar="SPEC")
    parser.add_argument(
        "--host-root", type=Path, default=Path("/"), metavar="DIR", help="the host's root directory (default /)"
    )


def register(sub: argparse._SubParsersAction[Any]) -> None:
    preflight = sub.add_parser("preflight", help="is this server ready to be sliced? ok/warn/fail; exit 1 on fail")
    _common(preflight)
    preflight.add_argument("--json", action="store_true")
    preflight.set_defaults(handler=cmd_preflight)

    config = sub.add_parser("host-config", help="render the host files (kernel args, hugepages, IRQ, vfio) to DIR")
    _common(config)
    config.add_argument("--out", type=Path, required=True, metavar="DIR")
    config.set_defaults(handler=cmd_host_config)

    apply_p = sub.add_parser("host-apply", help="place the host files and runtime settings; never runs the bootloader")
    _common(apply_p)
    apply_p.add_argument("--dry-run", action="store_true", help="report the changes, write nothing")
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
