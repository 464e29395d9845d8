"""The shape of an emulated server: sockets, cores, threads, NUMA nodes, memory and NICs.

A lab is a small twin of a real server that QEMU can emulate under TCG on a small
machine. `DESIGN_NOTE_TWIN` is the design note's server scaled down (2 sockets, 2 NUMA
nodes, SMT, one SR-IOV NIC per node, a management NIC, IOMMU on); `shape_like(topo)`
shapes a lab after a discovered host and says what it had to scale down.

>>> DESIGN_NOTE_TWIN.cpus, DESIGN_NOTE_TWIN.cpus_of_node(1)
(12, (6, 7, 8, 9, 10, 11))
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from bmslice.errors import LabError
from bmslice.model.topology import HostTopology

# What QEMU under TCG on a 2-CPU machine boots in well under a minute.
MAX_CPUS = 16
MAX_SOCKETS = 4
MAX_NODES = 4
MAX_THREADS = 2
MAX_NICS_PER_NODE = 2  # each an Intel 82576 (igb) with 7 VFs
MIN_NODE_MEMORY_MIB = 768
DEFAULT_NODE_MEMORY_MIB = 1536
MAX_TOTAL_MEMORY_MIB = 6144

LAB_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def check_lab_name(name: str) -> str:
    if not LAB_NAME_RE.fullmatch(name):
        raise LabError(
            f"lab name {name!r}: use 1-32 lowercase letters, digits and '-', starting with one of the first two"
        )
    return name


L3Level = Literal["die", "module"]


@dataclass(frozen=True)
class LabShape:
    """What the lab's QEMU emulates. CPUs are numbered as QEMU does: socket by socket, die by
    die, module by module, core by core, the threads of a core adjacent; each NUMA node
    holds an equal, contiguous share of them.

    Each L3 cache is shared by one die or by one module (`l3`; a module is QEMU's x86 name
    for a group of cores inside a die), as QEMU's `smp-cache` sets it: `dies_per_socket` 2 and
    `modules_per_die` 2 with `l3: module` give an EPYC-like socket of two nodes (dies) of two
    L3 caches (CCX/CCD) each. `cores_per_socket` counts every core of a socket.
    """

    sockets: int = 2
    cores_per_socket: int = 3
    threads_per_core: int = 2
    nodes: int = 2
    node_memory_mib: int = DEFAULT_NODE_MEMORY_MIB
    sriov_nics_per_node: tuple[int, ...] = (1, 1)
    management_nic: bool = True
    iommu: bool = True
    dies_per_socket: int = 1
    modules_per_die: int = 1
    l3: L3Level = "die"

    def __post_init__(self) -> None:
        counts = (self.sockets, self.cores_per_socket, self.threads_per_core, self.nodes)
        if min(*counts, self.dies_per_socket, self.modules_per_die) < 1:
            raise LabError("a lab needs at least one socket, die, module, core, thread and NUMA node")
        if self.sockets % self.nodes and self.nodes % self.sockets:
            raise LabError(f"{self.nodes} NUMA nodes over {self.sockets} sockets: one must divide the other")
        if self.nodes > self.sockets and self.cores_per_socket % (self.nodes // self.sockets):
            raise LabError(f"{self.cores_per_socket} cores per socket do not split over {self.nodes} nodes")
        groups = self.dies_per_socket * self.modules_per_die
        if self.cores_per_socket % groups:
            raise LabError(
                f"{self.cores_per_socket} cores per socket do not split over {self.dies_per_socket} die(s) of "
                f"{self.modules_per_die} module(s)"
            )
        if (self.cpus // self.nodes) % self.cpus_per_l3:
            raise LabError(
                f"an L3 cache of {self.cpus_per_l3} CPUs would span two NUMA nodes of {self.cpus // self.nodes} CPUs"
            )
        if len(self.sriov_nics_per_node) != self.nodes:
            raise LabError(f"sriov_nics_per_node names {len(self.sriov_nics_per_node)} nodes, the lab has {self.nodes}")

    @property
    def cpus(self) -> int:
        return self.sockets * self.cores_per_socket * self.threads_per_core

    @property
    def memory_mib(self) -> int:
        return self.nodes * self.node_memory_mib

    @property
    def cores_per_module(self) -> int:
        return self.cores_per_socket // (self.dies_per_socket * self.modules_per_die)

    @property
    def l3_caches(self) -> int:
        per_socket = self.dies_per_socket * (self.modules_per_die if self.l3 == "module" else 1)
        return self.sockets * per_socket

    @property
    def cpus_per_l3(self) -> int:
        return self.cpus // self.l3_caches

    @property
    def l3_per_node(self) -> int:
        return max(1, self.l3_caches // self.nodes)

    @property
    def default_topology(self) -> bool:
        """One die and one module per socket: QEMU's plain -smp, its L3 per socket."""
        return self.dies_per_socket == 1 and self.modules_per_die == 1 and self.l3 == "die"

    def cpus_of_node(self, node: int) -> tuple[int, ...]:
        per_node = self.cpus // self.nodes
        return tuple(range(node * per_node, (node + 1) * per_node))

    def l3_cpus(self) -> tuple[tuple[int, ...], ...]:
        """The CPUs of each L3 cache, in CPU order."""
        size = self.cpus_per_l3
        return tuple(tuple(range(first, first + size)) for first in range(0, self.cpus, size))

    def describe(self) -> str:
        nics = sum(self.sriov_nics_per_node)
        layers = ""
        if self.dies_per_socket > 1:
            layers += f" x {self.dies_per_socket} die(s)"
        if self.modules_per_die > 1:
            layers += f" x {self.modules_per_die} module(s)"
        cores = self.cores_per_socket if not layers else self.cores_per_module
        l3 = f", {self.l3_per_node} L3 caches per node" if self.l3_per_node > 1 else ""
        return (
            f"{self.sockets} socket(s){layers} x {cores} core(s) x {self.threads_per_core} thread(s) = "
            f"{self.cpus} CPUs, {self.nodes} NUMA node(s) of {self.node_memory_mib} MiB{l3}, "
            f"{nics} SR-IOV NIC(s) (igb, 7 VFs each){', a management NIC' if self.management_nic else ''}, "
            f"IOMMU {'on' if self.iommu else 'off'}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "sockets": self.sockets,
            "cores_per_socket": self.cores_per_socket,
            "threads_per_core": self.threads_per_core,
            "nodes": self.nodes,
            "node_memory_mib": self.node_memory_mib,
            "sriov_nics_per_node": list(self.sriov_nics_per_node),
            "management_nic": self.management_nic,
            "iommu": self.iommu,
            "dies_per_socket": self.dies_per_socket,
            "modules_per_die": self.modules_per_die,
            "l3": self.l3,
        }


DESIGN_NOTE_TWIN = LabShape()


@dataclass(frozen=True)
class ShapedLab:
    shape: LabShape
    scaled_down: tuple[str, ...] = field(default=())


def _host_counts(topo: HostTopology) -> tuple[int, int, int, int]:
    sockets = max(1, len(topo.packages))
    threads = max((core.threads for core in topo.cores), default=1)
    per_socket = Counter(core.package for core in topo.cores)
    cores = max(per_socket.values(), default=1)
    return sockets, cores, threads, max(1, len(topo.numa_nodes))


def _l3_per_node(topo: HostTopology) -> int:
    """L3 caches per NUMA node when every node with CPUs holds the same number, each inside it; else 1."""
    if any(domain.node is None for domain in topo.l3_domains):
        return 1  # an L3 over several nodes (sub-NUMA clustering): the lab keeps one per node
    per_node = Counter(domain.node for domain in topo.l3_domains)
    counts = {per_node.get(node.id, 0) for node in topo.numa_nodes if node.cpus}
    return counts.pop() if len(counts) == 1 and min(counts | {1}) >= 1 else 1


def _sriov_nics_per_node(topo: HostTopology, nodes: int) -> tuple[list[int], list[str]]:
    """SR-IOV PFs per host node, as the lab's node count sees them (unknown locality: node 0)."""
    counts = [0] * nodes
    notes: list[str] = []
    node_ids = sorted(n.id for n in topo.numa_nodes) or [0]
    for dev in topo.pci_devices:
        if not dev.is_network or dev.physfn is not None or not dev.sriov_totalvfs:
            continue
        index = node_ids.index(dev.numa_node) if dev.numa_node in node_ids else 0
        counts[index * nodes // len(node_ids)] += 1  # host nodes folded evenly onto the lab's
    for node, count in enumerate(counts):
        if count > MAX_NICS_PER_NODE:
            notes.append(f"node {node}: {count} SR-IOV NICs -> {MAX_NICS_PER_NODE}")
            counts[node] = MAX_NICS_PER_NODE
    return counts, notes


def _fit_nodes(sockets: int, nodes: int, notes: list[str]) -> int:
    """NUMA nodes the lab can have over `sockets`: one must divide the other, MAX_NODES at most."""
    if nodes % sockets and sockets % nodes:
        notes.append(f"NUMA nodes {nodes} -> {sockets} (one per socket: {nodes} do not divide over {sockets} sockets)")
        nodes = sockets
    if nodes > MAX_NODES:
        shrunk = max(1, MAX_NODES // sockets) * sockets if nodes > sockets else MAX_NODES
        notes.append(f"NUMA nodes {nodes} -> {shrunk} ({MAX_NODES} at most)")
        nodes = shrunk
    return nodes


def shape_like(topo: HostTopology, node_memory_mib: int = DEFAULT_NODE_MEMORY_MIB) -> ShapedLab:
    """A lab shaped after `topo`, within what QEMU and a small machine allow; says what shrank.

    Sockets, threads per core, NUMA nodes (MAX_NODES at most), L3 caches per node and SR-IOV
    NICs per node are kept where the limits allow; cores shrink first (down to one per L3
    cache), memory is the lab's own (a real server's would not fit), every NIC is emulated as
    an Intel 82576 (igb, 7 VFs). A socket of several nodes becomes a socket of as many dies;
    several L3 caches per node become as many modules per die, each with its own L3.
    """
    sockets, cores, threads, nodes = _host_counts(topo)
    l3_per_node = _l3_per_node(topo)
    notes: list[str] = []
    if threads > MAX_THREADS:
        notes.append(f"threads per core {threads} -> {MAX_THREADS}")
        threads = MAX_THREADS
    if sockets > MAX_SOCKETS:
        notes.append(f"sockets {sockets} -> {MAX_SOCKETS}")
        if nodes >= sockets and nodes % sockets == 0:  # keep the nodes per socket
            shrunk = nodes // sockets * MAX_SOCKETS
            notes.append(f"NUMA nodes {nodes} -> {shrunk} (with the sockets)")
            nodes = shrunk
        sockets = MAX_SOCKETS
    nodes = _fit_nodes(sockets, nodes, notes)
    dies = max(1, nodes // sockets)
    modules = l3_per_node if l3_per_node > 1 and nodes >= sockets else 1
    groups = dies * modules
    per_group = max(1, cores // groups)
    want = per_group
    while per_group > 1 and sockets * groups * per_group * threads > MAX_CPUS:
        per_group -= 1
    if sockets * groups * per_group * threads > MAX_CPUS:
        raise LabError(
            f"a lab of {sockets} sockets x {nodes} nodes x {modules} L3 caches per node x {threads} threads "
            f"exceeds {MAX_CPUS} CPUs even with one core per L3 cache"
        )
    if per_group != want or groups * per_group != cores:
        unit = "L3 cache" if modules > 1 else "node"
        per = f"{per_group} per {unit}; " if groups > 1 else ""
        notes.append(f"cores per socket {cores} -> {groups * per_group} ({per}{MAX_CPUS} CPUs at most under TCG)")
    memory = max(MIN_NODE_MEMORY_MIB, min(node_memory_mib, MAX_TOTAL_MEMORY_MIB // nodes))
    if memory != node_memory_mib:
        notes.append(f"memory per node {node_memory_mib} MiB -> {memory} MiB")
    host_memory = sorted({n.memory_mib for n in topo.numa_nodes})
    if host_memory and host_memory[-1] > memory:
        notes.append(f"memory per node {host_memory[-1]} MiB on the host -> {memory} MiB in the lab")
    nics, nic_notes = _sriov_nics_per_node(topo, nodes)
    notes += nic_notes
    shape = LabShape(
        sockets,
        groups * per_group,
        threads,
        nodes,
        memory,
        tuple(nics),
        True,
        True,
        dies_per_socket=dies,
        modules_per_die=modules,
        l3="module" if modules > 1 else "die",
    )
    return ShapedLab(shape, tuple(notes))
