"""A slice's recorded plan, read back from its domain's bmslice metadata as strictly as a spec.

`apply` writes each VM's plan (`plan_to_dict`'s entry for it) into the domain it defines;
re-planning keeps the slice where that record says. The record comes back from libvirt,
where anyone with virsh can have edited it, another bmslice version can have written it,
or a tool can have cut it short; so it is checked like user input: strict JSON of bounded
size, no key bmslice does not write, strict types (a string is not a count), and every name
through the spec's own validators (VM name, interface names, PCI addresses, MACs, CPU
features). What fails is one `RecordError` line saying why; the caller reports the slice as
unreadable and keeps clear of what libvirt says it holds (apply/context.py).

>>> recorded_vm('{"name": "a"')
Traceback (most recent call last):
...
bmslice.model.recorded.RecordError: not JSON: Expecting ',' delimiter at line 1
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import Meta

from bmslice.cpuset import MAX_CPU_ID, CpuSet
from bmslice.errors import SpecError
from bmslice.model.fields import IFNAME_RE, CanonicalPci, CpuFeature, matching, text
from bmslice.model.input_file import parse_json, validated
from bmslice.model.plan import (
    CacheTune,
    DeviceAssignment,
    GuestCell,
    GuestTopology,
    RealtimePlan,
    VmPlan,
    WayMask,
)
from bmslice.model.spec import MAX_NUMA_NODE, MAX_RT_PRIORITY, MAX_VFS, EmulatorPolicy, Mac, Strict, VmName
from bmslice.safe_text import shown

MAX_RECORD_CHARS = 1 << 20  # a 256-vCPU slice with every option records a few KiB
MAX_LIST = 4096  # no list in a record (pins, cores, devices) is longer than a host has CPUs

CpuId = Annotated[int, Meta(ge=0, le=MAX_CPU_ID)]
NodeId = Annotated[int, Meta(ge=0, le=MAX_NUMA_NODE)]
Count = Annotated[int, Meta(ge=0, le=1 << 40)]
Positive = Annotated[int, Meta(ge=1, le=1 << 40)]
# A kernel driver's name as sysfs shows it ("vfio-pci", "mlx5_core", "ixgbe").
DRIVER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
WARNING_RE = re.compile(r"[^\x00-\x1f\x7f]{1,2000}")  # a plan warning: one line of printable text
HEX_MASK_RE = re.compile(r"[0-9a-f]{1,64}")


class RecordError(ValueError):
    """Why a domain's bmslice metadata cannot be read back as a plan (one line, safe to print)."""


def _interfaces(value: str) -> str:
    """One interface name, or several joined by ',' (a PCI function with two netdevs)."""
    if not all(IFNAME_RE.fullmatch(name) for name in value.split(",")):
        raise ValueError(f"{shown(value)} is not an interface name (or a comma-joined list of them)")
    return value


if TYPE_CHECKING:
    Driver = str
    PlanWarning = str
    HexMask = str
    Interfaces = str
else:
    Driver = matching("Driver", DRIVER_RE, "a kernel driver name")
    PlanWarning = matching("PlanWarning", WARNING_RE, "a one-line warning")
    HexMask = matching("HexMask", HEX_MASK_RE, "a hexadecimal way mask")
    Interfaces = text("Interfaces", _interfaces)


class _Device(Strict, frozen=True):
    address: CanonicalPci | None
    type: Literal["passthrough", "vf"]
    numa_node: NodeId | None
    interface: Interfaces | None = None
    driver: Driver | None = None
    pf: CanonicalPci | None = None
    vf_index: Annotated[int, Meta(ge=0, le=MAX_VFS)] | None = None
    vlan: Annotated[int, Meta(ge=1, le=4094)] | None = None
    mac: Mac | None = None
    trust: bool | None = None
    spoofchk: bool | None = None
    created_vfs: bool | None = None


class _Topology(Strict, frozen=True):
    sockets: Positive
    cores: Positive
    threads: Annotated[int, Meta(ge=1, le=2)]
    dies: Positive = 1


class _Realtime(Strict, frozen=True):
    housekeeping_vcpus: Count
    priority: Annotated[int, Meta(ge=1, le=MAX_RT_PRIORITY)]
    memlock_mib: Count


class _Ways(Strict, frozen=True):
    cache_id: Count
    mask: HexMask
    ways: Count
    size_kib: Count


class _Cache(Strict, frozen=True):
    l3_kib: Positive | None
    memory_bandwidth: Annotated[int, Meta(ge=1, le=100)] | None
    domains: Annotated[list[Count], Meta(max_length=MAX_LIST)]
    ways: Annotated[list[_Ways], Meta(max_length=MAX_LIST)]


class _Cell(Strict, frozen=True):
    node: NodeId
    vcpus: Annotated[list[CpuId], Meta(max_length=MAX_LIST)]
    memory_mib: Positive
    distances: Annotated[tuple[Annotated[int, Meta(ge=0, le=255)], ...], Meta(max_length=MAX_LIST)] = ()


class _Vm(Strict, frozen=True, kw_only=True):
    name: VmName
    numa_nodes: Annotated[list[NodeId], Meta(min_length=1, max_length=MAX_LIST)]
    vcpu_pins: Annotated[list[CpuId], Meta(min_length=1, max_length=MAX_LIST)]
    emulator_cpus: Annotated[list[CpuId], Meta(max_length=MAX_LIST)]
    iothread_cpus: Annotated[list[CpuId], Meta(max_length=MAX_LIST)]
    iothreads: Annotated[int, Meta(ge=0, le=MAX_LIST)]
    emulator_policy: Literal["dedicated", "host"]
    cores: Annotated[list[list[CpuId]], Meta(min_length=1, max_length=MAX_LIST)]
    guest_topology: _Topology
    memory_mib: Positive
    hugepage_kib: Literal[2048, 1048576] | None = None
    devices: Annotated[tuple[_Device, ...], Meta(max_length=MAX_LIST)] = ()
    disable_cpu_features: Annotated[tuple[CpuFeature, ...], Meta(max_length=MAX_LIST)] = ()
    domain_type: Literal["kvm", "qemu"] = "kvm"
    warnings: Annotated[tuple[PlanWarning, ...], Meta(max_length=MAX_LIST)] = ()
    realtime: _Realtime | None = None
    l3_domains: Annotated[tuple[Count, ...], Meta(max_length=MAX_LIST)] = ()
    cache: _Cache | None = None
    cells: Annotated[tuple[_Cell, ...], Meta(max_length=MAX_LIST)] = ()


def _plan(vm: _Vm) -> VmPlan:
    topo = vm.guest_topology
    return VmPlan(
        name=vm.name,
        numa_nodes=tuple(vm.numa_nodes),
        vcpu_pins=tuple(vm.vcpu_pins),
        emulator_cpus=CpuSet.from_iter(vm.emulator_cpus),
        iothread_cpus=CpuSet.from_iter(vm.iothread_cpus),
        iothreads=vm.iothreads,
        guest_topology=GuestTopology(topo.sockets, topo.cores, topo.threads, topo.dies),
        memory_mib=vm.memory_mib,
        hugepage_kib=vm.hugepage_kib,
        cores=tuple(CpuSet.from_iter(core) for core in vm.cores),
        emulator_policy=vm.emulator_policy,
        devices=tuple(DeviceAssignment(**msgspec.structs.asdict(d)) for d in vm.devices),
        disable_cpu_features=tuple(vm.disable_cpu_features),
        domain_type=vm.domain_type,
        warnings=tuple(vm.warnings),
        realtime=RealtimePlan(vm.realtime.housekeeping_vcpus, vm.realtime.priority, vm.realtime.memlock_mib)
        if vm.realtime is not None
        else None,
        l3_domains=tuple(vm.l3_domains),
        cache=CacheTune(
            vm.cache.l3_kib,
            vm.cache.memory_bandwidth,
            tuple(vm.cache.domains),
            tuple(WayMask(w.cache_id, int(w.mask, 16), w.size_kib) for w in vm.cache.ways),
        )
        if vm.cache is not None
        else None,
        cells=tuple(GuestCell(c.node, CpuSet.from_iter(c.vcpus), c.memory_mib, tuple(c.distances)) for c in vm.cells),
    )


def _consistent(vm: VmPlan) -> None:
    """What the rest of bmslice relies on: the CPUs a slice runs on are the cores it holds.

    A record whose vCPUs sit outside its cores would let a re-plan hand those CPUs to
    another VM; a guest topology that does not multiply out to its vCPUs would not define.
    """
    owned = vm.owned_cpus
    if sum(len(core) for core in vm.cores) != len(owned):
        raise RecordError("cores: a CPU is listed in two cores")
    if not vm.vcpu_cpus.issubset(owned):
        raise RecordError(f"vcpu_pins: CPUs {vm.vcpu_cpus - owned} are not in the slice's cores")
    if len(vm.vcpu_cpus) != vm.vcpus:
        raise RecordError("vcpu_pins: two vCPUs on one CPU")
    # A VM over several nodes on hugepages also lets its emulator run on the host's CPUs of its
    # other nodes (libvirt's per-cell prealloc threads, planner.py); every other emulator
    # runs on the slice's own core.
    outside = vm.emulator_cpus - owned
    prealloc = len(vm.numa_nodes) > 1 and bool(vm.hugepage_kib) and vm.emulator_cpus != outside
    if vm.emulator_policy == EmulatorPolicy.DEDICATED.value and outside and not prealloc:
        raise RecordError(f"emulator_cpus: CPUs {outside} are not in the slice's cores")
    topo = vm.guest_topology
    if topo.sockets * topo.dies * topo.cores * topo.threads != vm.vcpus:
        raise RecordError(f"guest_topology: does not multiply out to its {vm.vcpus} vCPUs")
    if vm.realtime is not None and vm.realtime.housekeeping_vcpus >= vm.vcpus:
        raise RecordError("realtime.housekeeping_vcpus: leaves no realtime vCPU")
    if any(cell.node not in vm.numa_nodes for cell in vm.cells):
        raise RecordError("cells: a cell on a node the slice is not on")
    if any(d.type == "vf" and (d.pf is None or d.vf_index is None) for d in vm.devices):
        raise RecordError("devices: a VF without its PF and index")
    if any(d.type == "passthrough" and d.address is None for d in vm.devices):
        raise RecordError("devices: a passthrough device without its PCI address")


def recorded_vm(text: str) -> VmPlan:
    """The VmPlan a domain's bmslice metadata records; RecordError says why it cannot be one."""
    if len(text) > MAX_RECORD_CHARS:
        raise RecordError(f"{len(text)} characters, more than any plan bmslice records ({MAX_RECORD_CHARS})")
    try:
        data = parse_json(text, "")
    except SpecError as exc:
        raise RecordError(str(exc).removeprefix(": ")) from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise RecordError(f"JSON {kind}, not the object bmslice records")
    try:
        vm = _plan(validated(data, _Vm, ""))
    except SpecError as exc:
        raise RecordError(str(exc).removeprefix(": ")) from None
    _consistent(vm)
    return vm
