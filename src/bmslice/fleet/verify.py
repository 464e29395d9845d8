"""`bmslice fleet verify`: every server's verify result in one report — which hosts drift, how.

A server reached through libvirt is verified like `bmslice verify` does it (live
definitions, pins and thread affinities against the plan). A server given as a host tree
is an offline stand-in: its spec is planned on the tree (does the placement still fit)
and the tree is audited as `bmslice audit` does it (IRQs, threads and hugepages against
the plan's isolation; kernel args not booted yet are a pending reboot, not drift). The
report says the live slices were not compared.

With the switches' captured `show ethernet-switching table` output, the report also says,
per VM NIC, whether the fabric learned its MAC where the plan put it (`fabric_check`);
without them, it says how to capture them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from bmslice.errors import BmsliceError, SpecError
from bmslice.fleet.check import check_host
from bmslice.fleet.fabric_check import NicCheck, NicStatus, capture_commands, check_fabric, expected_nics
from bmslice.fleet.hosts import host_source, read_host
from bmslice.fleet.switch_table import LearnedMac
from bmslice.model.fleet import Fleet, Placement
from bmslice.model.plan import Plan
from bmslice.model.spec import Spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.verify.verifier import VerifyReport

Verifier = Callable[[Spec, str, str, Path | None], VerifyReport]


class HostStatus(StrEnum):
    OK = "ok"  # live slices match the plan
    DRIFT = "drift"  # live slices differ from the plan
    ERROR = "error"  # unreachable, or bmslice refused (the reason is in `drift`)
    PLANNED = "planned"  # host tree: the spec plans there; live state not compared
    REFUSED = "refused"  # host tree: the spec no longer plans there
    IDLE = "idle"  # the fleet places nothing here

    @property
    def failed(self) -> bool:
        return self in (HostStatus.DRIFT, HostStatus.ERROR, HostStatus.REFUSED)


@dataclass
class HostReport:
    host: str
    source: str
    status: HostStatus
    drift: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "source": self.source,
            "status": self.status.value,
            "drift": self.drift,
            "notes": self.notes,
        }


@dataclass
class FleetReport:
    hosts: list[HostReport]
    notes: list[str] = field(default_factory=list)
    fabric: list[NicCheck] = field(default_factory=list)  # per VM NIC, when switch tables were given
    capture: list[str] = field(default_factory=list)  # how to capture the switch tables, when not
    tables: tuple[str, ...] = ()  # the switches whose tables were given
    fabric_planned: int = 0  # VM NICs (a VF each) the placement puts on the fabric

    @property
    def failed(self) -> list[HostReport]:
        return [h for h in self.hosts if h.status.failed]

    @property
    def fabric_failed(self) -> list[NicCheck]:
        return [c for c in self.fabric if c.status.failed]

    @property
    def fabric_checked(self) -> list[NicCheck]:
        return [c for c in self.fabric if c.status is not NicStatus.NOT_CHECKED]

    @property
    def fabric_unverified(self) -> bool:
        """Switch tables were given and not one NIC was checked against them: that is no pass."""
        return bool(self.tables) and not self.fabric_checked

    @property
    def ok(self) -> bool:
        return not self.failed and not self.fabric_failed and not self.fabric_unverified

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed_hosts": [h.host for h in self.failed],
            "hosts": [h.to_dict() for h in self.hosts],
            "fabric": [c.to_dict() for c in self.fabric],
            "fabric_counts": {
                "planned": self.fabric_planned,
                "checked": len(self.fabric_checked),
                "failed": len(self.fabric_failed),
                "tables": list(self.tables),
            },
            "capture_commands": self.capture,
            "notes": self.notes,
        }


# Audit checks that only say "the planned kernel args are not booted yet": a pending reboot
# (a note, as `bmslice verify` has it), not drift.
BOOT_CHECKS = ("kernel args", "isolated", "nohz_full")


# What each host's report already read and planned: the fabric check reuses it (a live host's
# topology comes through libvirt or ssh: reading it twice doubled the round trips).
Seen = dict[str, tuple[Plan, HostTopology]]


def _tree_report(fleet: Fleet, host: str, data: Mapping[str, Any], origin: str, seen: Seen) -> HostReport:
    inv = fleet.host(host)
    report = HostReport(host, host_source(inv), HostStatus.PLANNED)
    topo = read_host(inv)
    try:
        check = check_host(host, data, topo, origin)
    except BmsliceError as exc:
        report.status = HostStatus.REFUSED
        report.drift.append(str(exc))
        return report
    seen[host] = (check.plan, topo)
    report.notes.append(f"host tree: {len(check.plan.vms)} slice(s) plan here; the live slices were not compared")
    if inv.host_root is not None:
        _audit_tree(report, check.plan, topo, inv.host_root)
    elif check.plan.host.reboot_required:
        missing = " ".join(check.plan.host.missing_kernel_args)
        report.notes.append(f"reboot pending: kernel args not active yet: {missing}")
    report.notes.extend(check.warnings)
    return report


def _audit_tree(report: HostReport, plan: Plan, topo: HostTopology, root: Path) -> None:
    """`bmslice audit` on the tree: IRQs, threads and hugepages against the plan's isolation."""
    from bmslice.topology.sysfs import FsRoot
    from bmslice.verify.audit import audit
    from bmslice.verify.host_state import read_runtime

    result = audit(plan, topo, read_runtime(FsRoot(root)))
    pending = plan.host.reboot_required
    waiting = 0
    for finding in result.unread:  # a tree stands in for a server: it may hold no /proc processes or IRQs
        report.notes.append(f"audit: {finding.check}: the tree has none to check (no /proc entries)")
    for finding in result.violations:
        if finding in result.unread:
            continue
        if pending and finding.check.startswith(BOOT_CHECKS):
            waiting += 1
        else:
            report.drift.append(f"audit: {finding.check}: {finding.message}")
    if pending:
        missing = " ".join(plan.host.missing_kernel_args)
        report.notes.append(f"reboot pending ({waiting} audit check(s) wait for it): kernel args not active: {missing}")
    if report.drift:
        report.status = HostStatus.DRIFT


def _live_report(
    fleet: Fleet, host: str, data: Mapping[str, Any], origin: str, verifier: Verifier, seen: Seen
) -> HostReport:
    """The host's slices against their plan through libvirt; that plan (the running slices kept
    where they are) and the topology it was made on go into `seen` for the fabric check."""
    inv = fleet.host(host)
    report = HostReport(host, host_source(inv), HostStatus.OK)
    try:
        live = verifier(spec_from_data(dict(data), origin), origin, inv.uri, None)
    except BmsliceError as exc:
        report.status = HostStatus.ERROR
        report.drift.append(str(exc))
        return report
    seen[host] = (live.plan, live.topology)
    report.drift = list(live.drift)
    report.notes = list(live.notes)
    report.status = HostStatus.DRIFT if report.drift else HostStatus.OK
    return report


def _fabric(
    fleet: Fleet,
    placement: Placement,
    specs: Mapping[str, Mapping[str, Any]],
    tables: Mapping[str, Sequence[LearnedMac]],
    notes: list[str],
    seen: Seen,
) -> list[NicCheck]:
    """Each VM NIC against the captured tables; the expected MACs come from each host's plan:
    for a live host the one verify compared against (its running slices kept, so VFs they hold
    count as theirs: planned afresh, a PF whose VFs are all in use would refuse them)."""
    plans = {}
    topologies = {}
    for host, data in sorted(specs.items()):
        try:
            if host not in seen:  # its report could not plan it: read afresh for the reason
                topo = read_host(fleet.host(host))
                seen[host] = (check_host(host, data, topo, f"{host}/spec.yaml").plan, topo)
            plans[host], topologies[host] = seen[host]
        except BmsliceError as exc:
            notes.append(f"fabric: the NICs of {host} are not checked, their MACs are unknown: {exc}")
    expected, more = expected_nics(fleet, placement, plans, topologies)
    notes.extend(f"fabric: {note}" for note in more)
    return check_fabric(expected, tables)


def check_table_switches(fleet: Fleet, tables: Mapping[str, object], fleet_file: str) -> None:
    """A table of a switch the fleet does not cable is refused: its NICs would all read as checked."""
    cabled = sorted({port.switch for h in fleet.inventory for port in h.nics.values()})
    for switch in sorted(tables):
        if switch not in cabled:
            raise SpecError(
                f"--switch-table {switch}: no inventory NIC of {fleet_file} is cabled to a switch of that name "
                f"(its switches: {', '.join(cabled) or 'none'})"
            )


def verify_fleet(
    fleet: Fleet,
    specs: Mapping[str, Mapping[str, Any]],
    verifier: Verifier | None = None,
    notes: list[str] | None = None,
    placement: Placement | None = None,
    tables: Mapping[str, Sequence[LearnedMac]] | None = None,
    fleet_file: str = "FLEET",
) -> FleetReport:
    """`specs`: each host's generated spec data (hosts without one are idle). With `tables`
    (switch name -> what it learned), each VM NIC of `placement` is checked against them."""
    check_table_switches(fleet, tables or {}, fleet_file)
    if verifier is None:
        from bmslice.verify.verifier import verify

        verifier = verify
    reports = []
    seen: Seen = {}
    for inv in sorted(fleet.inventory, key=lambda h: h.name):
        data = specs.get(inv.name)
        origin = f"{inv.name}/spec.yaml"
        if data is None:
            reports.append(HostReport(inv.name, host_source(inv), HostStatus.IDLE, notes=["no slices placed here"]))
        elif inv.host_root is not None or inv.hwloc is not None:
            reports.append(_tree_report(fleet, inv.name, data, origin, seen))
        else:
            reports.append(_live_report(fleet, inv.name, data, origin, verifier, seen))
    report = FleetReport(reports, list(notes or []), tables=tuple(sorted(tables or {})))
    if placement is not None and tables:
        report.fabric = _fabric(fleet, placement, specs, tables, report.notes, seen)
        report.fabric_planned = sum(nic.count for vm in placement.vms for nic in vm.nics)
    elif placement is not None:
        switches = sorted(
            {
                port.switch
                for vm in placement.vms
                for nic in vm.nics
                if (port := fleet.host(vm.host).nics.get(nic.pf)) is not None
            }
        )
        if switches:
            report.capture = capture_commands(fleet_file, switches)
    return report
