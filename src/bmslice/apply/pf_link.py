"""The PF's link must be up before a VF of it goes to a guest.

libvirt sets an `<interface type='hostdev'>` VF's MAC and VLAN through its PF when the
guest starts, and refuses while the PF is down ("Unable to configure VF 0 of PF ... because
the PF is not online"), a state a freshly booted server's unused PF is often in. Found on
a real kernel in the lab; apply brings such a PF up as an undoable step, before any VF
setting, and puts it back down on rollback.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from bmslice.apply.transaction import Step
from bmslice.errors import ApplyError
from bmslice.model.plan import DeviceAssignment

IFF_UP = 0x1


def _set_link(interface: str, state: str, netns: str | None = None) -> None:
    from pyroute2 import IPRoute, NetlinkError, NetNS

    ipr = NetNS(netns) if netns else IPRoute()
    try:
        index = ipr.link_lookup(ifname=interface)
        if not index:
            raise ApplyError(f"no interface {interface} to set {state}")
        try:
            ipr.link("set", index=index[0], state=state)
        except NetlinkError as exc:
            raise ApplyError(f"cannot set {interface} {state}: {exc.args[-1] if exc.args else exc}") from None
    finally:
        ipr.close()


def is_up(interface: str, netns: str | None = None) -> bool | None:
    """The link's administrative state; None when there is no such interface."""
    from pyroute2 import IPRoute, NetNS

    ipr = NetNS(netns) if netns else IPRoute()
    try:
        links = ipr.get_links(ifname=interface) if ipr.link_lookup(ifname=interface) else []
    finally:
        ipr.close()
    return bool(links[0]["flags"] & IFF_UP) if links else None


def pf_up_steps(devices: Sequence[DeviceAssignment], no_kernel: str | None, netns: str | None = None) -> list[Step]:
    """A step per PF whose VFs these devices use and whose link is down; skipped, saying why, when
    `no_kernel` says the host's kernel is out of reach (a host tree, a remote host)."""
    pfs = sorted({dev.interface for dev in devices if dev.type == "vf" and dev.interface is not None})
    steps = []
    for pf in pfs:
        why = "libvirt configures its VFs' MAC and VLAN through it"
        if no_kernel is not None:
            steps.append(Step(f"set {pf} up if it is down ({why}; skipped: {no_kernel})", lambda: None))
            continue
        if is_up(pf, netns) is not False:
            continue
        steps.append(
            Step(
                f"set {pf} up ({why})",
                partial(_set_link, pf, "up", netns),
                partial(_set_link, pf, "down", netns),
                f"set {pf} down again",
            )
        )
    return steps
