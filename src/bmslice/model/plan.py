"""The plan: every decision bmslice made, as frozen values that render and verify read.

`plan_to_dict` gives the JSON form (`bmslice plan --json`) and `plan_from_dict` reads it
back, so an applied layout can be recorded on the host and kept stable on re-planning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bmslice.cpuset import CpuSet


@dataclass(frozen=True)
class GuestTopology:
    sockets: int
    cores: int
    threads: int
    dies: int = 1


AT_APPLY = "address resolved at apply time"  # how reports show a VF address the plan leaves to apply


@dataclass(frozen=True)
class DeviceAssignment:
    # A VF the host could not place in advance (no VF offset/stride known, VFs not made yet)
    # has None here: apply reads the address from the PF's virtfn link once the VF exists.
    address: str | None
    type: str  # "passthrough" (a whole device) | "vf" (an SR-IOV virtual function)
    numa_node: int | None
    interface: str | None = None  # the device's interface, or the PF's for a VF
    driver: str | None = None  # the host driver it had at discovery
    pf: str | None = None  # VF only: the PF's PCI address ...
    vf_index: int | None = None  # ... and the VF's index on it (stable across runs)
    vlan: int | None = None  # VF only: None is untagged
    mac: str | None = None
    trust: bool | None = None
    spoofchk: bool | None = None
    created_vfs: bool | None = None  # VF only: bmslice created the PF's VFs (destroy sets the count back)

    @property
    def known_address(self) -> str:
        """`address` where the plan must know it: every passthrough device, a VF once apply resolved it."""
        if self.address is None:
            raise ValueError(f"VF {self.vf_index} of {self.pf}: no PCI address until apply resolves it")
        return self.address


@dataclass(frozen=True)
class PfPlan:
    """How many VFs a PF must have; `numvfs_before` is what discovery found."""

    address: str
    interface: str | None
    numvfs_before: int
    numvfs: int


@dataclass(frozen=True)
class NodeHugepages:
    node: int
    size_kib: int
    pages: int


@dataclass(frozen=True)
class RealtimePlan:
    """vCPUs `housekeeping_vcpus`.. run SCHED_FIFO at `priority`; guest RAM is locked, and
    `memlock_mib` (guest RAM + QEMU's own, plan/realtime.py) is the cap that makes locking possible."""

    housekeeping_vcpus: int
    priority: int
    memlock_mib: int


@dataclass(frozen=True)
class WayMask:
    """L3 ways a slice holds on one L3 cache: a contiguous mask, and the size libvirt is asked for."""

    cache_id: int
    mask: int
    size_kib: int  # ways x way size: libvirt turns it back into exactly these ways

    @property
    def ways(self) -> int:
        return self.mask.bit_count()


@dataclass(frozen=True)
class CacheTune:
    """A VM's resctrl reservation: what the spec asked, and where (the L3 domains of its vCPUs)."""

    l3_kib: int | None  # asked per L3 domain; None: no cache ways
    memory_bandwidth: int | None  # percent cap asked; None: none
    domains: tuple[int, ...]  # L3 ids of the vCPUs' cores (= the MB domain ids)
    ways: tuple[WayMask, ...] = ()  # one per domain when l3_kib is set


@dataclass(frozen=True)
class GuestCell:
    """One guest NUMA cell of a VM that spans host nodes: its host node, guest vCPUs and memory.

    `distances`: the host's node distances from this cell's node to every cell's node, in
    cell order, so the guest sees the same relative costs the host has.
    """

    node: int
    vcpus: CpuSet  # guest vCPU ids
    memory_mib: int
    distances: tuple[int, ...] = ()


@dataclass(frozen=True)
class VmPlan:
    name: str
    numa_nodes: tuple[int, ...]
    vcpu_pins: tuple[int, ...]  # host CPU of guest vCPU 0, 1, ...
    emulator_cpus: CpuSet
    iothread_cpus: CpuSet
    iothreads: int
    guest_topology: GuestTopology
    memory_mib: int
    hugepage_kib: int | None
    cores: tuple[CpuSet, ...]  # whole host cores this VM owns (vCPU cores + dedicated emulator core)
    emulator_policy: str
    devices: tuple[DeviceAssignment, ...] = ()
    disable_cpu_features: tuple[str, ...] = ()
    domain_type: str = "kvm"
    warnings: tuple[str, ...] = ()
    realtime: RealtimePlan | None = None
    l3_domains: tuple[int, ...] = ()  # L3 cache ids its cores sit in (empty: the host does not say)
    cache: CacheTune | None = None
    cells: tuple[GuestCell, ...] = ()  # a VM over several host nodes (numa_nodes); () for one node

    @property
    def vcpus(self) -> int:
        return len(self.vcpu_pins)

    @property
    def realtime_vcpus(self) -> tuple[int, ...]:
        """Guest vCPUs that run SCHED_FIFO: every vCPU after the housekeeping ones (none without realtime)."""
        if self.realtime is None:
            return ()
        return tuple(range(self.realtime.housekeeping_vcpus, self.vcpus))

    @property
    def vcpu_cpus(self) -> CpuSet:
        return CpuSet.from_iter(self.vcpu_pins)

    @property
    def owned_cpus(self) -> CpuSet:
        return CpuSet.union(self.cores)

    def memory_by_node(self) -> dict[int, int]:
        """MiB of guest memory on each host node (a one-node VM: all on its node)."""
        if not self.cells:
            return {self.numa_nodes[0]: self.memory_mib}
        out: dict[int, int] = {}
        for cell in self.cells:
            out[cell.node] = out.get(cell.node, 0) + cell.memory_mib
        return out

    def cell_of_node(self, node: int | None) -> int | None:
        """The guest cell on host node `node` (None: not one of the VM's nodes, or a one-node VM)."""
        for index, cell in enumerate(self.cells):
            if cell.node == node:
                return index
        return None


@dataclass(frozen=True)
class HostPlan:
    reserved_cpus: CpuSet
    isolated_cpus: CpuSet
    kernel_args: tuple[str, ...]
    reboot_required: bool
    missing_kernel_args: tuple[str, ...] = ()
    hugepages: tuple[NodeHugepages, ...] = ()
    cpu_vendor: str = ""
    sriov: tuple[PfPlan, ...] = ()
    l3_host_masks: tuple[tuple[int, int], ...] = ()  # (L3 id, ways of the default group) when slices hold ways


@dataclass(frozen=True)
class Plan:
    host: HostPlan
    vms: tuple[VmPlan, ...]
    warnings: tuple[str, ...] = field(default=())

    def vm(self, name: str) -> VmPlan:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)


def _device_to_dict(d: DeviceAssignment) -> dict[str, Any]:
    out: dict[str, Any] = {
        "address": d.address,
        "type": d.type,
        "numa_node": d.numa_node,
        "interface": d.interface,
        "driver": d.driver,
    }
    if d.type == "vf":
        out.update(
            pf=d.pf,
            vf_index=d.vf_index,
            vlan=d.vlan,
            mac=d.mac,
            trust=d.trust,
            spoofchk=d.spoofchk,
            created_vfs=d.created_vfs,
        )
    return out


def _vm_to_dict(vm: VmPlan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": vm.name,
        "numa_nodes": list(vm.numa_nodes),
        "vcpu_pins": list(vm.vcpu_pins),
        "emulator_cpus": vm.emulator_cpus.sorted(),
        "iothread_cpus": vm.iothread_cpus.sorted(),
        "iothreads": vm.iothreads,
        "emulator_policy": vm.emulator_policy,
        "cores": [core.sorted() for core in vm.cores],
        "guest_topology": {
            "sockets": vm.guest_topology.sockets,
            "dies": vm.guest_topology.dies,
            "cores": vm.guest_topology.cores,
            "threads": vm.guest_topology.threads,
        },
        "memory_mib": vm.memory_mib,
        "hugepage_kib": vm.hugepage_kib,
        "devices": [_device_to_dict(d) for d in vm.devices],
        "disable_cpu_features": list(vm.disable_cpu_features),
        "domain_type": vm.domain_type,
        "warnings": list(vm.warnings),
    }
    if vm.realtime is not None:  # only then: an ordinary VM's plan (and recorded metadata) stays as it was
        rt = vm.realtime
        out["realtime"] = {
            "housekeeping_vcpus": rt.housekeeping_vcpus,
            "priority": rt.priority,
            "memlock_mib": rt.memlock_mib,
        }
    # Present only where the host reports L3 caches, so plans recorded before them read the same.
    if vm.l3_domains:
        out["l3_domains"] = list(vm.l3_domains)
    if vm.cache is not None:
        out["cache"] = _cache_to_dict(vm.cache)
    if vm.cells:  # only a VM over several nodes: one-node plans (and recorded ones) read as before
        out["cells"] = [
            {"node": c.node, "vcpus": c.vcpus.sorted(), "memory_mib": c.memory_mib, "distances": list(c.distances)}
            for c in vm.cells
        ]
    return out


def _realtime_from_dict(data: dict[str, Any] | None) -> RealtimePlan | None:
    """None for plans recorded before realtime existed (no key) and for ordinary VMs."""
    if data is None:
        return None
    return RealtimePlan(data["housekeeping_vcpus"], data["priority"], data["memlock_mib"])


def _cache_to_dict(cache: CacheTune) -> dict[str, Any]:
    return {
        "l3_kib": cache.l3_kib,
        "memory_bandwidth": cache.memory_bandwidth,
        "domains": list(cache.domains),
        "ways": [
            {"cache_id": w.cache_id, "mask": f"{w.mask:x}", "ways": w.ways, "size_kib": w.size_kib} for w in cache.ways
        ],
    }


def _cache_from_dict(data: dict[str, Any] | None) -> CacheTune | None:
    if data is None:
        return None
    return CacheTune(
        data["l3_kib"],
        data["memory_bandwidth"],
        tuple(data["domains"]),
        tuple(WayMask(w["cache_id"], int(w["mask"], 16), w["size_kib"]) for w in data["ways"]),
    )


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    host = plan.host
    return {
        "host": {
            "cpu_vendor": host.cpu_vendor,
            "reserved_cpus": host.reserved_cpus.sorted(),
            "isolated_cpus": host.isolated_cpus.sorted(),
            "kernel_args": list(host.kernel_args),
            "reboot_required": host.reboot_required,
            "missing_kernel_args": list(host.missing_kernel_args),
            "hugepages": [{"node": h.node, "size_kib": h.size_kib, "pages": h.pages} for h in host.hugepages],
            "sriov": [
                {"pf": p.address, "interface": p.interface, "numvfs_before": p.numvfs_before, "numvfs": p.numvfs}
                for p in host.sriov
            ],
            **_host_masks_to_dict(host),
        },
        "vms": [_vm_to_dict(vm) for vm in plan.vms],
        "warnings": list(plan.warnings),
    }


def _host_masks_to_dict(host: HostPlan) -> dict[str, Any]:
    """The default resctrl group's L3 ways, only in plans whose slices hold ways."""
    if not host.l3_host_masks:
        return {}
    return {"l3_host_masks": {str(cache_id): f"{mask:x}" for cache_id, mask in host.l3_host_masks}}


def vm_from_dict(data: dict[str, Any]) -> VmPlan:
    topo = data["guest_topology"]
    return VmPlan(
        name=data["name"],
        numa_nodes=tuple(data["numa_nodes"]),
        vcpu_pins=tuple(data["vcpu_pins"]),
        emulator_cpus=CpuSet.from_iter(data["emulator_cpus"]),
        iothread_cpus=CpuSet.from_iter(data["iothread_cpus"]),
        iothreads=data["iothreads"],
        guest_topology=GuestTopology(topo["sockets"], topo["cores"], topo["threads"], topo.get("dies", 1)),
        memory_mib=data["memory_mib"],
        hugepage_kib=data.get("hugepage_kib"),
        cores=tuple(CpuSet.from_iter(c) for c in data["cores"]),
        emulator_policy=data["emulator_policy"],
        devices=tuple(DeviceAssignment(**d) for d in data.get("devices", [])),
        disable_cpu_features=tuple(data.get("disable_cpu_features", [])),
        domain_type=data.get("domain_type", "kvm"),
        warnings=tuple(data.get("warnings", [])),
        realtime=_realtime_from_dict(data.get("realtime")),
        l3_domains=tuple(data.get("l3_domains", [])),
        cache=_cache_from_dict(data.get("cache")),
        cells=tuple(
            GuestCell(c["node"], CpuSet.from_iter(c["vcpus"]), c["memory_mib"], tuple(c.get("distances", [])))
            for c in data.get("cells", [])
        ),
    )


def plan_from_dict(data: dict[str, Any]) -> Plan:
    host = data["host"]
    return Plan(
        host=HostPlan(
            reserved_cpus=CpuSet.from_iter(host["reserved_cpus"]),
            isolated_cpus=CpuSet.from_iter(host["isolated_cpus"]),
            kernel_args=tuple(host["kernel_args"]),
            reboot_required=host["reboot_required"],
            missing_kernel_args=tuple(host.get("missing_kernel_args", [])),
            hugepages=tuple(NodeHugepages(h["node"], h["size_kib"], h["pages"]) for h in host.get("hugepages", [])),
            cpu_vendor=host.get("cpu_vendor", ""),
            sriov=tuple(
                PfPlan(p["pf"], p.get("interface"), p["numvfs_before"], p["numvfs"]) for p in host.get("sriov", [])
            ),
            l3_host_masks=tuple((int(i), int(m, 16)) for i, m in host.get("l3_host_masks", {}).items()),
        ),
        vms=tuple(vm_from_dict(vm) for vm in data["vms"]),
        warnings=tuple(data.get("warnings", [])),
    )
