"""The design note's last check: the fabric sees each guest NIC where the plan put it (pure).

bmslice knows every entry the switches should learn: for each VM NIC, its MAC (a VF's is
the one the plan assigns; a passed-through NIC keeps its own, the PF's permanent MAC), the
switch port its PF is cabled to, and the tenant VLAN. Against the tables captured from the
switches (`switch_table`), each NIC is

- learned: on the planned switch, port and VLAN;
- elsewhere: learned, but on another port or VLAN (or switch): both places are named;
- missing: in no captured table (the guest is down, or its frames never reach the switch);
- not checked: no table was captured from the switch it is cabled to.

A passed-through NIC whose MAC the host no longer sees (bound to vfio-pci, its netdev is
gone) is checked by its port: some MAC must be learned there on the tenant VLAN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bmslice.fleet.switch_table import LearnedMac
from bmslice.model.fleet import Fleet, Placement
from bmslice.model.plan import Plan
from bmslice.model.topology import HostTopology

CAPTURE = "show ethernet-switching table | display json | no-more"
CAPTURE_TEXT = "show ethernet-switching table | no-more"


class NicStatus(StrEnum):
    LEARNED = "learned"
    ELSEWHERE = "elsewhere"
    MISSING = "missing"
    NOT_CHECKED = "not checked"

    @property
    def failed(self) -> bool:
        return self in (NicStatus.ELSEWHERE, NicStatus.MISSING)


@dataclass(frozen=True)
class ExpectedNic:
    vm: str
    host: str
    nic: str  # "eno1", or "eno2 VF 3"
    mac: str | None  # None: a passed-through NIC whose MAC the host does not see
    switch: str
    port: str
    vlan: int
    vlan_name: str

    def where(self) -> str:
        return f"{self.switch} {self.port} VLAN {self.vlan_name} ({self.vlan})"


@dataclass(frozen=True)
class NicCheck:
    expected: ExpectedNic
    status: NicStatus
    message: str

    def line(self) -> str:
        e = self.expected
        return f"{e.vm} {e.host} {e.nic} {e.mac or '(MAC unknown)'}: {self.status.value}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        e = self.expected
        return {
            "vm": e.vm,
            "host": e.host,
            "nic": e.nic,
            "mac": e.mac,
            "switch": e.switch,
            "port": e.port,
            "vlan": e.vlan,
            "vlan_name": e.vlan_name,
            "status": self.status.value,
            "message": self.message,
        }


def expected_nics(
    fleet: Fleet, placement: Placement, plans: Mapping[str, Plan], topologies: Mapping[str, HostTopology]
) -> tuple[list[ExpectedNic], list[str]]:
    """One entry per VM NIC (per VF) cabled to a known switch port; notes for the others."""
    out: list[ExpectedNic] = []
    notes: list[str] = []
    for vm in placement.vms:
        plan = plans.get(vm.host)
        if plan is None:
            continue  # the caller says why this host's plan is unknown
        cluster = fleet.cluster(vm.cluster)
        inv = fleet.host(vm.host)
        for dev in plan.vm(vm.name).devices:
            pf = dev.interface or dev.pf or dev.known_address
            nic = pf if dev.type != "vf" else f"{pf} VF {dev.vf_index}"
            port = inv.nics.get(pf)
            if port is None:
                notes.append(f"{vm.name} {nic}: its NIC is not cabled to a switch port in the inventory; not checked")
                continue
            mac = dev.mac
            if dev.type != "vf":
                iface = topologies[vm.host].interface(pf)
                mac = iface.mac if iface is not None else None
            out.append(
                ExpectedNic(
                    vm.name,
                    vm.host,
                    nic,
                    mac.lower() if mac else None,
                    port.switch,
                    port.port,
                    cluster.vlan,
                    cluster.switch_vlan,
                )
            )
    return out, notes


def _same_vlan(seen: LearnedMac, nic: ExpectedNic) -> bool:
    return seen.vlan == nic.vlan_name or seen.vlan_id == nic.vlan


def _at(switch: str, seen: LearnedMac) -> str:
    vlan = f"{seen.vlan} ({seen.vlan_id})" if seen.vlan_id is not None else seen.vlan
    return f"{switch} {seen.port} VLAN {vlan}"


def check_nic(nic: ExpectedNic, tables: Mapping[str, Sequence[LearnedMac]]) -> NicCheck:
    if nic.switch not in tables:
        return NicCheck(nic, NicStatus.NOT_CHECKED, f"no table captured from {nic.switch}; planned {nic.where()}")
    if nic.mac is None:
        here = [m for m in tables[nic.switch] if m.port == nic.port and _same_vlan(m, nic)]
        if here:
            macs = ", ".join(m.mac for m in here)
            return NicCheck(nic, NicStatus.LEARNED, f"{macs} learned on {nic.where()} (the host does not see the MAC)")
        return NicCheck(nic, NicStatus.MISSING, f"nothing learned on {nic.where()} (the host does not see the MAC)")
    seen = [(switch, m) for switch, table in sorted(tables.items()) for m in table if m.mac == nic.mac]
    right = [m for switch, m in seen if switch == nic.switch and m.port == nic.port and _same_vlan(m, nic)]
    wrong = [_at(switch, m) for switch, m in seen if m not in right or switch != nic.switch]
    if right:
        also = f"; also on {', '.join(wrong)}" if wrong else ""
        return NicCheck(nic, NicStatus.LEARNED, f"on {nic.where()}, as planned{also}")
    if wrong:
        return NicCheck(nic, NicStatus.ELSEWHERE, f"learned on {', '.join(wrong)}; planned {nic.where()}")
    checked = ", ".join(sorted(tables))
    return NicCheck(nic, NicStatus.MISSING, f"in no captured table ({checked}); planned {nic.where()}")


def check_fabric(expected: Sequence[ExpectedNic], tables: Mapping[str, Sequence[LearnedMac]]) -> list[NicCheck]:
    return [check_nic(nic, tables) for nic in expected]


def capture_commands(fleet_file: str, switches: Sequence[str]) -> list[str]:
    """What to run to check the fabric: capture each switch's table, pass the files back."""
    lines = [f"{switch}: ssh <user>@{switch} '{CAPTURE}' > {switch}.json" for switch in switches]
    tables = " ".join(f"--switch-table {switch}={switch}.json" for switch in switches)
    lines.append(f"then: bmslice fleet verify {fleet_file} {tables}")
    lines.append(f"(the plain text of '{CAPTURE_TEXT}' is read too)")
    return lines
