"""The decided layout as the fleet's `Placement`: each VM's host, nodes and NICs, the cores per
node it uses and its guest topology, as the host planner allocates them (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from bmslice.fleet.placement.judge import placed_vm
from bmslice.fleet.placement.problem import Problem, Spot
from bmslice.model.fleet import NodeUsage, Objective, PlacedVm, Placement
from bmslice.model.spec import EmulatorPolicy
from bmslice.plan.allocate import Allocation, NodeRequest, allocate_node
from bmslice.plan.planner import part_name


def to_placement(
    problem: Problem,
    layout: Mapping[str, Spot],
    notes: Sequence[str],
    objective: Objective,
    proven: bool,
    moved: tuple[str, ...],
    planned: tuple[tuple[str, tuple[str, ...]], ...] = (),
) -> Placement:
    order = problem.order
    vms: list[PlacedVm] = []
    usage: list[NodeUsage] = []
    by_host: dict[str, list[PlacedVm]] = {}
    for name, spot in layout.items():
        by_host.setdefault(spot.host, []).append(placed_vm(problem, name, spot))
    for host in problem.hosts:
        on_host = sorted(by_host.get(host.name, []), key=lambda v: order[v.name])
        # each VM's allocation per share, as the planner allocates: per node, in spec order
        allocs: dict[str, dict[int, Allocation]] = {vm.name: {} for vm in on_host}
        for node in host.nodes:
            here = [(vm, vm.nodes.index(node.id)) for vm in on_host if node.id in vm.nodes]
            requests = [
                NodeRequest(
                    part_name(vm.name, part) if vm.numa_nodes else vm.name,
                    problem.size(vm.name).vcpus // len(vm.nodes),
                    problem.size(vm.name).emulator is EmulatorPolicy.DEDICATED and part == 0,
                )
                for vm, part in here
            ]
            allocation = allocate_node(node.cores, requests) if requests else {}
            for (vm, part), request in zip(here, requests, strict=True):
                allocs[vm.name][part] = allocation[request.name]
            used = sum(len(allocation[r.name].cores) for r in requests)
            memory = sum(problem.size(vm.name).memory // len(vm.nodes) for vm, _part in here)
            usage.append(NodeUsage(host.name, node.id, node.free.cores, used, node.free.memory_mib, memory))
        for vm in on_host:
            share = problem.size(vm.name).vcpus // len(vm.nodes)
            parts = [allocs[vm.name][part] for part in range(len(vm.nodes))]
            # the planner's rule for the guest topology (threads=2 only on real sibling pairs)
            pairs = all(a.sibling_pairs for a in parts) and share % 2 == 0 and host.topo.smt
            cores = tuple(tuple(v + i * share for v in core) for i, a in enumerate(parts) for core in _guest_cores(a))
            vms.append(replace(vm, guest_threads=2 if pairs else 1, guest_cores=cores))
    vms.sort(key=lambda v: (v.host, order[v.name]))
    return Placement(tuple(vms), tuple(usage), tuple(notes), proven, moved, objective, planned)


def _guest_cores(alloc: Allocation) -> tuple[tuple[int, ...], ...]:
    """Guest vCPUs grouped by the host core under them, in vCPU order: ((0, 1), (2,))."""
    groups: dict[int, list[int]] = {}
    for vcpu, cpu in enumerate(alloc.vcpu_pins):
        core = next(i for i, cpus in enumerate(alloc.vcpu_cores) if cpu in cpus)
        groups.setdefault(core, []).append(vcpu)
    return tuple(tuple(vcpus) for vcpus in groups.values())
