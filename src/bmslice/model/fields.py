"""Validated string fields shared by the spec and the fleet file.

Each refuses a bad value with "'<value>' is not <what>", which the loaders turn into one
line naming the file and the field. Every pattern must match the whole value (fullmatch):
with `re.match` and a `$`, "eno1\n" would pass and carry its newline into a file name, an
XML file or a generated config.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator

from bmslice.model.topology import canonical_pci_address
from bmslice.safe_text import shown

IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")
CPU_FEATURE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def _check(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"{shown(value)} is not {what}")
        return value

    return check


def matching(regex: re.Pattern[str], what: str) -> AfterValidator:
    """For `Annotated[str, matching(RE, "a host name")]`: the value must match `regex`."""
    return AfterValidator(_check(regex, what))


def device_ref(value: str) -> str:
    """An interface name, or a PCI address (returned in canonical form)."""
    address = canonical_pci_address(value)
    if address:
        return address
    if ":" in value or not IFNAME_RE.fullmatch(value):
        raise ValueError(f"{shown(value)} is neither an interface name nor a PCI address like 0000:01:00.0")
    return value


IfName = Annotated[str, matching(IFNAME_RE, "an interface name")]
CpuFeature = Annotated[str, matching(CPU_FEATURE_RE, "a CPU feature name")]
DeviceRef = Annotated[str, AfterValidator(device_ref)]
