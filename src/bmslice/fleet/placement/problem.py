"""The placement problem as values (pure): what each host offers, the VMs to place in classes
of interchangeable ones, and where each VM goes (a `Spot`).

A host offers, per NUMA node with CPUs, its free whole cores (two-thread and one-thread, as
`bmslice.plan.capacity` counts them) and memory after what the host keeps, and the PFs a
tenant may get (`Pf`): cabled, not the management NIC, not a bond or bridge member, and only
what the host planner would hand out (`_pf`). VMs of one cluster and role with one size are
one class: the solver counts how many of a class go where instead of naming each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from itertools import combinations

import msgspec

from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.fleet import (
    ANY,
    Cluster,
    Fleet,
    InventoryHost,
    NicAssignment,
    NicKind,
    NicRequest,
    Role,
    VmRequest,
    VmSize,
)
from bmslice.model.spec import EmulatorPolicy, NicNumaPolicy
from bmslice.model.topology import Core, HostTopology, PciDevice
from bmslice.plan.capacity import Load, NodeFree, vm_load
from bmslice.plan.devices import PARKED_DRIVERS
from bmslice.plan.host import reserved_cores

Nodes = tuple[int, ...]  # a VM's host nodes in share order: the first holds the emulator core


@dataclass(frozen=True)
class Pf:
    """A PF a tenant may get on one host."""

    address: str
    name: str  # its interface name (its PCI address when it has none)
    interfaces: tuple[str, ...]
    numa_node: int | None
    vf_cap: int  # VFs bmslice may hand out on it (the host's pool, less VFs in use by others)
    # why it may not be passed through whole ("" when it may): VFs enabled, or a device the
    # host drives in its IOMMU group
    blocked: str = ""
    # Eligible PFs in its IOMMU group that the host still drives: the host planner passes it
    # through only with all of them, to the same VM.
    mates: tuple[str, ...] = ()

    def matches(self, ref: str) -> bool:
        return ref in (ANY, self.address) or ref in self.interfaces

    @property
    def passable(self) -> bool:
        return not self.blocked


@dataclass(frozen=True)
class Node:
    id: int
    free: NodeFree  # whole cores and memory before any VM of the fleet
    cores: tuple[Core, ...]


@dataclass(frozen=True)
class Host:
    inv: InventoryHost
    topo: HostTopology
    nodes: tuple[Node, ...]  # nodes with CPUs, by id
    pfs: tuple[Pf, ...]  # by name
    excluded: Mapping[str, str]  # NIC name or address -> why a tenant may not have it

    @property
    def name(self) -> str:
        return self.inv.name

    @property
    def role(self) -> Role:
        return self.inv.role

    @property
    def rack(self) -> str:
        return self.inv.rack

    @property
    def local_nics_only(self) -> bool:
        """nic_numa_policy: require: the host planner refuses a NIC on none of the VM's nodes."""
        return self.inv.host.nic_numa_policy is NicNumaPolicy.REQUIRE

    def node(self, node_id: int) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def pf(self, address: str) -> Pf:
        for pf in self.pfs:
            if pf.address == address:
                return pf
        raise KeyError(address)

    def slots(self, k: int) -> tuple[Nodes, ...]:
        """Every way to give a VM over `k` nodes a distinct node per share, the first share's
        node first, the others ascending: (0,), (1,) for k = 1; (0, 1), (1, 0) for k = 2."""
        return _slots(tuple(n.id for n in self.nodes), k)

    def cores_for(self, load: Load) -> int:
        """Whole cores `load` takes on this server: a vCPU pair is one core with SMT, two without."""
        return load.singles + (load.pairs if self.topo.smt else 2 * load.pairs)


@dataclass(frozen=True)
class VmClass:
    """VMs placed as one: the same cluster, role and size (and, for a VM of a kept placement that
    may move, that one VM alone)."""

    index: int
    cluster: str
    role: Role
    size: VmSize
    names: tuple[str, ...]  # in fleet order
    vlan: int
    max_per_host: int
    # A VM of the kept placement that may move (--allow-move): `moving`; `kept`: where it is,
    # None when it cannot stay (its host is gone, its size asks for other nodes...)
    kept: Spot | None = None
    moving: bool = False

    @property
    def nic(self) -> NicRequest | None:
        return self.size.nic

    @property
    def key(self) -> tuple[object, ...]:
        """What the class is, the same in any part of the problem solved on its own (its index is not)."""
        return ("vm", self.names[0]) if self.moving else ("class", self.cluster, self.role, self.size)

    @property
    def count(self) -> int:
        return len(self.names)

    @cached_property
    def shares(self) -> tuple[Load, ...]:
        return shares(self.size)

    def slots(self, host: Host) -> tuple[Nodes, ...]:
        """`host.slots` for this class. A kept VM's own nodes, in their order, stand for the slot
        that loads its nodes alike: staying means the same order (guest cell i on host node i),
        and the host planner may have given the shares after the first in any order."""
        slots = host.slots(self.size.numa_nodes)
        kept = self.kept
        if kept is None or kept.host != host.name or kept.nodes in slots:
            return slots
        first, rest = kept.nodes[0], sorted(kept.nodes[1:])
        return tuple(kept.nodes if (s[0], sorted(s[1:])) == (first, rest) else s for s in slots)

    @property
    def entries(self) -> int:
        """NIC entries of one VM: one per passed-through PF, one for the PF of its VFs."""
        nic = self.size.nic
        if nic is None:
            return 0
        return nic.count if nic.kind is NicKind.PASSTHROUGH else 1

    @property
    def label(self) -> str:
        return names_text(self.names)


@dataclass(frozen=True)
class Spot:
    """Where one VM runs: host, nodes (share order) and NICs."""

    host: str
    nodes: Nodes
    nics: tuple[NicAssignment, ...] = ()

    @property
    def pfs(self) -> tuple[str, ...]:
        return tuple(n.address for n in self.nics)


@dataclass(frozen=True)
class Problem:
    """Everything a placement is decided on.

    `fixed`: VMs of the kept placement that stay where they are (all of them, without
    --allow-move); `classes`: the VMs to place, a kept VM that may move as a class of its own.
    """

    fleet: Fleet
    hosts: tuple[Host, ...]  # by name
    classes: tuple[VmClass, ...]
    fixed: Mapping[str, Spot]
    requests: Mapping[str, VmRequest]
    notes: tuple[str, ...] = ()
    # a fixed VM that is one of a class held in place for a part solved alone: its class's key
    fixed_keys: Mapping[str, tuple[object, ...]] = field(default_factory=dict)

    def host(self, name: str) -> Host:
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, Host]:
        return {h.name: h for h in self.hosts}

    @cached_property
    def role_hosts(self) -> dict[Role, tuple[Host, ...]]:
        return {role: tuple(h for h in self.hosts if h.role is role) for role in Role}

    @cached_property
    def racks(self) -> dict[Role, tuple[str, ...]]:
        """The racks holding hosts of each role in the inventory (all of it, also for a part of
        the problem solved on its own), by name."""
        return {role: tuple(sorted({h.rack for h in self.fleet.inventory if h.role is role})) for role in Role}

    @cached_property
    def control_hosts(self) -> int:
        """Control hosts in the inventory (all of it)."""
        return sum(1 for h in self.fleet.inventory if h.role is Role.CONTROL)

    def size(self, name: str) -> VmSize:
        return self.requests[name].size

    def cluster(self, name: str) -> Cluster:
        return self._clusters[name]

    @cached_property
    def _clusters(self) -> dict[str, Cluster]:
        return {c.name: c for c in self.fleet.clusters}

    @cached_property
    def order(self) -> dict[str, int]:
        """Each VM's place in fleet order: the order of a host's spec, which the planner allocates in."""
        return {name: i for i, name in enumerate(self.requests)}

    @cached_property
    def racks_of(self) -> dict[Role, tuple[tuple[str, tuple[Host, ...]], ...]]:
        """Per role, its racks by name, each with its hosts by name."""
        out = {}
        for role, hosts in self.role_hosts.items():
            racks: dict[str, list[Host]] = {}
            for host in hosts:
                racks.setdefault(host.rack, []).append(host)
            out[role] = tuple((rack, tuple(racks[rack])) for rack in sorted(racks))
        return out

    def cls(self, index: int) -> VmClass:
        return self._by_index[index]

    @cached_property
    def _by_index(self) -> dict[int, VmClass]:
        return {cls.index: cls for cls in self.classes}

    @cached_property
    def class_by_key(self) -> dict[tuple[object, ...], VmClass]:
        return {cls.key: cls for cls in self.classes}

    @cached_property
    def class_of(self) -> dict[str, VmClass]:
        return {name: cls for cls in self.classes for name in cls.names}

    def with_classes(self, classes: tuple[VmClass, ...]) -> Problem:
        """The same hosts and fixed VMs with other VMs to place (a refusal's smaller sets)."""
        return Problem(self.fleet, self.hosts, classes, self.fixed, self.requests, self.notes, self.fixed_keys)


def shares(size: VmSize) -> tuple[Load, ...]:
    """The load on each node a VM uses: one for a VM on one node; for a VM over k nodes k equal
    shares, the first with the emulator core (as the host planner splits it)."""
    k = size.numa_nodes
    dedicated = size.emulator is EmulatorPolicy.DEDICATED
    return tuple(vm_load(size.vcpus // k, dedicated and part == 0, size.memory // k) for part in range(k))


def names_text(names: tuple[str, ...] | list[str]) -> str:
    """'red-worker-1', 'red-worker-1, red-worker-2', 'red-worker-1 .. red-worker-5 (5 VMs)'."""
    if len(names) <= 2:
        return ", ".join(names)
    return f"{names[0]} .. {names[-1]} ({len(names)} VMs)"


def spec_order(fleet: Fleet) -> dict[str, int]:
    """The order VMs are listed in a host's spec (fleet order): the planner allocates cores in it."""
    return {req.name: i for i, req in enumerate(fleet.vm_requests())}


# --- hosts ------------------------------------------------------------------------------------


@cache
def _slots(ids: tuple[int, ...], k: int) -> tuple[Nodes, ...]:
    return tuple((first, *rest) for first in ids for rest in combinations([i for i in ids if i != first], k - 1))


def read_host(inv: InventoryHost, topo: HostTopology) -> Host:
    try:
        kept = reserved_cores(topo, inv.host)
    except PlanError as exc:
        raise PlanError(f"{inv.name}: {exc}") from None
    kept_cpus = CpuSet.union(core.cpus for core in kept)
    nodes = []
    for node in sorted(topo.numa_nodes, key=lambda n: n.id):
        if not node.cpus:
            continue
        cores = tuple(c for c in topo.cores if c.node == node.id and c.cpus.isdisjoint(kept_cpus))
        memory = node.memory_mib - inv.host.reserved_memory_per_node
        twos = sum(c.threads == 2 for c in cores)
        nodes.append(Node(node.id, NodeFree(node.id, twos, len(cores) - twos, memory, topo.smt), cores))
    pfs, excluded = _eligible_pfs(inv, topo)
    return Host(inv, topo, tuple(nodes), pfs, excluded)


def _eligible_pfs(inv: InventoryHost, topo: HostTopology) -> tuple[tuple[Pf, ...], dict[str, str]]:
    """NICs a tenant may get and, for the others, why not."""
    candidates: list[PciDevice] = []
    excluded: dict[str, str] = {}
    for dev in topo.pci_devices:
        if not dev.is_network or dev.physfn is not None:
            continue
        name = dev.interfaces[0] if dev.interfaces else dev.address
        reason = _exclusion(inv, topo, dev)
        if reason:
            for key in (dev.address, *dev.interfaces):
                excluded[key] = f"{name} {reason}"
            continue
        candidates.append(dev)
    eligible = {dev.address for dev in candidates}
    pfs = [_pf(inv, topo, dev, eligible) for dev in candidates]
    return tuple(sorted(pfs, key=lambda pf: pf.name)), excluded


def _exclusion(inv: InventoryHost, topo: HostTopology, dev: PciDevice) -> str | None:
    for name in dev.interfaces:
        if name == topo.default_route_interface:
            return "carries the host's default route"
        if name in topo.management_interfaces:
            return "carries the host's management address"
        iface = topo.interface(name)
        if iface is not None and iface.master is not None:
            return f"is a member of {iface.master}"
    if inv.nics and not any(name in inv.nics for name in dev.interfaces):
        return "is not cabled to a switch port in the inventory"
    return None


def _pf(inv: InventoryHost, topo: HostTopology, dev: PciDevice, eligible: set[str]) -> Pf:
    """What the host planner would let bmslice do with `dev` (plan/devices.py, plan/sriov.py).

    Whole: refused with VFs enabled, or when its IOMMU group holds a device the host drives
    that no tenant can get with it. VFs: the pool `host.sriov_vfs` sets (else sriov_totalvfs),
    less the VFs guests outside the plan hold; with such VFs the PF's VF count cannot change,
    so only those it has now are there to take.
    """
    name = dev.interfaces[0] if dev.interfaces else dev.address
    mates: list[str] = []
    blocked = f"has {dev.sriov_numvfs} VFs enabled" if dev.sriov_numvfs > 0 else ""
    if dev.iommu_group is not None:
        for member in topo.iommu_group_members(dev.iommu_group):
            if member.address == dev.address or member.is_bridge or member.driver in PARKED_DRIVERS:
                continue
            if member.address in eligible:
                mates.append(member.address)
            elif not blocked:
                label = ",".join(member.interfaces) or member.address
                blocked = f"shares IOMMU group {dev.iommu_group} with {label} (driver {member.driver})"
    pool = _pool(inv, dev)
    in_use = {i for i, address in enumerate(dev.virtfns) if (vf := topo.pci(address)) and vf.driver == "vfio-pci"}
    limit = pool
    if in_use and dev.sriov_numvfs > 0:
        limit = min(pool, dev.sriov_numvfs)
        if _explicit_pool(inv, dev) > dev.sriov_numvfs:
            limit = 0  # the host planner refuses to grow a PF whose VFs are in use
    vf_cap = sum(1 for i in range(limit) if i not in in_use)
    return Pf(dev.address, name, dev.interfaces, dev.numa_node, vf_cap, blocked, tuple(sorted(mates)))


def _explicit_pool(inv: InventoryHost, dev: PciDevice) -> int:
    for ref, count in inv.host.sriov_vfs.items():
        if ref == dev.address or ref in dev.interfaces:
            return count
    return 0


def _pool(inv: InventoryHost, dev: PciDevice) -> int:
    return _explicit_pool(inv, dev) or dev.sriov_totalvfs


def read_hosts(fleet: Fleet, topologies: Mapping[str, HostTopology]) -> tuple[Host, ...]:
    """Every inventory host, by name. Servers of one shape share what they offer (read once)."""
    seen: dict[tuple[int, bytes, tuple[str, ...]], Host] = {}
    hosts = []
    for inv in sorted(fleet.inventory, key=lambda h: h.name):
        topo = topologies.get(inv.name)
        if topo is None:
            raise PlanError(f"{inv.name}: no topology was read for this host")
        key = (id(topo), msgspec.json.encode(inv.host), tuple(sorted(inv.nics)))
        same = seen.get(key)
        if same is None:
            host = seen[key] = read_host(inv, topo)
        else:
            host = Host(inv, topo, same.nodes, same.pfs, same.excluded)
        hosts.append(host)
    return tuple(hosts)


# --- the VMs ----------------------------------------------------------------------------------


def vm_classes(fleet: Fleet, requests: list[VmRequest], first_index: int = 0) -> list[VmClass]:
    """`requests` in classes: one per cluster, role and size, in fleet order."""
    groups: dict[tuple[str, Role, VmSize], list[str]] = {}
    for req in requests:
        groups.setdefault((req.cluster, req.role, req.size), []).append(req.name)
    out: list[VmClass] = []
    for (cluster_name, role, size), names in groups.items():
        cluster = fleet.cluster(cluster_name)
        out.append(
            VmClass(
                first_index + len(out),
                cluster_name,
                role,
                size,
                tuple(names),
                cluster.vlan,
                cluster.spread.max_per_host,
            )
        )
    return out


def nic_assignment(pf: Pf, kind: NicKind, vlan: int, count: int = 1) -> NicAssignment:
    return NicAssignment(kind, pf.name, pf.address, pf.numa_node, vlan, count)
