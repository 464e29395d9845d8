"""`bmslice fleet plan | ansible | verify`: many servers, the clusters they host, one plan.

`register(sub)` adds the `fleet` command to bmslice's parser; `main(argv)` runs it on its
own with the same error handling (one `error:` line, exit 2).
"""

from __future__ import annotations

import argparse
import stat
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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
from bmslice.errors import SpecError
from bmslice.safe_text import one_line

if TYPE_CHECKING:  # the fleet model costs start-up time every other command should not pay
    from bmslice.fleet.switch_table import LearnedMac
    from bmslice.fleet.verify import FleetReport
    from bmslice.model.fleet import Fleet, Placement

PLACEMENT_FILE = "placement.json"


@dataclass
class _Planned:
    fleet: Fleet
    placement: Placement
    files: dict[str, str]
    specs: dict[str, dict[str, Any]]
    warnings: list[str]
    checks: dict[str, str]  # host -> "ok" or why it was not checked


def _existing(args: argparse.Namespace) -> tuple[Placement | None, Path | None]:
    path: Path | None = args.placement
    out: Path | None = getattr(args, "out", None)
    if out is not None:  # held to the writer's rule before anything is read from it
        from bmslice.apply.safe_dir import check_out, out_rule

        check_out(out, [PLACEMENT_FILE], out_rule("--out", args.out_shared))
    if path is None and out is not None and (out / PLACEMENT_FILE).is_file():
        path = out / PLACEMENT_FILE
    if path is None:
        return None, None
    from bmslice.model.fleet import placement_from_dict
    from bmslice.model.input_file import read_json

    data = read_json(path, "placement file")

    return placement_from_dict(data, str(path)), path


def _ssh_keys(fleet: Fleet) -> list[str]:
    from bmslice.model.spec import SSH_KEY_RE

    path = fleet.ssh_keys_file
    if path is None:
        return []
    from bmslice.model.input_file import read_input_text

    text = read_input_text(path, "ssh_keys_file")
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not SSH_KEY_RE.fullmatch(line):
            raise SpecError(f"ssh_keys_file {path}: line {number} is not an SSH public key")
        keys.append(line)
    return keys


def _join_file_warnings(fleet: Fleet) -> list[str]:
    """Only the file's presence and mode are looked at: bmslice never reads a join file."""
    out = []
    for cluster in fleet.clusters:
        path = cluster.kubeadm_join_file
        if path is None:
            continue
        try:
            mode = path.stat().st_mode
        except OSError:
            out.append(
                f"{cluster.name}: kubeadm_join_file {path} does not exist yet; create it before running the playbook"
            )
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            out.append(f"{cluster.name}: kubeadm_join_file {path} is readable by others; chmod 600 it")
    return out


def _plan(args: argparse.Namespace, check: bool = True) -> _Planned:
    from bmslice.fleet.check import check_host
    from bmslice.fleet.guest import guest_warnings
    from bmslice.fleet.hosts import read_hosts
    from bmslice.fleet.placement import place
    from bmslice.fleet.render import render_fleet
    from bmslice.model.fleet import load_fleet

    fleet = load_fleet(args.fleet)
    existing, source = _existing(args)
    topologies = read_hosts(fleet)
    kwargs: dict[str, Any] = {"allow_move": getattr(args, "allow_move", False)}
    if getattr(args, "time_budget", None) is not None:
        kwargs["budget_s"] = args.time_budget
    placement = place(fleet, topologies, existing, **kwargs)
    origin = args.fleet.name
    files = render_fleet(fleet, placement, _ssh_keys(fleet), origin)
    specs = _specs(files)
    warnings = guest_warnings(fleet, placement) + _join_file_warnings(fleet)
    if source is not None:
        names = {v.name for v in placement.vms}
        kept = sum(1 for vm in existing.vms if vm.name in names and vm.name not in placement.moved) if existing else 0
        warnings.insert(0, f"kept {kept} placed VM(s) where they are ({source})")
        if placement.moved:
            warnings.insert(
                1, f"--allow-move: {len(placement.moved)} VM(s) move and are rebuilt: {', '.join(placement.moved)}"
            )
    checks: dict[str, str] = {}
    if check:
        judged = dict(placement.planned)  # the placement had the host planner judge these specs already
        for host, data in sorted(specs.items()):
            said = (
                judged[host]
                if host in judged
                else check_host(host, data, topologies[host], f"{host}/spec.yaml").warnings
            )
            checks[host] = "ok"
            warnings.extend(f"{host}: {w}" for w in said)
    return _Planned(fleet, placement, files, specs, warnings, checks)


def _specs(files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each host's generated spec, as data, from the files of a plan."""
    import yaml

    return {
        path.split("/")[1]: yaml.safe_load(text)
        for path, text in files.items()
        if path.startswith("hosts/") and path.endswith("/spec.yaml")
    }


def _write(args: argparse.Namespace, files: dict[str, str]) -> None:
    from bmslice.apply.safe_dir import out_rule, write_out

    encoded = {rel: text.encode() for rel, text in sorted(files.items())}
    write_out(args.out, encoded, out_rule("--out", args.out_shared))


def _say_warnings(planned: _Planned) -> None:
    print_warnings(planned.warnings)


def cmd_plan(args: argparse.Namespace) -> int:
    from bmslice.fleet.fabric import fabric_data
    from bmslice.model.fleet import placement_to_dict

    planned = _plan(args, check=not args.no_check)
    if args.out is not None:
        _write(args, planned.files)
    if args.json:
        print_json(
            {
                "placement": placement_to_dict(planned.placement),
                "hosts": planned.specs,
                "fabric": fabric_data(planned.fleet, planned.placement),
                "checks": planned.checks,
                "warnings": planned.warnings,
            }
        )
    else:
        sys.stdout.write(planned.files["summary.txt"])
        for host, result in planned.checks.items():
            if result.startswith("not checked"):
                print(f"{host}: per-host plan {result}")
        if args.out is not None:
            print(f"wrote {len(planned.files)} file(s) to {args.out}")
    _say_warnings(planned)
    return EXIT_OK


def cmd_ansible(args: argparse.Namespace) -> int:
    from bmslice.fleet.ansible import render_ansible

    planned = _plan(args)
    files = render_ansible(planned.fleet, planned.placement, planned.files, args.fleet.name)
    _write(args, files)
    sys.stdout.write(planned.files["summary.txt"])
    print(f"wrote {len(files)} file(s) to {args.out}; run:")
    collections = Path(__file__).resolve().parents[3]
    hint = (
        str(collections)
        if (collections / "ansible_collections").is_dir()
        else "<directory holding ansible_collections/>"
    )
    print(f"  cd {args.out} && ANSIBLE_COLLECTIONS_PATH={hint} ansible-playbook -i inventory.yml site.yml --check")
    _say_warnings(planned)
    return EXIT_OK


def _switch_tables(pairs: Sequence[str]) -> dict[str, tuple[LearnedMac, ...]]:
    """--switch-table SWITCH=FILE, each read and parsed; one `error:` line for a bad one."""
    from bmslice.fleet.switch_table import parse_switch_table
    from bmslice.model.input_file import read_input_text

    tables: dict[str, tuple[LearnedMac, ...]] = {}
    for pair in pairs:
        switch, sep, name = pair.partition("=")
        if not sep or not switch or not name:
            raise SpecError(f"--switch-table {pair!r}: give SWITCH=FILE (the switch's name in the fleet file)")
        if switch in tables:
            raise SpecError(f"--switch-table: {switch} is given twice")
        text = read_input_text(Path(name), "--switch-table")
        tables[switch] = parse_switch_table(text, name)
    return tables


def _section(title: str, lines: Sequence[str]) -> None:
    if lines:
        print(title)
        for line in lines:
            print(f"  {one_line(line)}")


def _print_verify(report: FleetReport) -> None:
    from bmslice.fleet.verify import HostStatus

    width = max(len(h.host) for h in report.hosts)
    for host in report.hosts:
        print(f"{host.host.ljust(width)}  {host.status.value:<9}  {host.source}")
        for line in host.drift:  # drift quotes what libvirt and the host say: one escaped line each
            print(f"{' ' * width}    {one_line(line)}")
        for note in host.notes:
            print(f"{' ' * width}    note: {one_line(note)}")
    _section("fabric (what the switches learned):", [check.line() for check in report.fabric])
    for note in report.notes:
        print(f"note: {one_line(note)}")
    _section("to check the fabric, capture what each switch learned and pass it back:", report.capture)
    failed = report.failed
    counts = Counter(h.status.value for h in report.hosts)
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    # host trees are planned, not compared: say so rather than let "no drift" read as checked slices
    live = "" if counts[HostStatus.OK.value] else "; no host's live slices were compared"
    print(
        f"fleet: {len(failed)} of {len(report.hosts)} host(s) drift or fail: {', '.join(h.host for h in failed)}"
        if failed
        else f"fleet: no drift ({tally}){live}"
    )
    if report.tables:
        print(_fabric_summary(report))


def _fabric_summary(report: FleetReport) -> str:
    """How many VM NICs were checked against how many are planned, always: none checked is no pass."""
    checked, planned, wrong = len(report.fabric_checked), report.fabric_planned, report.fabric_failed
    counted = f"{checked} of {planned} planned VM NIC(s) checked"
    if not checked:
        return f"fabric: {counted}: nothing verified, not a pass (tables of: {', '.join(report.tables)})"
    if wrong:
        return f"fabric: {len(wrong)} of {checked} checked VM NIC(s) missing or learned elsewhere; {counted}"
    return f"fabric: every checked VM NIC learned where planned; {counted}"


def cmd_verify(args: argparse.Namespace) -> int:
    from bmslice.fleet.render import render_fleet
    from bmslice.fleet.verify import verify_fleet

    tables = _switch_tables(args.switch_table)
    if args.placement is None:
        planned = _plan(args, check=False)
        fleet, placement, specs = planned.fleet, planned.placement, planned.specs
        notes = list(placement.notes)
        _say_warnings(planned)
    else:
        # Verify what was planned (and applied): the placement file, not a fresh placement.
        from bmslice.model.fleet import load_fleet

        fleet = load_fleet(args.fleet)
        existing, _ = _existing(args)
        assert existing is not None
        placement = existing
        known = {r.name for r in fleet.vm_requests()}
        hosts = {h.name for h in fleet.inventory}
        stray = [vm.name for vm in placement.vms if vm.name not in known or vm.host not in hosts]
        if stray:
            raise SpecError(f"{args.placement}: {', '.join(stray)} not in the fleet's clusters or inventory")
        specs = _specs(render_fleet(fleet, placement, [], args.fleet.name))
        placed = {vm.name for vm in placement.vms}
        notes = [f"{name} is in the fleet but not in {args.placement}" for name in sorted(known - placed)]
    report = verify_fleet(fleet, specs, notes=notes, placement=placement, tables=tables, fleet_file=str(args.fleet))
    if args.json:
        print_json(report.to_dict())
    else:
        _print_verify(report)
    return EXIT_OK if report.ok else EXIT_DRIFT


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0 (at most 86400)")
    return value


def _placement_options(parser: argparse.ArgumentParser) -> None:
    from bmslice.fleet import DEFAULT_BUDGET_S

    parser.add_argument(
        "--allow-move",
        action="store_true",
        help="let VMs of the kept placement move (the fewest, listed) when the new ones do not fit otherwise",
    )
    parser.add_argument(
        "--time-budget",
        type=_seconds,
        metavar="SECONDS",
        help=f"how long the placement may search for the best layout (default {DEFAULT_BUDGET_S:g}); past it the "
        "best found is kept and said to be feasible only",
    )


def cmd_capacity(args: argparse.Namespace) -> int:
    from bmslice.fleet.capacity import fleet_room
    from bmslice.fleet.hosts import read_hosts
    from bmslice.model.fleet import load_fleet
    from bmslice.model.sizes import format_mib

    fleet = load_fleet(args.fleet)
    existing, source = _existing(args)
    room = fleet_room(fleet, read_hosts(fleet), existing)
    if args.json:
        print_json(
            {
                "kept": source is not None,
                "clusters": [
                    {"cluster": c.cluster, "more": c.more, "where": dict(c.hosts), "next_refused": c.refusal}
                    for c in room.clusters
                ],
                "hosts": [
                    {
                        "host": h.host,
                        "role": h.role.value,
                        "rack": h.rack,
                        "more_workers": dict(h.fits),
                        "nodes": [
                            {"node": n.node, "free_cores": n.cores, "free_memory_mib": n.memory_mib} for n in h.nodes
                        ],
                    }
                    for h in room.hosts
                ],
            }
        )
        return EXIT_OK
    kept = f"placement kept: {source}" if source is not None else "placed afresh"
    print(f"capacity of {args.fleet} ({len(room.placement.vms)} VMs, {kept})")
    for c in room.clusters:
        where = ", ".join(f"{host} {count}" for host, count in c.hosts)
        print(f"{c.cluster}: {c.more} more worker(s) fit" + (f" ({where})" if where else ""))
        print(f"  one more is refused: {c.refusal}")
    for h in room.hosts:
        nodes = ", ".join(
            f"node {n.node} {n.cores} cores {format_mib(n.memory_mib) if n.memory_mib else '0MiB'}" for n in h.nodes
        )
        fits = ", ".join(f"{cluster} {count}" for cluster, count in h.fits)
        role = f"{h.role.value}, {h.rack}"
        print(f"{h.host} ({role}): " + (f"more workers alone: {fits}; " if fits else "") + f"free: {nodes}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    fleet = sub.add_parser("fleet", help="place the clusters of a fleet file on its servers; Ansible; verify")
    commands = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    keep_help = f"keep the VMs of this placement where they are (default: OUT/{PLACEMENT_FILE} when it exists)"

    plan = commands.add_parser("plan", help="place every cluster VM; per-host specs, fabric VLANs, cloud-init")
    plan.add_argument("fleet", type=path_arg, metavar="FLEET")
    add_out_args(plan, required=False, help="write specs, user-data, Junos config, placement")
    plan.add_argument("--json", action="store_true", help="print placement, specs and fabric as JSON")
    plan.add_argument("--placement", type=path_arg, metavar="FILE", help=keep_help)
    plan.add_argument("--no-check", action="store_true", help="skip the per-host planner check of each spec")
    _placement_options(plan)
    plan.set_defaults(handler=cmd_plan)

    ansible = commands.add_parser("ansible", help="write an Ansible inventory and playbook for the fleet")
    ansible.add_argument("fleet", type=path_arg, metavar="FLEET")
    add_out_args(ansible, required=True)
    ansible.add_argument("--placement", type=path_arg, metavar="FILE", help=keep_help)
    _placement_options(ansible)
    ansible.set_defaults(handler=cmd_ansible)

    verify = commands.add_parser("verify", help="every host's verify result in one report; exit 1 on drift")
    verify.add_argument("fleet", type=path_arg, metavar="FLEET")
    verify.add_argument(
        "--placement", type=path_arg, metavar="FILE", help="verify this placement (default: place afresh)"
    )
    verify.add_argument("--json", action="store_true")
    verify.add_argument(
        "--switch-table",
        action="append",
        default=[],
        metavar="SWITCH=FILE",
        help="what SWITCH learned: its `show ethernet-switching table | display json` (or plain text) output",
    )
    verify.set_defaults(handler=cmd_verify)

    capacity = commands.add_parser(
        "capacity", help="how many more workers of each cluster the fleet takes, where, and each host's room"
    )
    capacity.add_argument("fleet", type=path_arg, metavar="FLEET")
    capacity.add_argument(
        "--placement", type=path_arg, metavar="FILE", help="keep this placement (default: place afresh)"
    )
    capacity.add_argument("--json", action="store_true")
    capacity.set_defaults(handler=cmd_capacity)


def main(argv: Sequence[str] | None = None) -> int:
    return run(standalone_parser(register), argv)


if __name__ == "__main__":
    sys.exit(main())
