"""Slices whose bmslice metadata cannot be read back still hold CPUs, devices and memory.

Such a slice (model/live.py's HeldSlice: what libvirt says it is pinned to and uses) stays
out of the plan, and new VMs go around it: the cores its CPUs touch are not free, its
devices and VFs are given to nobody else, the memory libvirt binds it to is taken from its
nodes. A refusal that it may have caused names it, with the way out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.plan import VmPlan
from bmslice.model.topology import HostTopology, PciDevice
from bmslice.plan.sriov import vf_address

if TYPE_CHECKING:  # a type only: a one-shot plan holds no slice, and live.py's dataclasses cost start-up
    from bmslice.model.live import HeldSlice


def held_cpus(held: Sequence[HeldSlice]) -> CpuSet:
    return CpuSet.union(h.cpus for h in held)


def held_memory(held: Sequence[HeldSlice]) -> dict[int, int]:
    """MiB per host node that held slices' memory is bound to."""
    out: dict[int, int] = defaultdict(int)
    for h in held:
        for node, mib in h.memory_mib:
            out[node] += mib
    return out


def taken_devices(held: Sequence[HeldSlice], kept: Sequence[VmPlan], spec_names: set[str]) -> dict[str, str]:
    """PCI address -> who has it, for devices no VM of this spec may be given: those of held
    slices, and those of running slices the spec does not name."""
    taken = {address: f"{h.name}, whose bmslice metadata is unreadable" for h in held for address in h.devices}
    for vm in kept:
        if vm.name not in spec_names:
            taken.update({d.address: vm.name for d in vm.devices if d.address is not None})
    return taken


def _vf_index(pf: PciDevice, address: str) -> int | None:
    if address in pf.virtfns:
        return pf.virtfns.index(address)
    if pf.sriov_offset is None or pf.sriov_stride is None:
        return None
    for index in range(pf.sriov_totalvfs):  # a VF the kernel has not made now, where it would be
        if vf_address(pf.address, pf.sriov_offset, pf.sriov_stride, index) == address:
            return index
    return None


def held_vfs(topo: HostTopology, held: Sequence[HeldSlice]) -> dict[str, set[int]]:
    """PF address -> indices of its VFs that held slices use (never handed to a new VM)."""
    out: dict[str, set[int]] = defaultdict(set)
    sriov_pfs = [pf for pf in topo.pci_devices if pf.sriov_totalvfs]
    for h in held:
        for address in h.devices:
            dev = topo.pci(address)
            physfn = topo.pci(dev.physfn) if dev is not None and dev.physfn else None
            for pf in [physfn] if physfn is not None else sriov_pfs:
                if (index := _vf_index(pf, address)) is not None:
                    out[pf.address].add(index)
    return out


@contextmanager
def naming_held(held: Sequence[HeldSlice]) -> Iterator[None]:
    """A shortfall refused while held slices keep resources says so, and how to free them."""
    try:
        yield
    except PlanError as exc:
        if not held:
            raise
        holders = "; ".join(f"{h.name} ({h.holds})" for h in held)
        raise PlanError(
            f"{exc} (kept clear of slices whose bmslice metadata is unreadable: {holders}; "
            "`bmslice destroy SPEC --vm NAME` removes one)"
        ) from None
