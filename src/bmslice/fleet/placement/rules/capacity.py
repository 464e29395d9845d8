"""H4, H5 capacity: whole cores and memory per NUMA node, as the host planner counts them.

A VM's share on a node takes `singles` (an odd vCPU, the dedicated emulator core: any core)
and `pairs` (two vCPUs: one two-thread core, or two one-thread cores) and memory
(`bmslice.plan.capacity`). A VM over k nodes (numa_nodes) takes k equal shares on k distinct
nodes of one host, the emulator core with the first. The model states the planner's split
exactly: on a node with only two-thread cores singles + pairs <= cores, with only one-thread
cores (no SMT) singles + 2 pairs <= cores, and on a node with both (siblings offline) with
how many singles and pairs go to one-thread cores as variables.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from bmslice.fleet.placement.problem import Host, Nodes, Problem, VmClass
from bmslice.fleet.placement.rules.base import Rule
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import NicAssignment
from bmslice.model.sizes import format_mib
from bmslice.plan.capacity import Load

if TYPE_CHECKING:
    from bmslice.fleet.placement.cpsat_model import FleetModel

CORES = "cores"
MEMORY = "memory"


class Capacity(Rule):
    name = CORES

    def check(self, problem: Problem, base: Tally) -> str | None:
        for cls in problem.classes:
            k = cls.size.numa_nodes
            hosts = problem.role_hosts[cls.role]
            if k < 2 or not hosts:
                continue
            most = max(hosts, key=lambda h: len(h.nodes))  # hosts are by name: the first of the most
            if k > len(most.nodes):
                return (
                    f"{cls.names[0]}: numa_nodes: {k} needs a {cls.role.value} host with {k} NUMA nodes with CPUs; "
                    f"the most any has is {len(most.nodes)} ({most.name})"
                )
        return None

    def slot_admits(self, base: Tally, cls: VmClass, host: Host, nodes: Nodes, relax: frozenset[str]) -> bool:
        for node_id, load in zip(nodes, cls.shares, strict=True):
            free = host.node(node_id).free
            total = base.load[(host.name, node_id)] + load
            if MEMORY not in relax and total.memory_mib > free.memory_mib:
                return False
            if CORES not in relax and not free.fits(Load(total.singles, total.pairs, 0)):
                return False
        return True

    def spot_ok(self, tally: Tally, cls: VmClass, host: Host, nodes: Nodes, nics: tuple[NicAssignment, ...]) -> bool:
        return tally.fits(host, nodes, cls.shares)

    def shortfall(self, tally: Tally, cls: VmClass, host: Host) -> str | None:
        shares = cls.shares
        if len(shares) > len(host.nodes):
            return f"{len(host.nodes)} NUMA node(s) with CPUs, needs {len(shares)}"
        if any(tally.fits(host, nodes, shares) for nodes in host.slots(len(shares))):
            return None
        if len(shares) == 1:
            cores = max(tally.cores_left(host, n.id) for n in host.nodes)
            memory = max(tally.memory_left(host, n.id) for n in host.nodes)
            return f"most free on one node: {cores} cores, {format_mib(memory) if memory > 0 else '0MiB'}"
        room = [n.id for n in host.nodes if tally.fits(host, (n.id,), (shares[-1],))]
        if len(room) < len(shares):
            return f"room for a share on node(s) {','.join(map(str, room)) or 'none'}, needs {len(shares)} nodes"
        # a node with room for the first share would have made a span with the others
        return (
            f"room for a share on nodes {','.join(map(str, room))}, but for the first, with the emulator core, on none"
        )

    def constrain(self, m: FleetModel) -> None:
        loads: defaultdict[tuple[str, int], list[tuple[Load, int]]] = defaultdict(list)
        for (k, host, nodes), var in m.place.items():
            for node, load in zip(nodes, m.problem.cls(k).shares, strict=True):
                loads[(host, node)].append((load, var))
        for (host_name, node_id), terms in sorted(loads.items()):
            free = m.problem.host(host_name).node(node_id).free
            fixed = m.base.load[(host_name, node_id)]
            variables = [var for _, var in terms]
            singles = m.weighted(variables, [load.singles for load, _ in terms])
            pairs = m.weighted(variables, [load.pairs for load, _ in terms])
            if not m.relaxed(MEMORY):
                memory = m.weighted(variables, [load.memory_mib for load, _ in terms])
                m.sat.at_most(memory, free.memory_mib - fixed.memory_mib)
            if m.relaxed(CORES):
                continue
            if free.ones == 0:
                m.sat.at_most(singles + pairs, free.twos - fixed.singles - fixed.pairs)
            elif free.twos == 0:
                m.sat.at_most(singles + [(v, 2 * c) for v, c in pairs], free.ones - fixed.singles - 2 * fixed.pairs)
            else:  # siblings offline: how many singles and pairs sit on one-thread cores is a choice
                if fixed.singles:  # the kept VMs' load, as a constant the split counts with the rest
                    singles.append((m.sat.var(fixed.singles, fixed.singles), 1))
                if fixed.pairs:
                    pairs.append((m.sat.var(fixed.pairs, fixed.pairs), 1))
                m.sat.fits(singles, pairs, [], free.twos, [], free.ones)
