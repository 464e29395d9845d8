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

from pydantic import ConfigDict

from bmslice.errors import LabError
from bmslice.model.topology import HostTopology

# What QEMU under TCG on a 2-CPU machine boots in well under a minute.
MAX_CPUS = 16
MAX_SOCKETS = 4
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


@dataclass(frozen=True)
class LabShape:
    """What the lab's QEMU emulates. CPUs are numbered socket by socket, core by core,
    the threads of a core adjacent (QEMU's order); socket s sits on node s * nodes // sockets."""

    __pydantic_config__ = ConfigDict(strict=True, extra="forbid")  # as read back from a lab's state file

    sockets: int = 2
    cores_per_socket: int = 3
    threads_per_core: int = 2
    nodes: int = 2
    node_memory_mib: int = DEFAULT_NODE_MEMORY_MIB
    sriov_nics_per_node: tuple[int, ...] = (1, 1)
    management_nic: bool = True
    iommu: bool = True

    def __post_init__(self) -> None:
        if min(self.sockets, self.cores_per_socket, self.threads_per_core, self.nodes) < 1:
            raise LabError("a lab needs at least one socket, core, thread and NUMA node")
        if self.sockets % self.nodes and self.nodes % self.sockets:
            raise LabError(f"{self.nodes} NUMA nodes over {self.sockets} sockets: one must divide the other")
        if self.nodes > self.sockets and self.cores_per_socket % (self.nodes // self.sockets):
            raise LabError(f"{self.cores_per_socket} cores per socket do not split over {self.nodes} nodes")
        if len(self.sriov_nics_per_node) != self.nodes:
            raise LabError(f"sriov_nics_per_node names {len(self.sriov_nics_per_node)} nodes, the lab has {self.nodes}")

    @property
    def cpus(self) -> int:
        return self.sockets * self.cores_per_socket * self.threads_per_core

    @property
    def memory_mib(self) -> int:
        return self.nodes * self.node_memory_mib

    def cpus_of_node(self, node: int) -> tuple[int, ...]:
        per_node = self.cpus // self.nodes
        return tuple(range(node * per_node, (node + 1) * per_node))

    def describe(self) -> str:
        nics = sum(self.sriov_nics_per_node)
        return (
            f"{self.sockets} socket(s) x {self.cores_per_socket} core(s) x {self.threads_per_core} thread(s) = "
            f"{self.cpus} CPUs, {self.nodes} NUMA node(s) of {self.node_memory_mib} MiB, "
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


def _sriov_nics_per_node(topo: HostTopology, nodes: int) -> tuple[list[int], list[str]]:
    """SR-IOV PFs per host node, as the lab's node count sees them (unknown locality: node 0)."""
    counts = [0] * nodes
    notes: list[str] = []
    node_ids = sorted(n.id for n in topo.numa_nodes) or [0]
    for dev in topo.pci_devices:
        if not dev.is_network or dev.physfn is not None or not dev.sriov_totalvfs:
            continue
        index = node_ids.index(dev.numa_node) if dev.numa_node in node_ids else 0
        counts[min(index, nodes - 1)] += 1
    for node, count in enumerate(counts):
        if count > MAX_NICS_PER_NODE:
            notes.append(f"node {node}: {count} SR-IOV NICs -> {MAX_NICS_PER_NODE}")
            counts[node] = MAX_NICS_PER_NODE
    return counts, notes


def shape_like(topo: HostTopology, node_memory_mib: int = DEFAULT_NODE_MEMORY_MIB) -> ShapedLab:
    """A lab shaped after `topo`, within what QEMU and a small machine allow; says what shrank.

    Sockets, threads per core, NUMA nodes and SR-IOV NICs per node are kept where the
    limits allow; cores per socket shrink first, memory is the lab's own (a real
    server's would not fit), every NIC is emulated as an Intel 82576 (igb, 7 VFs).
    """
    sockets, cores, threads, nodes = _host_counts(topo)
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
    if nodes % sockets and sockets % nodes:
        notes.append(f"NUMA nodes {nodes} -> {sockets} (one per socket: {nodes} do not divide over {sockets} sockets)")
        nodes = sockets
    nodes_per_socket = max(1, nodes // sockets)
    want = cores
    while cores > nodes_per_socket and sockets * cores * threads > MAX_CPUS:
        cores -= nodes_per_socket
    if sockets * cores * threads > MAX_CPUS:
        raise LabError(
            f"a lab of {sockets} sockets x {nodes} nodes x {threads} threads exceeds {MAX_CPUS} CPUs even with "
            "one core per node"
        )
    cores -= cores % nodes_per_socket
    if cores != want:
        notes.append(f"cores per socket {want} -> {cores} ({MAX_CPUS} CPUs at most under TCG)")
    memory = max(MIN_NODE_MEMORY_MIB, min(node_memory_mib, MAX_TOTAL_MEMORY_MIB // nodes))
    if memory != node_memory_mib:
        notes.append(f"memory per node {node_memory_mib} MiB -> {memory} MiB")
    host_memory = sorted({n.memory_mib for n in topo.numa_nodes})
    if host_memory and host_memory[-1] > memory:
        notes.append(f"memory per node {host_memory[-1]} MiB on the host -> {memory} MiB in the lab")
    nics, nic_notes = _sriov_nics_per_node(topo, nodes)
    notes += nic_notes
    shape = LabShape(sockets, cores, threads, nodes, memory, tuple(nics), True, True)
    return ShapedLab(shape, tuple(notes))
