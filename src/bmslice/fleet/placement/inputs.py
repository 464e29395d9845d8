"""From a fleet, its hosts' topologies and a kept placement to the problem to solve.

A VM of the kept placement that is still in the fleet stays on its host, nodes and NICs
(`fixed`); a kept VM that no longer fits there is refused, never moved, unless moving is
allowed: then every kept VM is a class of its own, and staying where it is is what the
objective prefers most.
"""

from __future__ import annotations

from collections.abc import Mapping

from bmslice.errors import PlanError
from bmslice.fleet.placement.problem import (
    Host,
    Problem,
    Spot,
    VmClass,
    nic_assignment,
    read_hosts,
    shares,
    vm_classes,
)
from bmslice.fleet.placement.rules.nics import pick
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import Fleet, NicAssignment, NicKind, PlacedVm, Placement, VmRequest
from bmslice.model.sizes import format_mib
from bmslice.model.topology import HostTopology

HINT = "remove it from the placement file to let bmslice place it afresh (the VM is then rebuilt)"
MOVE_HINT = "or let it move with --allow-move"


def build_problem(
    fleet: Fleet,
    topologies: Mapping[str, HostTopology],
    existing: Placement | None,
    allow_move: bool,
    hosts: tuple[Host, ...] | None = None,
) -> Problem:
    """Raises PlanError when a kept VM cannot stay where it is (without `allow_move`)."""
    requests = {req.name: req for req in fleet.vm_requests()}
    hosts = hosts if hosts is not None else read_hosts(fleet, topologies)
    problem = Problem(fleet, hosts, (), {}, requests)
    notes: list[str] = []
    kept: list[PlacedVm] = []
    for old in sorted(existing.vms if existing is not None else (), key=lambda vm: vm.name):
        if old.name in requests:
            kept.append(old)
        else:
            notes.append(
                f"{old.name} on {old.host} is no longer in the fleet: it is left out of the host's spec and "
                "keeps running until destroyed"
            )
    new = [req for req in requests.values() if req.name not in {vm.name for vm in kept}]
    if not allow_move:
        fixed = _fixed(problem, kept)
        classes = vm_classes(fleet, new)
        return Problem(fleet, hosts, tuple(classes), fixed, requests, tuple(notes))
    movable: list[VmClass] = []
    for old in kept:
        req = requests[old.name]
        spot = _stay(problem, req, old)
        cluster = fleet.cluster(req.cluster)
        movable.append(
            VmClass(
                len(movable),
                req.cluster,
                req.role,
                req.size,
                (req.name,),
                cluster.vlan,
                cluster.spread.max_per_host,
                kept=spot if isinstance(spot, Spot) else None,
                moving=True,
            )
        )
    classes = movable + vm_classes(fleet, new, first_index=len(movable))
    return Problem(fleet, hosts, tuple(classes), {}, requests, tuple(notes))


def _where(old: PlacedVm) -> str:
    several = f"s {old.nodes_text}" if old.numa_nodes else f" {old.numa_node}"
    return f"{old.name} is placed on {old.host} NUMA node{several}"


def _stay(problem: Problem, req: VmRequest, old: PlacedVm) -> Spot | str:
    """Where a kept VM is, its NICs checked against the host as it is now; else why it cannot stay."""
    where = _where(old)
    try:
        host = problem.host(old.host)
    except KeyError:
        return f"{where}, which is no longer in the inventory"
    if host.role is not req.role:
        return f"{where}, but {old.host} is now a {host.role.value} host"
    if len(shares(req.size)) != len(old.nodes):
        return f"{where}, but its size now asks for numa_nodes: {len(shares(req.size))}"
    known = {node.id for node in host.nodes}
    if any(node not in known for node in old.nodes):
        return f"{where}, which has no such node with CPUs"
    vlan = problem.cluster(req.cluster).vlan
    nics = _same_nics(host, req, old, vlan)
    return Spot(host.name, old.nodes, nics if nics is not None else ())


def _same_nics(host: Host, req: VmRequest, old: PlacedVm, vlan: int) -> tuple[NicAssignment, ...] | None:
    """The kept VM's NICs when its request still asks for them and the host still offers them;
    None when it asks for others (they are picked again on the same host and nodes)."""
    want = req.size.nic
    if want is None:
        return ()
    pfs = {pf.address: pf for pf in host.pfs}
    same = (
        all(n.kind is want.kind and n.address in pfs and pfs[n.address].matches(want.pf) for n in old.nics)
        and sum(n.count for n in old.nics) == want.count
        and (want.kind is NicKind.PASSTHROUGH or len(old.nics) == 1)
    )
    if not same:
        return None
    return tuple(nic_assignment(pfs[n.address], n.kind, vlan, n.count) for n in old.nics)


def _fixed(problem: Problem, kept: list[PlacedVm]) -> dict[str, Spot]:
    """Every kept VM where it is, in name order, each checked against the ones before it."""
    tally = Tally(problem)
    fixed: dict[str, Spot] = {}
    for old in kept:
        req = problem.requests[old.name]
        spot = _stay(problem, req, old)
        if isinstance(spot, str):
            raise PlanError(f"{spot}; {HINT}")
        host = problem.host(spot.host)
        for node_id, load in zip(spot.nodes, shares(req.size), strict=True):
            free = host.node(node_id).free
            if not free.fits(tally.load[(host.name, node_id)] + load):
                share = f" (its share on node {node_id})" if old.numa_nodes else ""
                left = tally.memory_left(host, node_id)
                raise PlanError(
                    f"{_where(old)} and no longer fits there: it needs {free.cores_needed(load)} whole cores and "
                    f"{format_mib(load.memory_mib)}{share}, the node has {tally.cores_left(host, node_id)} cores and "
                    f"{format_mib(left) if left > 0 else '0MiB'} left; {HINT}"
                )
        vlan = problem.cluster(req.cluster).vlan
        nics = _kept_nics(tally, host, req, old, vlan)
        if nics is None:
            raise PlanError(
                f"{_where(old)} and its NICs ({nic_phrase(req, vlan).strip()}) are no longer free there; {HINT}"
            )
        spot = Spot(spot.host, spot.nodes, nics)
        tally.add(old.name, spot)
        fixed[old.name] = spot
    return fixed


def _kept_nics(tally: Tally, host: Host, req: VmRequest, old: PlacedVm, vlan: int) -> tuple[NicAssignment, ...] | None:
    want = req.size.nic
    if want is None:
        return ()
    same = _same_nics(host, req, old, vlan)
    if same is not None:
        free = all(
            tally.whole_free(host, n.address)
            if n.kind is NicKind.PASSTHROUGH
            else tally.vfs_left(host, n.address) >= n.count
            for n in same
        )
        if free:
            return same
    # The NIC request changed (kind, count or PF): pick again on the same host and nodes.
    return pick(tally, host, want, old.nodes, vlan)


def nic_phrase(req: VmRequest, vlan: int) -> str:
    nic = req.size.nic
    if nic is None:
        return ""
    of = "" if nic.pf == "any" else f" of {nic.pf}"
    if nic.kind is NicKind.SRIOV:
        what = "a free VF" if nic.count == 1 else f"{nic.count} free VFs"
        return f" and {what}{of} on VLAN {vlan}"
    what = "a free NIC" if nic.count == 1 else f"{nic.count} free NICs"
    return f" and {what}{'' if nic.pf == 'any' else f' ({nic.pf})'} to pass through for VLAN {vlan}"
