"""Live-host network facts that sysfs does not hold, read through netlink (pyroute2).

The interface carrying the current SSH session is management, whatever the routing
table says: passing it to a VM would cut off the operator running bmslice.
"""

from __future__ import annotations

import os
from dataclasses import replace

from bmslice.model.topology import HostTopology


def session_address(ssh_connection: str | None) -> str | None:
    """The server side address of SSH_CONNECTION ("client port server port").

    >>> session_address("198.51.100.7 52100 198.51.100.1 22")
    '198.51.100.1'
    """
    parts = (ssh_connection or "").split()
    return parts[2] if len(parts) == 4 else None


def interfaces_with_address(address: str, netns: str | None = None) -> tuple[str, ...]:
    from pyroute2 import IPRoute, NetNS

    ipr = NetNS(netns) if netns else IPRoute()
    try:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        found = {names.get(a["index"]) for a in ipr.get_addr() if a.get_attr("IFA_ADDRESS") == address}
    finally:
        ipr.close()
    return tuple(sorted(n for n in found if n))


def with_management_interfaces(topo: HostTopology, ssh_connection: str | None = None) -> HostTopology:
    """`topo` plus the interface of the SSH session running this process (live host only)."""
    address = session_address(ssh_connection if ssh_connection is not None else os.environ.get("SSH_CONNECTION"))
    if address is None:
        return topo
    names = interfaces_with_address(address)
    return replace(topo, management_interfaces=tuple(sorted({*topo.management_interfaces, *names})))
