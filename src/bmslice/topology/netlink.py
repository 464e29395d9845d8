"""Live-host network facts that sysfs does not hold, read through netlink (pyroute2).

The interface carrying the current SSH session is management, whatever the routing
table says: passing it to a VM would cut off the operator running bmslice.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from bmslice.model.topology import HostTopology, VfState


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


def vf_states_of(link: Any) -> list[VfState]:
    """The VFs of one RTM_NEWLINK message (IFLA_VFINFO_LIST), if its interface is a PF."""
    vf_list = link.get_attr("IFLA_VFINFO_LIST")
    if vf_list is None:
        return []
    name = link.get_attr("IFLA_IFNAME") or ""
    out = []
    for info in vf_list.get_attrs("IFLA_VF_INFO"):
        mac, vlan = info.get_attr("IFLA_VF_MAC"), info.get_attr("IFLA_VF_VLAN")
        if mac is None:
            continue
        address = str(mac["mac"]).lower()
        out.append(
            VfState(
                pf_interface=name,
                index=int(mac["vf"]),
                mac=None if address.strip("0:") == "" else address,
                vlan=(int(vlan["vlan"]) or None) if vlan is not None else None,
                trust=_flag(info.get_attr("IFLA_VF_TRUST"), "trust"),
                spoofchk=_flag(info.get_attr("IFLA_VF_SPOOFCHK"), "spoofchk"),
            )
        )
    return out


def _flag(attr: Any, key: str) -> bool | None:
    """A VF on/off setting; drivers that do not support it report the value 0xffffffff (or nothing)."""
    if attr is None:
        return None
    value = int(attr[key])
    return None if value == 0xFFFFFFFF else bool(value)


def read_vf_states(netns: str | None = None) -> tuple[VfState, ...]:
    from pyroute2 import IPRoute, NetNS

    ipr = NetNS(netns) if netns else IPRoute()
    try:
        links = ipr.get_links(ext_mask=1)  # RTEXT_FILTER_VF: ask the drivers for their VFs
    finally:
        ipr.close()
    return tuple(state for link in links for state in vf_states_of(link))


def with_live_network(topo: HostTopology, ssh_connection: str | None = None) -> HostTopology:
    """`topo` plus what only the running kernel knows: the SSH session's interface, VF MAC/VLAN."""
    address = session_address(ssh_connection if ssh_connection is not None else os.environ.get("SSH_CONNECTION"))
    names = interfaces_with_address(address) if address is not None else ()
    return replace(
        topo,
        management_interfaces=tuple(sorted({*topo.management_interfaces, *names})),
        vf_states=read_vf_states(),
    )
