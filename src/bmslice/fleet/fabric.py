"""The fabric a placement needs: per switch port the tenant VLANs, as data and as Junos (pure).

A port whose NIC is passed through whole carries its one tenant VLAN untagged (access); a
port whose NIC serves VFs carries every VF's VLAN tagged (trunk), since the host tags each
VF's frames.

A port bmslice manages is owned by it: the Junos commands first delete the port's
ethernet-switching configuration (and, on ELS, its native VLAN) and then set what the plan
says, because `load set` merges: without the deletes, a port that changes tenant or mode
keeps its old VLAN members (an access port with two VLANs fails `commit check`). Junos
answers a delete of something a port never had with "warning: statement not found" and
goes on. Ports no VM uses any more are left as they are; VLAN definitions are only added.

Junos comes in two styles, chosen per switch in the fleet file (`switches: {NAME: {junos:
els | legacy}}`, default els): ELS (Enhanced Layer 2 Software, EX2300/3400/4300, QFX) says
`interface-mode`, the legacy style (EX2200/3300/4200 and others before ELS) says `port-mode`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from bmslice.fleet.text import one_line
from bmslice.model.fields import ifname
from bmslice.model.fleet import (
    DNS_LABEL_RE,
    HOST_NAME_RE,
    JUNOS_VLAN_RE,
    Fleet,
    JunosStyle,
    NicKind,
    PlacedVm,
    Placement,
)
from bmslice.model.grammar import in_file, junos_port, matches
from bmslice.numbers import is_decimal

# What each word of a `set` line may be: the fleet file's own grammar, asserted again here
# because a placement or a hand-made fabric dict could carry anything.
_HOST = matches(HOST_NAME_RE, "a host name")
_VM = matches(DNS_LABEL_RE, "a VM name")
_VLAN_NAME = matches(JUNOS_VLAN_RE, "a VLAN name")
_MODE = matches(re.compile("access|trunk"), "access or trunk")

STYLE_TEXT = {
    JunosStyle.ELS: "ELS (Enhanced Layer 2 Software: EX2300/3400/4300, QFX; `interface-mode`)",
    JunosStyle.LEGACY: "legacy, before ELS (EX2200/3300/4200 and others; `port-mode`)",
}
MODE_KEYWORD = {JunosStyle.ELS: "interface-mode", JunosStyle.LEGACY: "port-mode"}


def natural(text: str) -> tuple[Any, ...]:
    """ge-0/0/9 before ge-0/0/10."""
    return tuple(int(part) if is_decimal(part) else part for part in re.split(r"([0-9]+)", text))


def fabric_data(fleet: Fleet, placement: Placement) -> dict[str, Any]:
    """Per switch: its Junos style, the VLANs it needs and, per port, mode and VLANs; plus
    NICs with no known port."""
    by_pf: dict[tuple[str, str], list[tuple[PlacedVm, NicKind, int]]] = defaultdict(list)
    for vm in placement.vms:
        for nic in vm.nics:
            by_pf[(vm.host, nic.pf)].append((vm, nic.kind, nic.vlan))
    vlan_names = {c.vlan: c.switch_vlan for c in fleet.clusters}
    switches: dict[str, dict[str, Any]] = {}
    uncabled: list[dict[str, Any]] = []
    for (host, pf), users in sorted(by_pf.items()):
        vlans = sorted({vlan for _, _, vlan in users})
        trunk = any(kind is NicKind.SRIOV for _, kind, _ in users)
        entry = {
            "host": host,
            "nic": pf,
            "mode": "trunk" if trunk else "access",
            "vlans": vlans,
            "vms": sorted({vm.name for vm, _, _ in users}),
        }
        port = fleet.host(host).nics.get(pf)
        if port is None:
            uncabled.append(entry)
            continue
        switch = switches.setdefault(port.switch, {"name": port.switch, "vlans": {}, "ports": []})
        for vlan in vlans:
            switch["vlans"][vlan] = vlan_names[vlan]
        switch["ports"].append({"port": port.port, **entry})
    out_switches = []
    for name in sorted(switches):
        switch = switches[name]
        out_switches.append(
            {
                "name": name,
                "junos": fleet.switch(name).junos.value,
                "vlans": [{"id": vlan, "name": switch["vlans"][vlan]} for vlan in sorted(switch["vlans"])],
                "ports": sorted(switch["ports"], key=lambda p: natural(p["port"])),
            }
        )
    return {"switches": out_switches, "uncabled": uncabled}


def junos_config(switch: Mapping[str, Any], origin: str = "the fleet file") -> str:
    """Junos `set` commands, in the switch's style, for one switch of `fabric_data`."""
    style = JunosStyle(switch.get("junos", JunosStyle.ELS.value))
    path = f"fabric/{in_file('fabric/', 'switch', switch['name'], _HOST)}.set"
    names = {int(v["id"]): in_file(path, "VLAN name", v["name"], _VLAN_NAME) for v in switch["vlans"]}
    lines = [
        f"# {switch['name']}: tenant VLANs for the bmslice fleet, generated from {one_line(origin)}.",
        f"# Junos style: {STYLE_TEXT[style]}.",
        "# bmslice owns the ports below: each port's ethernet-switching configuration is deleted",
        "# and set to what the plan says (a delete of what a port never had: 'statement not found').",
        "# configure; load set FILE (or load set terminal); show | compare; commit check; commit",
        "# check: show vlans; show ethernet-switching table interface <port>",
    ]
    for vlan_id, vlan_name in names.items():
        lines.append(f"set vlans {vlan_name} vlan-id {vlan_id}")
    for port in switch["ports"]:
        name = in_file(path, "port", port["port"], junos_port)
        family = f"interfaces {name} unit 0 family ethernet-switching"
        lines.append(f"delete {family}")
        if style is JunosStyle.ELS:
            lines.append(f"delete interfaces {name} native-vlan-id")  # ELS keeps it on the interface
        host, nic = in_file(path, "host", port["host"], _HOST), in_file(path, "NIC", port["nic"], ifname)
        vms = " ".join(in_file(path, "VM", vm, _VM) for vm in port["vms"])
        lines.append(f'set interfaces {name} description "{host} {nic}: {vms}"')
        lines.append(f"set {family} {MODE_KEYWORD[style]} {in_file(path, 'mode', port['mode'], _MODE)}")
        members = [names[v] for v in port["vlans"]]
        lines.append(
            f"set {family} vlan members {members[0] if len(members) == 1 else '[ ' + ' '.join(members) + ' ]'}"
        )
    return "\n".join(lines) + "\n"
