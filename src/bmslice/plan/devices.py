"""NIC resolution and the safety rules for handing a PCI device to a VM.

Refusals (faults.md 1, 2, 3, 22, 24): the management / default-route NIC, bond members
and bridge ports, a PF that already has VFs, a device named twice, an IOMMU group that
also holds devices the host still uses, a PCI function that is not a network device
(unless the NIC entry says `allow_non_nic: true`) and a PCI bridge (always). Warnings: cross-NUMA NIC (16), unknown NUMA
node (17), IOMMU not active yet (4: apply refuses, the plan says what fixes it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bmslice.errors import PlanError
from bmslice.model.spec import HostSpec, SriovSpec, VmSpec
from bmslice.model.topology import HostTopology, PciDevice

# Drivers that mean "not used by the host": the device is already parked for a guest.
PARKED_DRIVERS = frozenset({None, "vfio-pci", "pci-stub"})


# PCI base classes (the first byte of the class code) by name, for refusals that say what a device is.
_PCI_CLASSES = {
    "00": "an unclassified device",
    "01": "a storage controller",
    "03": "a display controller",
    "04": "a multimedia device",
    "05": "a memory controller",
    "06": "a bridge",
    "07": "a communication controller",
    "08": "a system peripheral",
    "09": "an input device",
    "0b": "a processor",
    "0c": "a serial bus controller (USB, SMBus)",
    "0d": "a wireless controller",
    "10": "an encryption controller",
    "11": "a signal processing controller",
    "12": "a processing accelerator",
}


@dataclass(frozen=True)
class ResolvedNic:
    vm: str
    field: str  # "vms[0].nics[1].passthrough", for messages
    device: PciDevice
    allow_non_nic: bool = False


@dataclass(frozen=True)
class VfRequest:
    """An `sriov:` NIC entry with its candidate PFs resolved (in the order the spec lists them)."""

    vm: str
    field: str
    nic_index: int
    pfs: tuple[PciDevice, ...]
    spec: SriovSpec

    @property
    def nodes(self) -> frozenset[int]:
        return frozenset(pf.numa_node for pf in self.pfs if pf.numa_node is not None)


def _label(dev: PciDevice) -> str:
    names = ",".join(dev.interfaces)
    return f"{dev.address} ({names})" if names else dev.address


def _lookup(topo: HostTopology, ref: str, field: str, origin: str, parked: Mapping[str, str]) -> PciDevice:
    dev = topo.pci(ref) if ":" in ref else topo.pci_by_interface(ref)
    if dev is None and ref in parked:
        # A NIC handed to a running slice lost its interface (the kernel drops the netdev when
        # vfio-pci takes the device): the slice's recorded plan still knows which device it was.
        held = topo.pci(parked[ref])
        dev = held if held is not None and held.driver in PARKED_DRIVERS else None
    if dev is None:
        known = ", ".join(sorted(i for d in topo.pci_devices if d.is_network for i in d.interfaces)) or "none"
        kind = "PCI device" if ":" in ref else "NIC"
        raise PlanError(f"{origin}: {field}: no {kind} {ref!r} on this host (NICs: {known})")
    return dev


def resolve_nics(
    topo: HostTopology, vms: Sequence[VmSpec], origin: str, parked: Mapping[str, str] | None = None
) -> tuple[list[ResolvedNic], list[VfRequest]]:
    """Each NIC entry of the spec as host PCI devices; unknown names are refused.

    `parked` maps interface names to the PCI addresses running slices took them from.
    """
    parked = parked or {}
    whole: list[ResolvedNic] = []
    vfs: list[VfRequest] = []
    for vi, vm in enumerate(vms):
        for ni, nic in enumerate(vm.nics):
            if nic.passthrough is not None:
                field = f"vms[{vi}].nics[{ni}].passthrough"
                device = _lookup(topo, nic.passthrough, field, origin, parked)
                whole.append(ResolvedNic(vm.name, field, device, nic.allow_non_nic))
            elif nic.sriov is not None:
                field = f"vms[{vi}].nics[{ni}].sriov.pf"
                pfs = tuple(_lookup(topo, ref, field, origin, parked) for ref in nic.sriov.pf)
                vfs.append(VfRequest(vm.name, field, ni, pfs, nic.sriov))
    return whole, vfs


def resolve_vf_pools(topo: HostTopology, host: HostSpec, origin: str) -> dict[str, int]:
    """host.sriov_vfs by PF address, each entry checked like any NIC reference of a VM.

    Refused: a NIC the host does not have, a device without SR-IOV, more VFs than the PF's
    sriov_totalvfs, one PF under two names (its interface and its PCI address).
    """
    pools: dict[str, int] = {}
    named: dict[str, str] = {}
    for ref, count in host.sriov_vfs.items():
        field = f"host.sriov_vfs.{ref}"
        pf = _lookup(topo, ref, field, origin, {})
        _require_sriov(pf, field, origin)
        if count > pf.sriov_totalvfs:
            raise PlanError(
                f"{origin}: {field}: {count} VFs asked of {_label(pf)}, more than its sriov_totalvfs "
                f"({pf.sriov_totalvfs})"
            )
        if pf.address in named:
            raise PlanError(
                f"{origin}: {field}: {_label(pf)} is already given as {named[pf.address]!r}; name each PF once"
            )
        named[pf.address] = ref
        pools[pf.address] = count
    return pools


def _require_sriov(pf: PciDevice, field: str, origin: str) -> None:
    if pf.sriov_totalvfs <= 0:
        raise PlanError(f"{origin}: {field}: {_label(pf)} is not SR-IOV capable (no sriov_totalvfs)")


def check_nics(
    topo: HostTopology,
    nics: Sequence[ResolvedNic],
    vf_requests: Sequence[VfRequest],
    host: HostSpec,
    origin: str,
    taken: Mapping[str, str] | None = None,
) -> list[str]:
    """Refuse unsafe assignments (PlanError); return host-level warnings.

    `taken`: PCI address -> holder, for devices slices outside the spec have (plan/held.py).
    """
    owner: dict[str, str] = dict(taken or {})
    for nic in nics:
        if nic.device.address in owner:
            raise PlanError(
                f"{origin}: {nic.field}: {_label(nic.device)} is already given to {owner[nic.device.address]}; "
                "a device can go to one VM only"
            )
        owner[nic.device.address] = nic.vm
    warnings: list[str] = []
    for nic in nics:
        _check_host_use(topo, nic, host.allow_management_nic, origin, warnings)
        _check_iommu_group(topo, nic, owner, origin)
    for req in vf_requests:
        for pf in req.pfs:
            _check_pf(topo, req, pf, owner, host.allow_management_nic, origin, warnings)
    if (nics or vf_requests) and topo.iommu_active is False:
        warnings.append(
            "IOMMU is not active (no /sys/kernel/iommu_groups): passthrough needs the planned kernel args and a reboot"
        )
    return warnings


def _check_management(
    topo: HostTopology,
    vm: str,
    field: str,
    dev: PciDevice,
    allow_mgmt: bool,
    origin: str,
    warnings: list[str],
    what: str,
) -> None:
    """Refuse the default-route / management NIC and bond or bridge members (faults.md 1, 2)."""
    for name in dev.interfaces:
        iface = topo.interface(name)
        if name == topo.default_route_interface or name in topo.management_interfaces:
            if not allow_mgmt:
                raise PlanError(
                    f"{origin}: {field}: {name} ({dev.address}) carries the host's default route or management "
                    f"address; {what} would cut the host off (override: host.allow_management_nic: true)"
                )
            warnings.append(f"OVERRIDE: {vm} uses {name}, the host's management NIC (allow_management_nic)")
        if iface is not None and iface.master is not None:
            raise PlanError(
                f"{origin}: {field}: {name} ({dev.address}) is a {iface.master_kind or 'master'} member of "
                f"{iface.master}; release it from {iface.master} first"
            )


def _check_pf(
    topo: HostTopology,
    req: VfRequest,
    pf: PciDevice,
    whole_owner: Mapping[str, str],
    allow_mgmt: bool,
    origin: str,
    warnings: list[str],
) -> None:
    _check_management(topo, req.vm, req.field, pf, allow_mgmt, origin, warnings, "making VFs on it")
    if pf.class_code and not pf.is_network:
        raise PlanError(f"{origin}: {req.field}: {_label(pf)} is {_class_name(pf)}, not a network device")
    _require_sriov(pf, req.field, origin)
    if pf.address in whole_owner:
        raise PlanError(
            f"{origin}: {req.field}: {_label(pf)} is passed through whole to {whole_owner[pf.address]}; "
            "a PF given away whole cannot also provide VFs"
        )


def _check_host_use(topo: HostTopology, nic: ResolvedNic, allow_mgmt: bool, origin: str, warnings: list[str]) -> None:
    dev = nic.device
    _check_device_class(nic, origin, warnings)
    _check_management(topo, nic.vm, nic.field, dev, allow_mgmt, origin, warnings, "passing it through")
    if dev.sriov_numvfs > 0:
        raise PlanError(
            f"{origin}: {nic.field}: {_label(dev)} has {dev.sriov_numvfs} VFs enabled; a PF with VFs cannot be "
            "passed through whole"
        )


def _class_name(dev: PciDevice) -> str:
    base = dev.class_code.removeprefix("0x")[:2]
    return f"{_PCI_CLASSES.get(base, 'a device')} (PCI class {dev.class_code})"


def _check_device_class(nic: ResolvedNic, origin: str, warnings: list[str]) -> None:
    """A typo in a PCI address must not hand the host's disk controller or a root port to a guest.

    Bridges are refused always: what sits behind one stays the host's, and a guest cannot
    use a bridge. Other functions need the NIC entry's explicit `allow_non_nic: true`.
    """
    dev = nic.device
    if not dev.class_code:  # older libvirt gives no class: a network interface is the only evidence
        if not dev.interfaces:
            warnings.append(f"{nic.vm}: the PCI class of {_label(dev)} is unknown; cannot check that it is a NIC")
        return
    if dev.is_bridge:
        raise PlanError(
            f"{origin}: {nic.field}: {_label(dev)} is {_class_name(dev)}; a bridge or root port is never passed through"
        )
    if dev.is_network:
        return
    if not nic.allow_non_nic:
        raise PlanError(
            f"{origin}: {nic.field}: {_label(dev)} is {_class_name(dev)}, not a network device; "
            "if this device is meant, say so with allow_non_nic: true on this NIC entry"
        )
    warnings.append(f"OVERRIDE: {nic.vm} gets {_label(dev)}, {_class_name(dev)} (allow_non_nic)")


def _check_iommu_group(topo: HostTopology, nic: ResolvedNic, owner: Mapping[str, str], origin: str) -> None:
    group = nic.device.iommu_group
    if group is None:
        return
    blockers = []
    for member in topo.iommu_group_members(group):
        if member.address == nic.device.address or member.is_bridge:
            continue
        member_owner = owner.get(member.address)
        if member_owner == nic.vm:
            continue
        if member_owner is not None:
            blockers.append(f"{_label(member)} given to {member_owner}")
        elif member.driver not in PARKED_DRIVERS:
            blockers.append(f"{_label(member)} driver {member.driver}")
    if blockers:
        raise PlanError(
            f"{origin}: {nic.field}: IOMMU group {group} of {_label(nic.device)} also holds devices the host or "
            f"another VM uses: {'; '.join(blockers)} (give the whole group to {nic.vm})"
        )


def numa_warning(topo: HostTopology, vm: str, dev: PciDevice, vm_nodes: Sequence[int], what: str = "NIC") -> str | None:
    if dev.numa_node is None:
        if sum(1 for node in topo.numa_nodes if node.cpus) <= 1:
            return None  # one node: every device is local to it, whatever the firmware says
        return f"{vm}: {what} {_label(dev)} reports no NUMA node (-1); locality unknown"
    if dev.numa_node not in vm_nodes:
        where = ",".join(str(n) for n in vm_nodes)
        return (
            f"{vm}: {what} {_label(dev)} is on NUMA node {dev.numa_node}, the VM's CPUs and memory are on node {where} "
            "(cross-NUMA)"
        )
    return None
