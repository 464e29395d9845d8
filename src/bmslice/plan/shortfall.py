"""Say precisely why no layout exists: which VM, which node, which resource, how short.

Called only after the exact search has found no assignment, so every message here is
the truth about the host, not about a heuristic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from bmslice.plan.capacity import Load, NodeFree, plural
from bmslice.plan.placement import Request


def _alone(req: Request, nodes: Mapping[int, NodeFree]) -> str | None:
    """Message when `req` does not fit any candidate node even on its own."""
    candidates = [nodes[n] for n in req.candidates if n in nodes]
    if any(node.fits(req.load) for node in candidates):
        return None
    if not candidates:
        return f"{req.name} has no NUMA node with CPUs to go to"
    core_short = [n for n in candidates if not n.fits(Load(req.load.singles, req.load.pairs, 0))]
    if len(candidates) == 1:
        node = candidates[0]
        if node in core_short:
            return f"{req.name} needs {node.need_text(req.load)} on NUMA node {node.node}, {node.free_text()}"
        return (
            f"{req.name} needs {req.load.memory_mib} MiB on NUMA node {node.node}, only {node.memory_mib} MiB are free"
        )
    if len(core_short) == len(candidates):
        most = max(candidates, key=lambda n: (n.cores, -n.node))
        return (
            f"{req.name} needs {most.need_text(req.load)} on one NUMA node; "
            f"the most free on any node is {most.cores} (node {most.node})"
        )
    most_mem = max(candidates, key=lambda n: (n.memory_mib, -n.node))
    return (
        f"{req.name} needs {req.load.memory_mib} MiB on one NUMA node; the most free on any node is "
        f"{most_mem.memory_mib} MiB (node {most_mem.node})"
    )


def _bound_together(requests: Sequence[Request], nodes: Mapping[int, NodeFree]) -> str | None:
    """Message when the VMs bound to one node (numa_node, or strict NIC policy) overflow it."""
    groups: dict[int, list[Request]] = defaultdict(list)
    for req in requests:
        if len(req.candidates) == 1:
            groups[req.candidates[0]].append(req)
    for node_id, group in sorted(groups.items()):
        node = nodes.get(node_id)
        if node is None or len(group) < 2:
            continue
        total = Load()
        for req in group:
            total = total + req.load
        if node.fits(total):
            continue
        names = ", ".join(r.name for r in group)
        if not node.fits(Load(total.singles, total.pairs, 0)):
            return f"VMs bound to NUMA node {node_id} ({names}) need {node.need_text(total)}, {node.free_text()}"
        return (
            f"VMs bound to NUMA node {node_id} ({names}) need {total.memory_mib} MiB, "
            f"only {node.memory_mib} MiB are free"
        )
    return None


def explain(requests: Sequence[Request], free: Sequence[NodeFree]) -> str:
    free = sorted(free, key=lambda n: n.node)
    nodes = {n.node: n for n in free}
    for req in requests:
        alone = _alone(req, nodes)
        if alone:
            return alone
    together = _bound_together(requests, nodes)
    if together:
        return together
    total = Load()
    for req in requests:
        total = total + req.load
    need = sum(n.cores_needed(r.load) for r in requests for n in [nodes[r.candidates[0]]])
    have = sum(n.cores for n in free)
    per_node = ", ".join(f"node {n.node}: {n.cores} cores, {n.memory_mib} MiB" for n in free)
    if need > have:
        return f"the VMs need {plural(need, 'whole core')} in all, only {have} are free on the host ({per_node})"
    mem_have = sum(n.memory_mib for n in free)
    if total.memory_mib > mem_have:
        return f"the VMs need {total.memory_mib} MiB in all, only {mem_have} MiB are free on the host ({per_node})"
    return (
        f"no assignment of VMs to NUMA nodes fits them all: they need {plural(need, 'whole core')} and {total.memory_mib} MiB, "
        f"free per node: {per_node}; a VM cannot span nodes"
    )
