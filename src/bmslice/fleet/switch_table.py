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
from bmslice.model.grammar import JUNOS_PORT, JUNOS_VLAN_NAME_RE
from bmslice.model.input_file import parse_json
from bmslice.safe_text import shown

MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
# a port or LAG with an optional unit: ge-0/0/9.0, xe-1/0/12, et-0/0/48:1.0, ae3.0
PORT_RE = re.compile(rf"(?P<port>{JUNOS_PORT})(?:\.[0-9]{{1,5}})?")
VLAN_ID_RE = re.compile(r"[0-9]{1,4}")  # ASCII digits: int() would also read "٣" or "１"
MAX_VLAN_ID = 4094
TABLE_HEADER_RE = re.compile(r"ethernet[- ]switching table", re.IGNORECASE)  # ELS has a space, legacy a dash
ELS_GROUPS = ("l2ng-l2ald-rtb-macdb", "l2ng-l2ald-interface-macdb-vlan")


@dataclass(frozen=True)
class LearnedMac:
    mac: str  # lower case, colons
    vlan: str  # the VLAN's name on the switch
    vlan_id: int | None  # when the output gives it
    port: str  # the physical port (or LAG), without unit


class _Refused(Exception):
    """A value of the table that is not what Junos writes there: `where` it is, and why."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")


def _value(node: Any, where: str) -> str | None:
    """Junos JSON's `[{"data": "x"}]`, or a bare "x"; None when absent. Anything else is refused:
    Junos writes every value as text."""
    if isinstance(node, list):
        if len(node) > 1:
            raise _Refused(where, f"{len(node)} values where Junos writes one")
        node = node[0] if node else None
    if isinstance(node, dict):
        node = node.get("data")
    if node is None:
        return None
    if not isinstance(node, str):
        raise _Refused(where, f"{shown(node)} is {type(node).__name__}, not text")
    return node.strip()


def _children(node: dict[str, Any], key: str, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The objects under `key` (a list of them, or one), each with where it sits."""
    value = node.get(key, [])
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Refused(f"{where}{key}[{i}]", f"{shown(item)} is {type(item).__name__}, not an object")
        yield f"{where}{key}[{i}].", item


def _vlan_id(text: str | None, where: str) -> int | None:
    if not text:
        return None
    if not VLAN_ID_RE.fullmatch(text) or not 1 <= int(text) <= MAX_VLAN_ID:
        raise _Refused(where, f"VLAN id {shown(text)} is not a number from 1 to {MAX_VLAN_ID}")
    return int(text)


def _entry(mac: str | None, vlan: str | None, vlan_id: int | None, interface: str | None) -> LearnedMac | None:
    if not mac or not MAC_RE.fullmatch(mac) or not vlan or not interface:
        return None  # a flood entry (*), or one without a port
    port = PORT_RE.fullmatch(interface)
    if port is None:
        return None  # All-members, Router: no port of a host
    return LearnedMac(mac.lower(), vlan, vlan_id, port.group("port"))


def _vlan_name(text: str | None, where: str) -> str | None:
    if text and not JUNOS_VLAN_NAME_RE.fullmatch(text):
        raise _Refused(where, f"{shown(text)} is not a VLAN name")
    return text


def _els(data: dict[str, Any]) -> Iterator[LearnedMac | None]:
    for group in ELS_GROUPS:
        for at_db, db in _children(data, group, ""):
            for at_block, block in _children(db, "l2ng-l2ald-mac-entry-vlan", at_db):
                entries = list(_children(block, "l2ng-mac-entry", at_block))
                key = "l2ng-l2-mac-vlan-name"
                names = {_vlan_name(_value(entry.get(key), f"{at}{key}"), f"{at}{key}") for at, entry in entries}
                # the block's VLAN id holds for its entries only when they are all of one VLAN
                block_id = _vlan_id(_value(block.get("l2ng-l2-vlan-id"), at_block), f"{at_block}l2ng-l2-vlan-id")
                for at, entry in entries:
                    own = _vlan_id(_value(entry.get("l2ng-l2-vlan-id"), at), f"{at}l2ng-l2-vlan-id")
                    yield _entry(
                        _value(entry.get("l2ng-l2-mac-address"), f"{at}l2ng-l2-mac-address"),
                        _value(entry.get(key), f"{at}{key}"),
                        own if own is not None else (block_id if len(names) == 1 else None),
                        _value(entry.get("l2ng-l2-mac-logical-interface"), f"{at}l2ng-l2-mac-logical-interface"),
                    )


def _legacy(data: dict[str, Any]) -> Iterator[LearnedMac | None]:
    for at_info, info in _children(data, "ethernet-switching-table-information", ""):
        for at_table, table in _children(info, "ethernet-switching-table", at_info):
            for at, entry in _children(table, "mac-table-entry", at_table):
                interfaces = [
                    _value(listing.get("mac-interfaces"), f"{at_list}mac-interfaces")
                    for at_list, listing in _children(entry, "mac-interfaces-list", at)
                ]
                vlan = _vlan_name(_value(entry.get("mac-vlan"), f"{at}mac-vlan"), f"{at}mac-vlan")
                vlan_id = _vlan_id(_value(entry.get("mac-vlan-tag"), f"{at}mac-vlan-tag"), f"{at}mac-vlan-tag")
                for interface in interfaces or [None]:
                    yield _entry(_value(entry.get("mac-address"), f"{at}mac-address"), vlan, vlan_id, interface)


def _text(text: str) -> Iterator[LearnedMac | None]:
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        macs = [i for i, word in enumerate(words) if MAC_RE.fullmatch(word)]
        if not macs or macs[0] == 0:
            continue
        after = words[macs[0] + 1 :]
        interface = next((word for word in after if PORT_RE.fullmatch(word)), None)
        yield _entry(words[macs[0]], _vlan_name(words[0], f"line {number}"), None, interface)


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
        try:
            entries = [*_els(data), *_legacy(data)]
        except _Refused as exc:
            raise SpecError(f"{origin}: {exc}") from None
    elif stripped.startswith("<"):
        raise SpecError(f"{origin}: XML (`| display xml`) is not read; capture `| display json` or the plain text")
    else:
        if not TABLE_HEADER_RE.search(stripped):
            raise SpecError(f"{origin}: not the output of `show ethernet-switching table` (no table header)")
        try:
            entries = list(_text(text))
        except _Refused as exc:
            raise SpecError(f"{origin}: {exc}") from None
    return tuple(sorted({e for e in entries if e is not None}, key=lambda e: (e.port, e.vlan, e.mac)))
