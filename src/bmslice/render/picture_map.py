"""Who owns which hardware thread and NIC: the one map that the SVG, HTML and terminal pictures draw.

Pure: (topology, plan) -> `PictureMap`, grouped socket -> NUMA node -> core -> thread, in
the order the host numbers them. Every drawing reads this map, so the pictures agree.

>>> from bmslice.model.topology import Cpu, HostTopology, NumaNode
>>> from bmslice.model.plan import GuestTopology, HostPlan, Plan, VmPlan
>>> cpus = tuple(Cpu(i, 0, i % 2, 0, CpuSet.of(i % 2, i % 2 + 2)) for i in range(4))
>>> topo = HostTopology("GenuineIntel", "", None, cpus, (NumaNode(0, CpuSet.parse("0-3"), 1024),))
>>> vm = VmPlan("web", (0,), (1, 3), CpuSet(), CpuSet(), 0, GuestTopology(1, 1, 2), 512, None,
...             (CpuSet.of(1, 3),), "host")
>>> plan = Plan(HostPlan(CpuSet.of(0, 2), CpuSet.of(1, 3), (), False), (vm,))
>>> [t.label for core in picture_map(topo, plan).sockets[0].nodes[0].cores for t in core.threads]
['0 · host', '2 · host', '1 · v0', '3 · v1']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from bmslice.cpuset import CpuSet
from bmslice.model.plan import DeviceAssignment, Plan, VmPlan
from bmslice.model.sizes import format_mib
from bmslice.model.topology import HostTopology
from bmslice.plan.room import NodeRoom
from bmslice.render.node_text import node_text as node_text  # re-exported: report_html imports it from here


class Role(StrEnum):
    HOST = "host"  # reserved for the host OS and IRQs
    VCPU = "vcpu"  # a guest vCPU is pinned here
    EMULATOR = "emulator"  # a VM's dedicated emulator/IOThread CPU
    SPARE = "spare"  # owned by a VM (its core) but runs nothing: an odd vCPU count
    ISOLATED = "isolated"  # isolated from the host scheduler, no VM yet: room for a later slice
    FREE = "free"  # neither reserved, isolated nor planned


@dataclass(frozen=True)
class VmKey:
    """A VM as the legend shows it; `index` picks its colour, `letter` tags it where colour is lost."""

    index: int
    name: str
    letter: str
    numa_nodes: tuple[int, ...]
    vcpus: int
    emulator_policy: str
    emulator_cpus: CpuSet
    nics: tuple[str, ...]  # "eno1" passed through whole, "eno2 VF0 vlan 200" an SR-IOV VF
    l3_domains: tuple[int, ...] = ()

    @property
    def where(self) -> str:
        """ "node 1", or "node 1, L3 6" where the host reports its L3 caches"""
        l3 = f", L3 {','.join(map(str, self.l3_domains))}" if self.l3_domains else ""
        if len(self.numa_nodes) > 1:  # a guest NUMA cell on each
            return f"nodes {','.join(map(str, self.numa_nodes))} ({len(self.numa_nodes)} guest cells){l3}"
        return f"node {self.numa_nodes[0]}{l3}"


@dataclass(frozen=True)
class Thread:
    cpu: int
    role: Role
    vm: int | None = None  # VmKey.index of the owner
    vcpu: int | None = None  # guest vCPU number (Role.VCPU)
    shared_emulators: tuple[int, ...] = ()  # VMs whose emulator threads float on this host CPU

    @property
    def tag(self) -> str:
        """The short owner text drawn after the CPU number."""
        if self.role is Role.VCPU:
            return f"v{self.vcpu}"
        if self.role is Role.EMULATOR:
            return "emu"
        if self.role is Role.HOST:
            return "host"
        if self.role is Role.SPARE:
            return "idle"
        return ""

    @property
    def label(self) -> str:
        """ "4 · v0", "2 · emu", "0 · host"; a free CPU is just its number."""
        return f"{self.cpu} · {self.tag}" if self.tag else str(self.cpu)

    @property
    def owner(self) -> str | None:
        """One owner per thread: the host, a VM (by index), or None when free."""
        if self.role is Role.HOST:
            return "host"
        if self.vm is not None:
            return f"vm{self.vm}"
        return None


@dataclass(frozen=True)
class CoreCell:
    threads: tuple[Thread, ...]
    split: bool  # the hardware threads of this core have different owners

    @property
    def cpus(self) -> CpuSet:
        return CpuSet.from_iter(t.cpu for t in self.threads)


@dataclass(frozen=True)
class Nic:
    """A network PCI function (SR-IOV VFs are counted on their PF, not drawn apart)."""

    address: str
    interfaces: tuple[str, ...]
    numa_node: int | None
    vm: int | None  # passed through whole to this VM
    default_route: bool  # carries the host's default route
    management: bool  # the host reaches its management network (or this SSH session) through it
    cross_vms: tuple[int, ...]  # VMs on another NUMA node using it (whole or through a VF)
    vfs_now: int
    vfs_planned: int
    vfs_total: int
    vf_users: tuple[tuple[int, int], ...]  # (VM index, VFs of this PF it is given)

    @property
    def name(self) -> str:
        return ",".join(self.interfaces) or self.address

    @property
    def cross_numa(self) -> bool:
        return bool(self.cross_vms)


@dataclass(frozen=True)
class L3Cell:
    """One L3 cache domain of a node that has several: which of the node's cores share it."""

    id: int
    size_kib: int
    cores: tuple[int, ...]  # indexes into NodeCell.cores
    ways: tuple[tuple[int, int], ...] = ()  # (VM index, L3 ways it holds here)

    def label(self, pic: PictureMap) -> str:
        """ "L3 6 · 32MiB · ways A 4, B 2" """
        size = format_mib(self.size_kib // 1024) if self.size_kib % 1024 == 0 else f"{self.size_kib}KiB"
        held = ", ".join(f"{pic.vms[vm].letter} {n}" for vm, n in self.ways)
        return f"L3 {self.id} · {size}" + (f" · ways {held}" if held else "")


@dataclass(frozen=True)
class NodeCell:
    id: int
    memory_mib: int
    cores: tuple[CoreCell, ...]
    nics: tuple[Nic, ...]
    offline: CpuSet
    l3: tuple[L3Cell, ...] = ()  # empty unless the node holds two or more L3 domains


@dataclass(frozen=True)
class SocketCell:
    id: int
    nodes: tuple[NodeCell, ...]


@dataclass(frozen=True)
class PictureMap:
    hostname: str
    sockets: tuple[SocketCell, ...]
    memory_only_nodes: tuple[NodeCell, ...]  # NUMA nodes without CPUs
    unplaced_nics: tuple[Nic, ...]  # NICs whose NUMA node the host does not report
    vms: tuple[VmKey, ...]
    warnings: tuple[str, ...]

    @property
    def nodes(self) -> tuple[NodeCell, ...]:
        return tuple(node for s in self.sockets for node in s.nodes) + self.memory_only_nodes

    @property
    def nics(self) -> tuple[Nic, ...]:
        return tuple(nic for node in self.nodes for nic in node.nics) + self.unplaced_nics

    @property
    def threads(self) -> tuple[Thread, ...]:
        return tuple(t for node in self.nodes for core in node.cores for t in core.threads)

    def count(self, role: Role) -> int:
        return sum(1 for t in self.threads if t.role is role)


def vm_letter(index: int) -> str:
    """A, B, ..., Z, AA, AB, ... (spreadsheet columns)."""
    out = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        out = chr(ord("A") + rem) + out
    return out


def picture_map(topo: HostTopology, plan: Plan) -> PictureMap:
    vms = tuple(
        VmKey(
            i,
            vm.name,
            vm_letter(i),
            vm.numa_nodes,
            vm.vcpus,
            vm.emulator_policy,
            vm.emulator_cpus | vm.iothread_cpus,
            tuple(_device_label(d) for d in vm.devices),
            vm.l3_domains,
        )
        for i, vm in enumerate(plan.vms)
    )
    threads = {cpu: _thread(cpu, plan) for cpu in topo.online_cpus}
    cores_by_node: dict[int, list[CoreCell]] = {}
    package_of_node: dict[int, int] = {}
    for hw in topo.cores:
        cell_threads = tuple(threads[cpu] for cpu in hw.cpus)
        owners = {t.owner for t in cell_threads}
        cores_by_node.setdefault(hw.node, []).append(CoreCell(cell_threads, len(owners) > 1))
        package_of_node[hw.node] = min(package_of_node.get(hw.node, hw.package), hw.package)
    nics = _nics(topo, plan)
    node_ids = sorted({n.id for n in topo.numa_nodes} | set(cores_by_node))
    cells: dict[int, NodeCell] = {}
    for node_id in node_ids:
        numa = next((n for n in topo.numa_nodes if n.id == node_id), None)
        offline = CpuSet.from_iter(c.id for c in topo.cpus if not c.online and c.node == node_id)
        node_cores = tuple(cores_by_node.get(node_id, ()))
        cells[node_id] = NodeCell(
            node_id,
            numa.memory_mib if numa else 0,
            node_cores,
            tuple(n for n in nics if n.numa_node == node_id),
            offline,
            _l3_cells(topo, plan, node_cores),
        )
    sockets = tuple(
        SocketCell(pkg, tuple(cells[n] for n in node_ids if package_of_node.get(n) == pkg))
        for pkg in sorted(set(package_of_node.values()))
    )
    memory_only = tuple(cells[n] for n in node_ids if n not in package_of_node)
    placed = {n.id for n in cells.values()}
    unplaced = tuple(n for n in nics if n.numa_node is None or n.numa_node not in placed)
    warnings = list(plan.warnings)
    for node in cells.values():
        for core in node.cores:
            if core.split:
                warnings.append(_split_warning(core, vms))
    return PictureMap(topo.hostname, sockets, memory_only, unplaced, vms, tuple(dict.fromkeys(warnings)))


def _l3_cells(topo: HostTopology, plan: Plan, cores: Sequence[CoreCell]) -> tuple[L3Cell, ...]:
    """The node's cores grouped by L3 domain, in the order the host numbers them; () for one domain."""
    members: dict[int, list[int]] = {}
    for i, core in enumerate(cores):
        domain = topo.l3_of(core.cpus.min())
        if domain is None:
            return ()
        members.setdefault(domain.id, []).append(i)
    if len(members) < 2:
        return ()
    sizes = {d.id: d.size_kib for d in topo.l3_domains}
    ways = {
        cache_id: tuple(
            (i, w.ways)
            for i, vm in enumerate(plan.vms)
            for w in (vm.cache.ways if vm.cache else ())
            if w.cache_id == cache_id
        )
        for cache_id in members
    }
    return tuple(L3Cell(d, sizes[d], tuple(idx), ways[d]) for d, idx in members.items())


def shape_label(shape: str, pic: PictureMap) -> str:
    """A shape as the picture tags it: the letters of its VMs ("A/B"), else its own name (a --vm shape)."""
    letters = {vm.name: vm.letter for vm in pic.vms}
    names = shape.split(", ")
    return "/".join(letters[name] for name in names) if all(name in letters for name in names) else shape


def room_text(node: NodeRoom, pic: PictureMap) -> str:
    """What a node has left, as its panel says it: "room: 3 free cores, 20GiB · more fit here: A/B 1, C 2"."""
    memory = format_mib(node.memory_mib) if node.memory_mib > 0 else "0MiB"
    cores = f"{node.cores} free core{'' if node.cores == 1 else 's'}"
    fits = ", ".join(f"{shape_label(shape, pic)} {count}" for shape, count in node.fits)
    return f"room: {cores}, {memory}" + (f" · more fit here: {fits}" if fits else "")


def nic_notes(nic: Nic, pic: PictureMap) -> list[str]:
    """What a NIC tile says below its name: owner, SR-IOV VFs (now -> planned), cross-NUMA users."""
    if nic.vm is not None:
        notes = [f"→ {pic.vms[nic.vm].name} (passthrough)"]
    elif nic.default_route:
        notes = ["host · mgmt/default route"]
    else:
        notes = ["host · management" if nic.management else "host"]
    if nic.vfs_total:
        count = f"{nic.vfs_now}" if nic.vfs_planned == nic.vfs_now else f"{nic.vfs_now}→{nic.vfs_planned}"
        users = ", ".join(f"{pic.vms[vm].letter}×{n}" for vm, n in nic.vf_users)
        notes.append(f"SR-IOV VFs {count}/{nic.vfs_total}" + (f": {users}" if users else ""))
    if nic.cross_vms:
        where = ", ".join(
            f"{pic.vms[i].letter} on node {','.join(map(str, pic.vms[i].numa_nodes))}" for i in nic.cross_vms
        )
        notes.append(f"cross-NUMA: {where}")
    return notes


def _thread(cpu: int, plan: Plan) -> Thread:
    shared = tuple(i for i, vm in enumerate(plan.vms) if _emulator_floats_on(vm, cpu))
    for i, vm in enumerate(plan.vms):
        if cpu in vm.vcpu_pins:
            return Thread(cpu, Role.VCPU, i, vm.vcpu_pins.index(cpu))
    if cpu in plan.host.reserved_cpus:
        return Thread(cpu, Role.HOST, shared_emulators=shared)
    for i, vm in enumerate(plan.vms):
        if cpu in vm.emulator_cpus or cpu in vm.iothread_cpus:
            return Thread(cpu, Role.EMULATOR, i)
    for i, vm in enumerate(plan.vms):
        if cpu in vm.owned_cpus:
            return Thread(cpu, Role.SPARE, i)
    if cpu in plan.host.isolated_cpus:
        return Thread(cpu, Role.ISOLATED)
    return Thread(cpu, Role.FREE)


def _emulator_floats_on(vm: VmPlan, cpu: int) -> bool:
    return cpu in vm.emulator_cpus and cpu not in vm.owned_cpus


def _device_label(dev: DeviceAssignment) -> str:
    if dev.type == "vf":
        vlan = f" vlan {dev.vlan}" if dev.vlan is not None else ""
        return f"{dev.interface or dev.pf} VF{dev.vf_index if dev.vf_index is not None else '?'}{vlan}"
    return dev.interface or dev.known_address


def _ports_below(topo: HostTopology, top: Iterable[str | None]) -> set[str]:
    """Interfaces `top` and, through bonds and bridges, the ports enslaved below them."""
    names = {name for name in top if name}
    grew = True
    while grew:
        below = {i.name for i in topo.net_interfaces if i.master in names}
        grew = not below <= names
        names |= below
    return names


def _nics(topo: HostTopology, plan: Plan) -> tuple[Nic, ...]:
    whole = {d.address: i for i, vm in enumerate(plan.vms) for d in vm.devices if d.type != "vf"}
    vf_users: dict[str, dict[int, int]] = {}
    for i, vm in enumerate(plan.vms):
        for d in vm.devices:
            if d.type == "vf" and d.pf:
                users = vf_users.setdefault(d.pf, {})
                users[i] = users.get(i, 0) + 1
    planned = {pf.address: pf.numvfs for pf in plan.host.sriov}
    default_route = _ports_below(topo, [topo.default_route_interface])
    management = _ports_below(topo, topo.management_interfaces) | default_route
    out = []
    for dev in topo.pci_devices:
        if not dev.is_network or dev.physfn:
            continue
        owner = whole.get(dev.address)
        vf_counts = tuple(sorted(vf_users.get(dev.address, {}).items()))
        using = ([owner] if owner is not None else []) + [i for i, _ in vf_counts]
        cross = tuple(i for i in using if dev.numa_node is not None and dev.numa_node not in plan.vms[i].numa_nodes)
        names = set(dev.interfaces)
        out.append(
            Nic(
                address=dev.address,
                interfaces=dev.interfaces,
                numa_node=dev.numa_node,
                vm=owner,
                default_route=bool(default_route & names),
                management=bool(management & names),
                cross_vms=cross,
                vfs_now=dev.sriov_numvfs,
                vfs_planned=planned.get(dev.address, dev.sriov_numvfs),
                vfs_total=dev.sriov_totalvfs,
                vf_users=vf_counts,
            )
        )
    return tuple(out)


def _split_warning(core: CoreCell, vms: Sequence[VmKey]) -> str:
    names = []
    for t in core.threads:
        name = "the host" if t.role is Role.HOST else vms[t.vm].name if t.vm is not None else "nobody"
        names.append(f"{t.cpu} ({name})")
    return f"core ({core.cpus}) has split siblings: " + ", ".join(names)
