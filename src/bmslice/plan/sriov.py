"""Which VF of which PF each VM gets, how many VFs each PF needs, and their MACs.

VFs are named by (PF, index), which is stable across runs; their PCI addresses follow
from the PF's SR-IOV capability (First VF Offset, VF Stride) even before they exist.
Where the source knows neither (libvirt, hwloc, a tree read without root) and the VF does
not exist yet, the plan leaves its address empty and apply reads it from the PF's
virtfn<index> link once it has made the VFs:

>>> vf_address("0000:01:00.0", 128, 2, 0), vf_address("0000:01:00.0", 128, 2, 1)
('0000:01:10.0', '0000:01:10.2')
>>> derived_mac("Red_k8s_cluster_worker1", 0)
'02:f2:d9:55:5e:4b'
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from bmslice.errors import PlanError
from bmslice.model.plan import DeviceAssignment, PfPlan, VmPlan
from bmslice.model.topology import HostTopology, PciDevice
from bmslice.plan.devices import VfRequest, numa_warning


def vf_address(pf: str, offset: int, stride: int, index: int) -> str:
    domain, bus, rest = pf.split(":")
    slot, function = rest.split(".")
    rid = int(bus, 16) << 8 | int(slot, 16) << 3 | int(function)
    vf = rid + offset + stride * index
    return f"{domain}:{vf >> 8:02x}:{(vf >> 3) & 0x1F:02x}.{vf & 7}"


def derived_mac(vm: str, index: int) -> str:
    """Locally administered, unicast, derived from the VM name and the VF's index in the VM."""
    digest = hashlib.sha256(f"{vm}/{index}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


@dataclass
class _PfState:
    pf: PciDevice
    pool: int  # VFs bmslice may use on this PF
    explicit: int = 0  # host.sriov_vfs: a pool to create even if fewer are used now
    used: set[int] = field(default_factory=set)
    in_use_before: set[int] = field(default_factory=set)  # VFs held by guests at discovery


def _pf_states(
    topo: HostTopology,
    requests: Sequence[VfRequest],
    kept: Sequence[VmPlan],
    pools: Mapping[str, int],
    held: Mapping[str, Collection[int]],
) -> dict[str, _PfState]:
    states: dict[str, _PfState] = {}
    for req in requests:
        for pf in req.pfs:
            explicit = pools.get(pf.address, 0)
            states.setdefault(pf.address, _PfState(pf, explicit or pf.sriov_totalvfs, explicit))
    for vm in kept:
        for dev in vm.devices:
            if dev.type == "vf" and dev.pf in states and dev.vf_index is not None:
                states[dev.pf].used.add(dev.vf_index)
    for address, indices in held.items():
        if address in states:
            states[address].used.update(indices)
    for state in states.values():
        for index, address in enumerate(state.pf.virtfns):
            vf = topo.pci(address)
            if vf is not None and vf.driver == "vfio-pci":
                state.in_use_before.add(index)
        state.used |= state.in_use_before
    return states


def _choose(
    req: VfRequest, nodes: Sequence[int], states: Mapping[str, _PfState], origin: str
) -> tuple[_PfState, list[int]]:
    ordered = sorted(req.pfs, key=lambda pf: pf.numa_node not in nodes)  # local PFs first, then spec order
    for pf in ordered:
        state = states[pf.address]
        free = [i for i in range(state.pool) if i not in state.used]
        if len(free) >= req.spec.count:
            return state, free[: req.spec.count]
    names = ", ".join(",".join(pf.interfaces) or pf.address for pf in req.pfs)
    detail = "; ".join(
        f"{','.join(s.pf.interfaces) or s.pf.address}: {s.pool - len(s.used)} free of {s.pool}"
        for s in (states[pf.address] for pf in req.pfs)
    )
    raise PlanError(
        f"{origin}: {req.field}: {req.vm} needs {req.spec.count} VF(s) of {names}, not enough left ({detail})"
    )


def _address(pf: PciDevice, index: int) -> str | None:
    """Where VF `index` of `pf` is or will be; None: only the kernel can tell, once it made the VF."""
    if index < len(pf.virtfns) and index < pf.sriov_numvfs:
        return pf.virtfns[index]
    if pf.sriov_offset is None or pf.sriov_stride is None:
        return None
    return vf_address(pf.address, pf.sriov_offset, pf.sriov_stride, index)


def _unplaced_warning(vm: str, pf: PciDevice, indices: Sequence[int]) -> str:
    listed = ", ".join(map(str, indices))
    return (
        f"{vm}: the PCI address of VF {listed} of {','.join(pf.interfaces) or pf.address} is resolved at apply time "
        "(no VF offset/stride known: sysfs has them from Linux 4.16, config space only for root, libvirt and hwloc "
        "not at all)"
    )


def assign_vfs(
    topo: HostTopology,
    requests: Sequence[VfRequest],
    placement: Mapping[str, tuple[int, ...]],
    kept: Sequence[VmPlan],
    pools: Mapping[str, int],
    origin: str,
    held: Mapping[str, Collection[int]] | None = None,
) -> tuple[dict[str, list[DeviceAssignment]], tuple[PfPlan, ...], dict[str, list[str]]]:
    """VF devices per VM (spec order), the VF count each PF needs, and per-VM warnings.

    `pools`: host.sriov_vfs by PF address (`resolve_vf_pools`); `held`: VF indices per PF
    that slices with unreadable metadata use (plan/held.py).
    """
    states = _pf_states(topo, requests, kept, pools, held or {})
    devices: dict[str, list[DeviceAssignment]] = defaultdict(list)
    warnings: dict[str, list[str]] = defaultdict(list)
    for req in requests:
        if req.vm not in placement:
            continue  # a kept slice keeps the VFs it has
        nodes = placement[req.vm]  # the VM's host nodes (several for a VM over several)
        state, indices = _choose(req, nodes, states, origin)
        state.used.update(indices)
        pf = state.pf
        warning = numa_warning(topo, req.vm, pf, nodes, what="the PF of its VFs,")
        if warning:
            warnings[req.vm].append(warning)
        unplaced = [index for index in indices if _address(pf, index) is None]
        if unplaced:
            warnings[req.vm].append(_unplaced_warning(req.vm, pf, unplaced))
        for k, index in enumerate(indices):
            nth = len(devices[req.vm])
            devices[req.vm].append(
                DeviceAssignment(
                    address=_address(pf, index),
                    type="vf",
                    numa_node=pf.numa_node,
                    interface=",".join(pf.interfaces) or None,
                    driver=None,
                    pf=pf.address,
                    vf_index=index,
                    vlan=req.spec.vlan,
                    mac=req.spec.mac if req.spec.mac and k == 0 else derived_mac(req.vm, nth),
                    trust=req.spec.trust,
                    spoofchk=req.spec.spoofchk,
                    created_vfs=pf.sriov_numvfs == 0,
                )
            )
    return devices, _pf_plans(states, origin), warnings


def _pf_plans(states: Mapping[str, _PfState], origin: str) -> tuple[PfPlan, ...]:
    plans = []
    for address, state in sorted(states.items()):
        if not state.used:
            continue
        pf = state.pf
        needed = max(max(state.used) + 1, state.explicit)
        if needed > pf.sriov_totalvfs:
            raise PlanError(
                f"{origin}: {address} needs {needed} VFs, more than its sriov_totalvfs ({pf.sriov_totalvfs})"
            )
        before = pf.sriov_numvfs
        if 0 < before < needed and state.in_use_before:
            raise PlanError(
                f"{origin}: {','.join(pf.interfaces) or address} has {before} VFs, {len(state.in_use_before)} in use; "
                f"{needed} are needed and sriov_numvfs cannot change {before} -> {needed} while VFs are in use "
                "(pre-create a pool with host.sriov_vfs)"
            )
        numvfs = before if before >= needed else needed
        plans.append(PfPlan(address, ",".join(pf.interfaces) or None, before, numvfs))
    return tuple(plans)
