"""What a Junos switch learned: its `show ethernet-switching table` output, parsed (pure).

Four forms are read, each as Junos prints it:

- ELS, `show ethernet-switching table | display json`: `l2ng-l2ald-rtb-macdb` (or, for one
  interface, `l2ng-l2ald-interface-macdb-vlan`) > `l2ng-l2ald-mac-entry-vlan` (with
  `l2ng-l2-vlan-id`) > `l2ng-mac-entry` with `l2ng-l2-mac-vlan-name`, `l2ng-l2-mac-address`
  and `l2ng-l2-mac-logical-interface`;
- legacy (before ELS), the same command: `ethernet-switching-table-information` >
  `ethernet-switching-table` > `mac-table-entry` with `mac-vlan`, `mac-address` and
  `mac-interfaces-list` > `mac-interfaces`;
- the plain text of either: one line per entry, VLAN name first, then the MAC, and the
  logical interface further on (`ge-0/0/9.0`).

Junos' JSON wraps every value as `[{"data": VALUE}]`; bare values are read too. Flood
entries (`*`) and interfaces that are not ports (All-members, Router) are left out. The
port is the logical interface without its unit: ge-0/0/9.0 was learned on ge-0/0/9.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bmslice.errors import SpecError
from bmslice.model.input_file import parse_json

MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
# a port or LAG with an optional unit: ge-0/0/9.0, xe-1/0/12, et-0/0/48:1.0, ae3.0
PORT_RE = re.compile(r"(?P<port>(?:[a-z]{2,4}-\d+/\d+/\d+(?::\d+)?|ae\d+))(?:\.\d+)?")
TABLE_HEADER_RE = re.compile(r"ethernet[- ]switching table", re.IGNORECASE)  # ELS has a space, legacy a dash
ELS_GROUPS = ("l2ng-l2ald-rtb-macdb", "l2ng-l2ald-interface-macdb-vlan")


@dataclass(frozen=True)
class LearnedMac:
    mac: str  # lower case, colons
    vlan: str  # the VLAN's name on the switch
    vlan_id: int | None  # when the output gives it
    port: str  # the physical port (or LAG), without unit


def _value(node: Any) -> str | None:
    """Junos JSON's `[{"data": "x"}]`, or a bare "x"."""
    if isinstance(node, list):
        node = node[0] if node else None
    if isinstance(node, dict):
        node = node.get("data")
    return None if node is None else str(node).strip()


def _children(node: Any, key: str) -> Iterator[Any]:
    value = node.get(key, []) if isinstance(node, dict) else []
    yield from value if isinstance(value, list) else [value]


def _entry(mac: str | None, vlan: str | None, vlan_id: str | None, interface: str | None) -> LearnedMac | None:
    if not mac or not MAC_RE.fullmatch(mac) or not vlan or not interface:
        return None  # a flood entry (*), or one without a port
    port = PORT_RE.fullmatch(interface)
    if port is None:
        return None
    number = int(vlan_id) if vlan_id and vlan_id.isdigit() else None
    return LearnedMac(mac.lower(), vlan, number, port.group("port"))


def _els(data: dict[str, Any]) -> Iterator[LearnedMac | None]:
    for group in ELS_GROUPS:
        for db in _children(data, group):
            for block in _children(db, "l2ng-l2ald-mac-entry-vlan"):
                entries = list(_children(block, "l2ng-mac-entry"))
                # the block's VLAN id holds for its entries only when they are all of one VLAN
                names = {_value(entry.get("l2ng-l2-mac-vlan-name")) for entry in entries}
                vlan_id = _value(block.get("l2ng-l2-vlan-id")) if len(names) == 1 else None
                for entry in entries:
                    yield _entry(
                        _value(entry.get("l2ng-l2-mac-address")),
                        _value(entry.get("l2ng-l2-mac-vlan-name")),
                        _value(entry.get("l2ng-l2-vlan-id")) or vlan_id,
                        _value(entry.get("l2ng-l2-mac-logical-interface")),
                    )


def _legacy(data: dict[str, Any]) -> Iterator[LearnedMac | None]:
    for info in _children(data, "ethernet-switching-table-information"):
        for table in _children(info, "ethernet-switching-table"):
            for entry in _children(table, "mac-table-entry"):
                interfaces = [
                    _value(listing.get("mac-interfaces"))
                    for listing in _children(entry, "mac-interfaces-list")
                    if isinstance(listing, dict)
                ]
                for interface in interfaces or [None]:
                    yield _entry(
                        _value(entry.get("mac-address")),
                        _value(entry.get("mac-vlan")),
                        _value(entry.get("mac-vlan-tag")),
                        interface,
                    )


def _text(text: str) -> Iterator[LearnedMac | None]:
    for line in text.splitlines():
        words = line.split()
        macs = [i for i, word in enumerate(words) if MAC_RE.fullmatch(word)]
        if not macs or macs[0] == 0:
            continue
        after = words[macs[0] + 1 :]
        interface = next((word for word in after if PORT_RE.fullmatch(word)), None)
        yield _entry(words[macs[0]], words[0], None, interface)


def parse_switch_table(text: str, origin: str) -> tuple[LearnedMac, ...]:
    """Every MAC the captured output shows learned on a port; SpecError when it is no such output."""
    stripped = text.strip()
    if stripped.startswith("{"):
        data = parse_json(stripped, origin)
        if not isinstance(data, dict) or not (set(ELS_GROUPS) | {"ethernet-switching-table-information"}) & set(data):
            raise SpecError(
                f"{origin}: JSON, but not `show ethernet-switching table | display json` (no {ELS_GROUPS[0]} or "
                "ethernet-switching-table-information)"
            )
        entries = [*_els(data), *_legacy(data)]
    else:
        if not TABLE_HEADER_RE.search(stripped):
            raise SpecError(f"{origin}: not the output of `show ethernet-switching table` (no table header)")
        entries = list(_text(stripped))
    return tuple(sorted({e for e in entries if e is not None}, key=lambda e: (e.port, e.vlan, e.mac)))
