"""The address an HTTP endpoint of bmslice listens on (the exporter's --listen), checked whole.

>>> parse_listen("127.0.0.1:9963"), parse_listen("[::1]:9963"), parse_listen(":9963")
(('127.0.0.1', 9963), ('::1', 9963), ('0.0.0.0', 9963))
"""

from __future__ import annotations

import ipaddress
import re

from bmslice.errors import SpecError
from bmslice.safe_text import shown

DEFAULT_LISTEN = "127.0.0.1:9963"  # loopback: the metrics name processes; expose them on purpose
_LISTEN_RE = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]*)):([0-9]{1,5})")


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT with a literal IPv4 or [IPv6] address; an empty address is every IPv4 one."""
    match = _LISTEN_RE.fullmatch(text)
    port = int(match.group(3)) if match else 0
    if not match or not 1 <= port <= 65535:
        raise SpecError(f"--listen {shown(text)}: expected ADDRESS:PORT such as 127.0.0.1:9963 or [::1]:9963")
    address = match.group(1) or match.group(2) or "0.0.0.0"
    # brackets hold an IPv6 address and only that (RFC 3986): "[127.0.0.1]:9963" is no address
    family, version = (ipaddress.IPv6Address, 6) if match.group(1) is not None else (ipaddress.IPv4Address, 4)
    try:
        family(address)
    except ValueError:
        raise SpecError(f"--listen {shown(text)}: {shown(address)} is not an IPv{version} address") from None
    return address, port
