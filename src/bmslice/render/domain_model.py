"""The libvirt-level view of a slice's domain, which both writes and reads domain XML.

Rendering builds a `Domain` from a `VmPlan` and serialises it; verification parses the
live XML into the same `Domain` and compares field by field, so what is checked is
exactly what was written (the virtinst approach: one model for both directions).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace

from bmslice.cpuset import CpuSet
from bmslice.model.plan import GuestTopology, VmPlan, plan_to_dict

BMSLICE_NS = "https://bmslice.dev/xmlns/slice/1"
# Every version's namespace starts so: a domain carrying another version's record is still a slice.
BMSLICE_NS_PREFIX = "https://bmslice.dev/xmlns/slice/"
_UUID_NAMESPACE = uuid.UUID("6f1d3c1e-5b1a-4f53-9a51-6d8c0b6a4e01")


@dataclass(frozen=True)
class Disk:
    path: str
    target: str  # "vda", "sda"
    device: str = "disk"  # "disk" | "cdrom"
    format: str = "qcow2"  # "qcow2" | "raw"
    bus: str = "virtio"  # "virtio" | "sata"
    iothread: int | None = None
    readonly: bool = False


@dataclass(frozen=True)
class VfInterface:
    """An SR-IOV VF given to the guest as <interface type='hostdev'> (MAC and VLAN set by libvirt)."""

    address: str | None  # None: planned by (PF, index), resolved at apply time (no XML until then)
    mac: str
    vlan: int | None = None


@dataclass(frozen=True)
class VcpuSched:
    """<vcpusched>: a scheduler policy and priority for a set of vCPUs."""

    vcpus: CpuSet
    scheduler: str  # "fifo" | "rr" | "batch" | "idle" | "other"
    priority: int | None = None


@dataclass(frozen=True)
class ResctrlTune:
    """A <cachetune> ((L3 cache id, KiB) entries) or <memorytune> ((node id, percent)) for `vcpus`."""

    vcpus: CpuSet
    entries: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class DomainCell:
    """A guest NUMA cell (<cpu><numa><cell>) and the host node its memory is bound to (<memnode>)."""

    id: int
    cpus: CpuSet  # guest vCPUs
    memory_kib: int
    host_node: int
    distances: tuple[int, ...] = ()  # to cell 0, 1, ... as the host's node distances


@dataclass(frozen=True)
class Domain:
    name: str
    uuid: str
    type: str
    memory_kib: int
    vcpus: int
    iothreads: int
    vcpupins: tuple[tuple[int, CpuSet], ...]
    emulatorpin: CpuSet | None
    iothreadpins: tuple[tuple[int, CpuSet], ...]
    numa_mode: str | None
    numa_nodeset: CpuSet | None
    cpu_mode: str
    topology: GuestTopology | None
    disabled_features: tuple[str, ...]
    hostdevs: tuple[str, ...]  # PCI addresses "0000:01:00.0"
    hugepage_kib: int | None = None
    vf_interfaces: tuple[VfInterface, ...] = ()
    disks: tuple[Disk, ...] = ()
    plan_json: str | None = None  # the VmPlan this domain was rendered from (metadata)
    # Realtime (all at their "absent" value for an ordinary slice, so its XML is unchanged).
    vcpusched: tuple[VcpuSched, ...] = ()
    memory_locked: bool = False  # <memoryBacking><locked/>
    nosharepages: bool = False  # <memoryBacking><nosharepages/>: no KSM merging
    hard_limit_kib: int | None = None  # <memtune><hard_limit>: also QEMU's RLIMIT_MEMLOCK when locked
    pmu: bool | None = None  # <features><pmu state=...>; None: not stated
    kvm_hint_dedicated: bool = False  # <features><kvm><hint-dedicated state='on'/>
    required_features: tuple[str, ...] = ()  # <cpu><feature policy='require'>
    cachetunes: tuple[ResctrlTune, ...] = ()
    memorytunes: tuple[ResctrlTune, ...] = ()
    # A VM over several host nodes: its guest cells, and which cell each device (by its host PCI
    # address) hangs off — a pcie-expander-bus bound to that cell, so the guest sees locality.
    cells: tuple[DomainCell, ...] = ()
    device_cells: tuple[tuple[str, int], ...] = ()


def domain_uuid(name: str) -> str:
    """Stable per name, so re-rendering the same plan gives the same bytes."""
    return str(uuid.uuid5(_UUID_NAMESPACE, name))


def domain_from_plan(vm: VmPlan, disks: tuple[Disk, ...] = ()) -> Domain:
    vm_json = json.dumps(plan_to_dict_vm(vm), sort_keys=True)
    domain = Domain(
        name=vm.name,
        uuid=domain_uuid(vm.name),
        type=vm.domain_type,
        memory_kib=vm.memory_mib * 1024,
        vcpus=vm.vcpus,
        iothreads=vm.iothreads,
        vcpupins=tuple((i, CpuSet.of(cpu)) for i, cpu in enumerate(vm.vcpu_pins)),
        emulatorpin=vm.emulator_cpus,
        iothreadpins=tuple((i, vm.iothread_cpus) for i in range(1, vm.iothreads + 1)),
        numa_mode="strict",
        numa_nodeset=CpuSet.from_iter(vm.numa_nodes),
        cpu_mode=cpu_mode(vm.domain_type),
        topology=vm.guest_topology,
        disabled_features=vm.disable_cpu_features,
        hostdevs=tuple(d.known_address for d in vm.devices if d.type == "passthrough"),
        hugepage_kib=vm.hugepage_kib,
        vf_interfaces=tuple(VfInterface(d.address, d.mac or "", d.vlan) for d in vm.devices if d.type == "vf"),
        disks=disks,
        plan_json=vm_json,
        cachetunes=_cachetunes(vm),
        memorytunes=_memorytunes(vm),
        cells=tuple(
            DomainCell(i, cell.vcpus, cell.memory_mib * 1024, cell.node, cell.distances)
            for i, cell in enumerate(vm.cells)
        ),
        device_cells=_device_cells(vm),
    )
    return _realtime(domain, vm) if vm.realtime is not None else domain


def _device_cells(vm: VmPlan) -> tuple[tuple[str, int], ...]:
    """Each device of a VM over several nodes on the guest cell of its host node (if one of them)."""
    out = []
    for dev in vm.devices:
        cell = vm.cell_of_node(dev.numa_node)
        if cell is not None and dev.address is not None:
            out.append((dev.address, cell))
    return tuple(sorted(out))


def _realtime(domain: Domain, vm: VmPlan) -> Domain:
    """A realtime slice's XML (docs/realtime.md names the guide behind each setting).

    The dedicated-vCPU hint and the TSC-deadline requirement are KVM's: under TCG QEMU only
    warns that it cannot honour the hint, and the guest timer is emulated anyway.
    """
    assert vm.realtime is not None
    kvm = vm.domain_type == "kvm"
    return replace(
        domain,
        vcpusched=(VcpuSched(CpuSet.from_iter(vm.realtime_vcpus), "fifo", vm.realtime.priority),),
        memory_locked=True,
        nosharepages=True,
        hard_limit_kib=vm.realtime.memlock_mib * 1024,
        pmu=False,
        kvm_hint_dedicated=kvm,
        required_features=("tsc-deadline",) if kvm else (),
    )


def _cachetunes(vm: VmPlan) -> tuple[ResctrlTune, ...]:
    """One resctrl group for all the VM's vCPUs: its ways on each L3 domain they use."""
    if vm.cache is None or not vm.cache.ways:
        return ()
    return (ResctrlTune(CpuSet.from_iter(range(vm.vcpus)), tuple((w.cache_id, w.size_kib) for w in vm.cache.ways)),)


def _memorytunes(vm: VmPlan) -> tuple[ResctrlTune, ...]:
    """The same vCPUs' bandwidth cap on each of those domains (libvirt puts both in one group)."""
    if vm.cache is None or vm.cache.memory_bandwidth is None:
        return ()
    caps = tuple((d, vm.cache.memory_bandwidth) for d in vm.cache.domains)
    return (ResctrlTune(CpuSet.from_iter(range(vm.vcpus)), caps),)


def cpu_mode(domain_type: str) -> str:
    """host-passthrough under KVM; TCG cannot pass the host CPU through, "maximum" is its nearest."""
    return "host-passthrough" if domain_type == "kvm" else "maximum"


def plan_to_dict_vm(vm: VmPlan) -> dict[str, object]:
    """The VM's own entry of the plan JSON (recorded in the domain's metadata)."""
    from bmslice.model.plan import HostPlan, Plan

    empty_host = HostPlan(CpuSet(), CpuSet(), (), False)
    entry: dict[str, object] = plan_to_dict(Plan(empty_host, (vm,)))["vms"][0]
    return entry
