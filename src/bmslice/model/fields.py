"""Validated string fields shared by the spec and the fleet file.

Each refuses a bad value with "'<value>' is not <what>", which the loaders turn into one
line naming the file and the field. Every pattern must match the whole value (fullmatch):
with `re.match` and a `$`, "eno1\n" would pass and carry its newline into a file name, an
XML file or a generated config.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from bmslice.model.grammar import is_kernel_ifname, matches
from bmslice.model.topology import canonical_pci_address
from bmslice.safe_text import shown

# What a spec or fleet file may call an interface: the kernel's rule (grammar.is_kernel_ifname)
# narrowed to characters no generated file has to quote.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")
CPU_FEATURE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def matching(regex: re.Pattern[str], what: str) -> AfterValidator:
    """For `Annotated[str, matching(RE, "a host name")]`: the value must match `regex`."""
    return AfterValidator(matches(regex, what))


def ifname(value: str) -> str:
    if not (IFNAME_RE.fullmatch(value) and is_kernel_ifname(value)):
        raise ValueError(f"{shown(value)} is not an interface name")
    return value


def device_ref(value: str) -> str:
    """An interface name, or a PCI address (returned in canonical form)."""
    address = canonical_pci_address(value)
    if address:
        return address
    if not (IFNAME_RE.fullmatch(value) and is_kernel_ifname(value)):
        raise ValueError(f"{shown(value)} is neither an interface name nor a PCI address like 0000:01:00.0")
    return value


IfName = Annotated[str, AfterValidator(ifname)]
CpuFeature = Annotated[str, matching(CPU_FEATURE_RE, "a CPU feature name")]
DeviceRef = Annotated[str, AfterValidator(device_ref)]
