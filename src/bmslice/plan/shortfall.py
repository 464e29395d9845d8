"""Say precisely why no layout exists: which VM, which node, which resource, how short.

Called only after the exact search has found no assignment, so every message here is
the truth about the host, not about a heuristic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace

from bmslice.errors import PlanError
from bmslice.plan.capacity import Load, NodeFree, plural
from bmslice.plan.placement import Request, place

SPAN_HINT = "; numa_nodes: 2 (or more) lets a VM span NUMA nodes"


def _alone(req: Request, nodes: Mapping[int, NodeFree]) -> str | None:
    """Message when `req` does not fit any candidate node even on its own."""
    message = _alone_text(req, nodes)
    if message is None or req.group is not None:
        return message
    # Too big for any one node, but the host as a whole has room: say how to span nodes.
    total_cores = sum(n.cores for n in nodes.values())
    total_memory = sum(n.memory_mib for n in nodes.values())
    first = next(iter(nodes.values()), None)
    if first is not None and first.cores_needed(req.load) <= total_cores and req.load.memory_mib <= total_memory:
        return message + SPAN_HINT
    return message


def _nearest_first(req: Request) -> list[int]:
    """The VM's candidate nodes, fewest cross-NUMA NICs first, then by id: the order messages name
    them in (the search's own order also weighs the room each node would keep)."""
    return [node for _, node in sorted(zip(req.costs, req.candidates, strict=True))]


def _alone_text(req: Request, nodes: Mapping[int, NodeFree]) -> str | None:
    candidates = [nodes[n] for n in _nearest_first(req) if n in nodes]
    if any(node.fits(req.load) for node in candidates):
        return None
    name = req.label
    if not candidates:
        return f"{name} has no NUMA node with CPUs to go to"
    core_short = [n for n in candidates if not n.fits(Load(req.load.singles, req.load.pairs, 0))]
    if len(candidates) == 1:
        node = candidates[0]
        if node in core_short and req.load.memory_mib > node.memory_mib:
            return (
                f"{name} needs {node.need_text(req.load)} and {req.load.memory_mib} MiB on NUMA node {node.node}; "
                f"cores: {node.free_text()}; memory: only {node.memory_mib} MiB is free"
            )
        if node in core_short:
            return f"{name} needs {node.need_text(req.load)} on NUMA node {node.node}, {node.free_text()}"
        return f"{name} needs {req.load.memory_mib} MiB on NUMA node {node.node}, only {node.memory_mib} MiB are free"
    if len(core_short) == len(candidates):
        most = max(candidates, key=lambda n: (n.cores, -n.node))
        return (
            f"{name} needs {most.need_text(req.load)} on one NUMA node; "
            f"the most free on any node is {most.cores} (node {most.node})"
        )
    if not core_short:
        most_mem = max(candidates, key=lambda n: (n.memory_mib, -n.node))
        return (
            f"{name} needs {req.load.memory_mib} MiB on one NUMA node; the most free on any node is "
            f"{most_mem.memory_mib} MiB (node {most_mem.node})"
        )
    # Some nodes lack the cores, the others the memory: say which lacks what.
    short = "; ".join(
        f"node {n.node}: cores short, {n.free_text()}"
        if n in core_short
        else f"node {n.node}: memory short, only {n.memory_mib} MiB free"
        for n in candidates
    )
    return (
        f"{name} needs {candidates[0].need_text(req.load)} and {req.load.memory_mib} MiB on one NUMA node; "
        f"no node has both ({short})"
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
        names = ", ".join(r.label for r in group)
        if not node.fits(Load(total.singles, total.pairs, 0)):
            return f"VMs bound to NUMA node {node_id} ({names}) need {node.need_text(total)}, {node.free_text()}"
        return (
            f"VMs bound to NUMA node {node_id} ({names}) need {total.memory_mib} MiB, "
            f"only {node.memory_mib} MiB are free"
        )
    return None


def _fits_without(requests: Sequence[Request], free: Sequence[NodeFree], resource: str) -> bool | None:
    """Whether the VMs would fit if `resource` ("memory" or "cores") were unlimited; None: search gave up."""

    def relieved(load: Load) -> Load:
        return Load(load.singles, load.pairs, 0) if resource == "memory" else Load(0, 0, load.memory_mib)

    try:
        return place([replace(r, load=relieved(r.load)) for r in requests], free) is not None
    except PlanError:
        return None


def _short_resource(requests: Sequence[Request], free: Sequence[NodeFree], total: Load, per_node: str) -> str | None:
    """The one resource that keeps the VMs from fitting together when each fits alone."""
    with_cores_only = _fits_without(requests, free, "memory")
    with_memory_only = _fits_without(requests, free, "cores")
    if with_cores_only and with_memory_only is False:
        sizes = ", ".join(f"{r.label} {r.load.memory_mib}" for r in requests)
        return (
            f"the VMs' memory does not fit on the NUMA nodes, their cores would: they need {total.memory_mib} MiB "
            f"({sizes}), free per node: {per_node}{SPAN_HINT}"
        )
    if with_memory_only and with_cores_only is False:
        return f"the VMs' cores do not fit on the NUMA nodes, their memory would: free per node: {per_node}{SPAN_HINT}"
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
    need = sum(n.cores_needed(r.load) for r in requests for n in [nodes[_nearest_first(r)[0]]])
    have = sum(n.cores for n in free)
    per_node = ", ".join(f"node {n.node}: {n.cores} cores, {n.memory_mib} MiB" for n in free)
    if need > have:
        return f"the VMs need {plural(need, 'whole core')} in all, only {have} are free on the host ({per_node})"
    mem_have = sum(n.memory_mib for n in free)
    if total.memory_mib > mem_have:
        return f"the VMs need {total.memory_mib} MiB in all, only {mem_have} MiB are free on the host ({per_node})"
    short = _short_resource(requests, free, total, per_node)
    if short:
        return short
    return (
        f"no assignment of VMs to NUMA nodes fits them all: they need {plural(need, 'whole core')} and {total.memory_mib} MiB, "
        f"free per node: {per_node}{SPAN_HINT}"
    )
