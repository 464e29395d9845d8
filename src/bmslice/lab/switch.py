"""The lab's fabric switch: the Junos `set` commands bmslice renders, played by a Linux bridge (pure).

`bmslice fleet plan` writes `fabric/<switch>.set` for a Junos switch. In the lab the switch
is a VLAN-aware Linux bridge, and the file itself is what configures it, as a switch would
take it: the subset bmslice emits is parsed (anything else is refused, naming the line),
`delete` resets a port the way `load set` would merge it, and each port becomes bridge
VLAN entries:

- an access port (`interface-mode access`, legacy `port-mode access`): its one VLAN as the
  port's PVID, untagged on egress;
- a trunk port: every member VLAN tagged, no native VLAN (bmslice deletes `native-vlan-id`);
- a port the file does not configure carries no VLAN at all: the bridge drops its frames.

The other way, the bridge's learned forwarding entries (`bridge -j fdb show`) become a
`show ethernet-switching table | display json` of an ELS switch, laid out as Junos prints
it, which `bmslice fleet verify --switch-table` reads: port names and VLAN names are the
switch's, through the cabling (switch port <-> bridge port).

>>> config = parse_junos_set(
...     "set vlans RED vlan-id 100\\n"
...     "set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode trunk\\n"
...     "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members [ RED ]\\n",
...     "fabric.set",
... )
>>> bridge_vlans(config, {"ge-0/0/1": "tap1"})
[('tap1', 100, False)]
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bmslice.errors import LabError
from bmslice.model.grammar import JUNOS_PORT_RE
from bmslice.safe_text import one_line

VLAN_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
PORT_RE = JUNOS_PORT_RE  # the fleet file's own grammar: ASCII digits (\d took "ge-٠/٠/٩"), bounded
MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_FAMILY = ("unit", "0", "family", "ethernet-switching")
MODES = ("access", "trunk")


@dataclass
class PortConfig:
    mode: str | None = None
    members: list[str] = field(default_factory=list)
    description: str | None = None


@dataclass
class SwitchConfig:
    vlans: dict[str, int] = field(default_factory=dict)  # name -> VLAN id
    ports: dict[str, PortConfig] = field(default_factory=dict)

    def vlan_name(self, vlan_id: int) -> str | None:
        return next((name for name, vid in self.vlans.items() if vid == vlan_id), None)


def _fail(origin: str, number: int, line: str, why: str) -> LabError:
    return LabError(f"{one_line(origin)} line {number}: {why}: {one_line(line[:120])}")


def _members(words: list[str]) -> list[str]:
    """`NAME` or `[ A B ]`."""
    if words and words[0] == "[":
        if words[-1] != "]":
            raise ValueError("a member list opened with [ is not closed")
        words = words[1:-1]
    if not words or any(not VLAN_NAME_RE.fullmatch(word) for word in words):
        raise ValueError("VLAN members must be VLAN names")
    return words


def _port_words(config: SwitchConfig, words: list[str], delete: bool) -> None:
    """`interfaces PORT ...` after set/delete."""
    if len(words) < 2 or not PORT_RE.fullmatch(words[1]):
        raise ValueError("not a switch port")
    port, rest = words[1], words[2:]
    if delete:
        if rest == list(_FAMILY):
            config.ports.pop(port, None)  # the port's ethernet-switching configuration, whole
        elif rest != ["native-vlan-id"]:  # bmslice never sets one: nothing to undo
            raise ValueError("bmslice deletes a port's ethernet-switching or native-vlan-id only")
        return
    entry = config.ports.setdefault(port, PortConfig())
    if rest[:1] == ["description"] and len(rest) >= 2:
        entry.description = " ".join(rest[1:]).strip('"')
        return
    if tuple(rest[:4]) != _FAMILY or len(rest) < 6:
        raise ValueError("bmslice sets a port's description or unit 0 family ethernet-switching only")
    setting = rest[4:]
    if setting[0] in ("interface-mode", "port-mode") and len(setting) == 2 and setting[1] in MODES:
        entry.mode = setting[1]
    elif setting[:2] == ["vlan", "members"]:
        for name in _members(setting[2:]):
            if name not in entry.members:
                entry.members.append(name)  # `set` merges
    else:
        raise ValueError("not a port mode or VLAN members")


def parse_junos_set(text: str, origin: str) -> SwitchConfig:
    """The switch configuration the `set`/`delete` lines leave; LabError names the first line it refuses."""
    config = SwitchConfig()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise _fail(origin, number, line, str(exc)) from None
        try:
            verb, target = words[0], words[1] if len(words) > 1 else ""
            if verb == "set" and target == "vlans":
                if len(words) != 5 or words[3] != "vlan-id" or not VLAN_NAME_RE.fullmatch(words[2]):
                    raise ValueError("expected: set vlans NAME vlan-id ID")
                if not re.fullmatch(r"[1-9][0-9]{0,3}", words[4]) or int(words[4]) > 4094:
                    raise ValueError("a VLAN id is 1-4094")
                config.vlans[words[2]] = int(words[4])
            elif verb in ("set", "delete") and target == "interfaces":
                _port_words(config, words[1:], delete=verb == "delete")
            else:
                raise ValueError("not a command bmslice writes")
        except ValueError as exc:
            raise _fail(origin, number, line, str(exc)) from None
    for port, entry in config.ports.items():
        unknown = [name for name in entry.members if name not in config.vlans]
        if unknown:
            raise LabError(f"{one_line(origin)}: port {port}: VLAN {unknown[0]} is not defined (set vlans)")
        if entry.members and entry.mode is None:
            raise LabError(f"{one_line(origin)}: port {port}: VLAN members but no port mode")
        if entry.mode == "access" and len(entry.members) != 1:
            raise LabError(f"{one_line(origin)}: port {port}: an access port carries one VLAN, not {entry.members}")
    return config


def bridge_vlans(config: SwitchConfig, cabling: Mapping[str, str]) -> list[tuple[str, int, bool]]:
    """(bridge port, VLAN id, untagged PVID?) for each switch port the cabling wires to a bridge port."""
    out: list[tuple[str, int, bool]] = []
    for port, entry in sorted(config.ports.items()):
        if port not in cabling or entry.mode is None:
            continue
        for name in entry.members:
            out.append((cabling[port], config.vlans[name], entry.mode == "access"))
    return out


def bridge_commands(bridge: str, config: SwitchConfig, cabling: Mapping[str, str]) -> list[list[str]]:
    """iproute2 commands that make `bridge` (created with vlan_filtering 1, default PVID 0) this switch."""
    commands = [["ip", "link", "set", dev, "master", bridge, "up"] for dev in sorted(set(cabling.values()))]
    for dev, vlan, access in bridge_vlans(config, cabling):
        command = ["bridge", "vlan", "add", "dev", dev, "vid", str(vlan)]
        commands.append(command + (["pvid", "untagged"] if access else []))
    return commands


def _data(value: str) -> list[dict[str, str]]:
    return [{"data": value}]


def _inline(value: Any) -> str | None:
    """A value Junos prints on one line: a string, a dict of strings, a list of such dicts."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return "{" + ", ".join(f"{json.dumps(k)} : {json.dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list) and value:
        items = [_inline(item) if isinstance(item, dict) else None for item in value]
        if all(item is not None for item in items):
            return "[" + ", ".join(str(item) for item in items) + "]"
    return None


def _block(node: Mapping[str, Any], indent: str) -> list[str]:
    """A dict as Junos' `| display json` lays it out: keys one level in, a list of dicts opened
    after its key and its dicts at the key's own level."""
    inner = indent + "    "
    lines = [indent + "{"]
    for number, (key, value) in enumerate(node.items()):
        comma = "," if number < len(node) - 1 else ""
        flat = _inline(value)
        if flat is not None:
            lines.append(f"{inner}{json.dumps(key)} : {flat}{comma}")
            continue
        items = value if isinstance(value, list) else [value]
        lines.append(f"{inner}{json.dumps(key)} : [")
        for index, item in enumerate(items):
            lines.extend(_block(item, inner))
            if index < len(items) - 1:
                lines[-1] += ","
        lines.append(f"{inner}]{comma}")
    lines.append(indent + "}")
    return lines


def junos_json(node: Mapping[str, Any]) -> str:
    """`node` written the way Junos prints `| display json` (indents, ` : `, one-line values)."""
    return "\n".join(_block(node, "")) + "\n"


def switch_table(fdb: Sequence[Mapping[str, Any]], config: SwitchConfig, cabling: Mapping[str, str]) -> str:
    """`bridge -j fdb show br BR` as Junos ELS prints `show ethernet-switching table | display json`:
    per VLAN its counts, routing instance and id, then each learned (dynamic) entry with the
    fields ELS writes (age `-`, as `show ethernet-switching table` without `extensive` has it).

    Learned entries only: the bridge's own (`permanent`, `self`) and entries without a VLAN
    are not what a switch shows as learned; a bridge port the cabling does not name is left out.
    """
    port_of = {dev: port for port, dev in cabling.items()}
    blocks: dict[int, dict[str, dict[str, Any]]] = {}  # VLAN id -> MAC -> entry
    for entry in fdb:
        flags = set(entry.get("flags", [])) | {str(entry.get("state", ""))}
        mac, dev, vlan = str(entry.get("mac", "")).lower(), entry.get("ifname"), entry.get("vlan")
        if flags & {"permanent", "self", "static"} or not isinstance(vlan, int) or dev not in port_of:
            continue
        name = config.vlan_name(vlan)
        if name is None or not MAC_RE.fullmatch(mac):
            continue
        blocks.setdefault(vlan, {})[mac] = {
            "l2ng-l2-mac-vlan-name": _data(name),
            "l2ng-l2-mac-address": _data(mac),
            "l2ng-l2-mac-flags": _data("D"),
            "l2ng-l2-mac-age": _data("-"),
            "l2ng-l2-mac-logical-interface": _data(f"{port_of[str(dev)]}.0"),
            "l2ng-l2-mac-fwd-next-hop": _data("0"),
            "l2ng-l2-mac-rtr-id": _data("0"),
        }
    macdb = [
        {
            "attributes": {"junos:style": "brief-rtb"},
            "mac-count-global": _data(str(len(entries))),
            "learnt-mac-count": _data(str(len(entries))),
            "l2ng-l2-mac-routing-instance": _data("default-switch"),
            "l2ng-l2-vlan-id": _data(str(vlan)),
            "l2ng-mac-entry": [entries[mac] for mac in sorted(entries)],  # by MAC, as Junos lists them
        }
        for vlan, entries in sorted(blocks.items())
    ]
    return junos_json({"l2ng-l2ald-rtb-macdb": [{"l2ng-l2ald-mac-entry-vlan": macdb}]})
