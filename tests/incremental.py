"""VMs placed one after another with the running ones kept: bmslice, and a model of Nova's pack policy.

Shared by tests/test_plan_incremental.py (a handful of cases) and bench/incremental_bench.py
(hundreds); the modelling is explained there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.input_file import validated
from bmslice.model.plan import VmPlan
from bmslice.model.spec import HostSpec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.capacity import Load, NodeFree, vm_load
from bmslice.plan.host import reserved_cores
from bmslice.plan.planner import make_plan
from topologies import nic, synthetic

HOST = {"reserved_cores_per_node": 1}


@dataclass(frozen=True)
class Case:
    label: str
    topo: HostTopology
    vms: tuple[dict[str, Any], ...]


def _shape(rng: random.Random) -> tuple[int, int, int]:
    """(sockets, nodes per socket, cores per node) for 1-8 nodes."""
    nodes = rng.choice([1, 2, 2, 3, 4, 4, 6, 8])
    per_socket = 2 if nodes % 2 == 0 and rng.random() < 0.4 else 1
    return nodes // per_socket, per_socket, rng.randint(4, 16)


def generate(seed: int) -> Case:
    rng = random.Random(seed)
    sockets, per_socket, cores_per_node = _shape(rng)
    nodes = sockets * per_socket
    threads = rng.choice([1, 2, 2])
    cores = cores_per_node * per_socket
    offline: list[int] = []
    if threads == 2 and rng.random() < 0.3:  # a few siblings offline: one-thread cores among two-thread ones
        total = sockets * cores
        offline = rng.sample(range(total + 1, 2 * total), k=rng.randint(1, min(4, total - 1)))
    memory = rng.choice([16, 32, 32, 64]) * 1024
    nic_nodes = [rng.randrange(nodes) for _ in range(rng.randint(0, min(4, nodes + 1)))]
    nics = [nic(f"0000:{0x10 + i:02x}:00.0", f"ens{i}", node, 100 + i) for i, node in enumerate(nic_nodes)]
    topo = synthetic(
        sockets=sockets,
        cores=cores,
        threads=threads,
        nodes_per_socket=per_socket,
        memory_mib_per_node=memory,
        offline=offline,
        nics=nics,
    )
    capacity = sum(c.threads for c in topo.cores) - nodes * threads
    free_nics = [f"ens{i}" for i in range(len(nics))]
    rng.shuffle(free_nics)
    vms: list[dict[str, Any]] = []
    asked = 0
    while asked < 1.3 * capacity:
        vcpus = rng.choice([1, 2, 2, 3, 4, 4, 6, 8, 8, 12, 16])
        vm: dict[str, Any] = {
            "name": f"vm{len(vms):02d}",
            "vcpus": vcpus,
            "memory": f"{rng.choice([2, 4, 4, 8, 16])}GiB",
            "emulator": "dedicated" if rng.random() < 0.3 else "host",
        }
        if free_nics and rng.random() < 0.3:
            vm["nics"] = [{"passthrough": free_nics.pop()}]
        vms.append(vm)
        asked += vcpus + (threads if vm["emulator"] == "dedicated" else 0)
    smt = "SMT" if threads == 2 else "no SMT"
    label = f"{nodes}n x {cores_per_node}c {smt}{', offline' if offline else ''}, {memory // 1024}G, {len(nics)} NIC"
    return Case(label, topo, tuple(vms))


# --- bmslice, VM after VM -------------------------------------------------------------------------------


def bmslice_run(case: Case) -> list[str]:
    """The VMs bmslice placed, in arrival order."""
    placed: list[dict[str, Any]] = []
    running: tuple[VmPlan, ...] = ()
    for vm in case.vms:
        spec = spec_from_data({"host": HOST, "vms": [*placed, vm]}, "bench")
        try:
            plan = make_plan(case.topo, spec, "bench", keep=running)
        except PlanError:
            continue
        placed.append(vm)
        running = plan.vms
    return [vm["name"] for vm in placed]


# --- the Nova pack model --------------------------------------------------------------------------------


@dataclass
class Cell:
    free: NodeFree
    used: Load = field(default_factory=Load)
    nics: set[str] = field(default_factory=set)  # free PCI devices (NICs not passed through yet)

    def fits(self, load: Load) -> bool:
        return self.free.fits(self.used + load)

    def free_threads(self) -> int:
        split = self.free.split(self.used)
        assert split is not None
        ones_to_singles, twos_to_singles = split
        twos = self.free.twos - twos_to_singles
        ones = self.free.ones - ones_to_singles
        pairs_on_twos = min(self.used.pairs, twos)
        ones -= 2 * (self.used.pairs - pairs_on_twos)
        return 2 * (twos - pairs_on_twos) + ones

    def free_memory(self) -> int:
        return self.free.memory_mib - self.used.memory_mib


def nova_cells(case: Case) -> list[Cell]:
    host = validated(HOST, HostSpec, "host")
    kept = CpuSet.union(core.cpus for core in reserved_cores(case.topo, host))
    cells = []
    for node in case.topo.numa_nodes:
        cores = [c for c in case.topo.cores if c.node == node.id and c.cpus.isdisjoint(kept)]
        twos, ones = sum(c.threads == 2 for c in cores), sum(c.threads == 1 for c in cores)
        nics = {d.interfaces[0] for d in case.topo.pci_devices if d.numa_node == node.id}
        memory = node.memory_mib - host.reserved_memory_per_node  # what the host keeps, as bmslice counts it
        cells.append(Cell(NodeFree(node.id, twos, ones, memory, case.topo.smt), nics=nics))
    return cells


def nova_order(cells: list[Cell], wanted: str | None) -> list[Cell]:
    """The cells in the order Nova pack tries them for an instance (wanted: its PCI device)."""

    def pci(cell: Cell) -> int:
        return -int(wanted in cell.nics) if wanted is not None else len(cell.nics)

    return sorted(cells, key=lambda c: (pci(c), c.free_threads(), c.free_memory(), c.free.node))


def nova_run(case: Case) -> list[str]:
    cells = nova_cells(case)
    placed = []
    for vm in case.vms:
        memory = int(vm["memory"].removesuffix("GiB")) * 1024
        load = vm_load(vm["vcpus"], vm["emulator"] == "dedicated", memory)
        wanted = vm["nics"][0]["passthrough"] if "nics" in vm else None
        for cell in nova_order(cells, wanted):
            if cell.fits(load):
                cell.used = cell.used + load
                if wanted is not None:
                    for other in cells:
                        other.nics.discard(wanted)
                placed.append(vm["name"])
                break
    return placed
