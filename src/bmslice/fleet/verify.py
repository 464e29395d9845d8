"""`bmslice fleet verify`: every server's verify result in one report — which hosts drift, how.

A server reached through libvirt is verified like `bmslice verify` does it (live
definitions, pins and thread affinities against the plan). A server given as a host tree
is an offline stand-in: its spec is planned on the tree (does the placement still fit,
is a reboot pending) and the report says the live state was not compared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from bmslice.errors import BmsliceError
from bmslice.fleet.check import check_host, unsupported_features
from bmslice.fleet.hosts import host_source, read_host
from bmslice.model.fleet import Fleet
from bmslice.model.spec import Spec, spec_from_data
from bmslice.verify.verifier import VerifyReport

Verifier = Callable[[Spec, str, str, Path | None], VerifyReport]


class HostStatus(StrEnum):
    OK = "ok"  # live slices match the plan
    DRIFT = "drift"  # live slices differ from the plan
    ERROR = "error"  # unreachable, or bmslice refused (the reason is in `drift`)
    PLANNED = "planned"  # host tree: the spec plans there; live state not compared
    REFUSED = "refused"  # host tree: the spec no longer plans there
    UNCHECKED = "unchecked"  # the spec uses features this bmslice cannot check yet
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

    @property
    def failed(self) -> list[HostReport]:
        return [h for h in self.hosts if h.status.failed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "failed_hosts": [h.host for h in self.failed],
            "hosts": [h.to_dict() for h in self.hosts],
            "notes": self.notes,
        }


def _tree_report(fleet: Fleet, host: str, data: Mapping[str, Any], origin: str) -> HostReport:
    inv = fleet.host(host)
    report = HostReport(host, host_source(inv), HostStatus.PLANNED)
    try:
        check = check_host(host, data, read_host(inv), origin)
    except BmsliceError as exc:
        report.status = HostStatus.REFUSED
        report.drift.append(str(exc))
        return report
    if check.plan is None:
        report.status = HostStatus.UNCHECKED
        report.notes.append(check.skipped or "not checked")
        return report
    report.notes.append(f"host tree: {len(check.plan.vms)} slice(s) plan here; the live state was not compared")
    if check.plan.host.reboot_required:
        report.notes.append(
            "reboot pending: kernel args not active yet: " + " ".join(check.plan.host.missing_kernel_args)
        )
    if check.partial:
        report.notes.append(check.partial)
    report.notes.extend(check.warnings)
    return report


def _live_report(fleet: Fleet, host: str, data: Mapping[str, Any], origin: str, verifier: Verifier) -> HostReport:
    inv = fleet.host(host)
    report = HostReport(host, host_source(inv), HostStatus.OK)
    missing = unsupported_features(data)
    if missing:
        report.status = HostStatus.UNCHECKED
        report.notes.append(f"this bmslice cannot check {', '.join(missing)} yet")
        return report
    try:
        live = verifier(spec_from_data(dict(data), origin), origin, inv.uri, None)
    except BmsliceError as exc:
        report.status = HostStatus.ERROR
        report.drift.append(str(exc))
        return report
    report.drift = list(live.drift)
    report.notes = list(live.notes)
    report.status = HostStatus.DRIFT if report.drift else HostStatus.OK
    return report


def verify_fleet(
    fleet: Fleet,
    specs: Mapping[str, Mapping[str, Any]],
    verifier: Verifier | None = None,
    notes: list[str] | None = None,
) -> FleetReport:
    """`specs`: each host's generated spec data (hosts without one are idle)."""
    if verifier is None:
        from bmslice.verify.verifier import verify

        verifier = verify
    reports = []
    for inv in sorted(fleet.inventory, key=lambda h: h.name):
        data = specs.get(inv.name)
        origin = f"{inv.name}/spec.yaml"
        if data is None:
            reports.append(HostReport(inv.name, host_source(inv), HostStatus.IDLE, notes=["no slices placed here"]))
        elif inv.host_root is not None or inv.hwloc is not None:
            reports.append(_tree_report(fleet, inv.name, data, origin))
        else:
            reports.append(_live_report(fleet, inv.name, data, origin, verifier))
    return FleetReport(reports, list(notes or []))
