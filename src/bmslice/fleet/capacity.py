"""Fleet capacity: how many more workers of each cluster the fleet takes, and where; and each host's room.

Per cluster the fleet's own placement decides, through its public entry point
`bmslice.fleet.placement.place`: the answer is the largest n for which `place` with the
placement kept (`existing`) accepts the fleet with n more workers of the cluster, and one more
is refused in `place`'s own words. So every rule of the fleet holds (roles, max_per_host, racks,
NICs cabled in the inventory, the host planner as judge), whatever way `place` finds a placement.

Per host the host planner decides (`plan/room.py`): how many workers of each cluster's size the
host takes beside the VMs placed on it, with the NICs its inventory entry cables, within the
cluster's `max_per_host`; control hosts take no worker. The hosts' counts added up bound the
fleet's, where the search for it starts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from msgspec import structs

from bmslice.errors import PlanError
from bmslice.fleet.placement import place
from bmslice.fleet.render import host_spec_data
from bmslice.model.fleet import ANY, Cluster, Fleet, InventoryHost, NicKind, Placement, Role
from bmslice.model.spec import NicSpec, Spec, SriovSpec, VmSpec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from bmslice.plan.room import NodeRoom, Shape, Template, free_room, largest


@dataclass(frozen=True)
class ClusterRoom:
    cluster: str
    more: int  # more workers of the cluster that `place` accepts
    hosts: tuple[tuple[str, int], ...]  # where `place` puts those `more`: (host, new workers there)
    refusal: str  # `place`'s refusal of one more


@dataclass(frozen=True)
class HostRoom:
    host: str
    role: Role
    rack: str
    fits: tuple[tuple[str, int], ...]  # (cluster, more workers this host alone takes)
    nodes: tuple[NodeRoom, ...]  # free whole cores and memory per NUMA node after what is placed here


@dataclass(frozen=True)
class FleetRoom:
    placement: Placement  # what is kept: the existing placement, or a fresh one
    clusters: tuple[ClusterRoom, ...]
    hosts: tuple[HostRoom, ...]


def with_more_workers(fleet: Fleet, cluster: str, more: int) -> Fleet:
    """The fleet with `more` workers of `cluster` added (named after the ones it has)."""
    clusters = tuple(
        structs.replace(c, workers=structs.replace(c.workers, count=c.workers.count + more)) if c.name == cluster else c
        for c in fleet.clusters
    )
    return structs.replace(fleet, clusters=clusters)


def worker_template(cluster: Cluster) -> Template:
    """One worker of the cluster as a VM the host planner can count copies of."""
    size = cluster.workers
    nics: list[NicSpec] = []
    any_pt: set[int] = set()
    any_vf: set[int] = set()
    if size.nic is not None and size.nic.kind is NicKind.PASSTHROUGH:
        for _ in range(size.nic.count):
            if size.nic.pf == ANY:
                any_pt.add(len(nics))
            nics.append(NicSpec(passthrough="any" if size.nic.pf == ANY else size.nic.pf))
    elif size.nic is not None:
        if size.nic.pf == ANY:
            any_vf.add(len(nics))
        nics.append(NicSpec(sriov=SriovSpec(pf=("any" if size.nic.pf == ANY else size.nic.pf,), count=size.nic.count)))
    vm = VmSpec(
        name=f"{cluster.name}-worker",
        vcpus=size.vcpus,
        memory=size.memory,
        numa_nodes=size.numa_nodes,
        emulator=size.emulator,
        iothreads=size.iothreads,
        hugepages=size.hugepages,
        realtime=size.realtime,
        nics=tuple(nics),
    )
    return Template(vm, frozenset(any_pt), frozenset(any_vf))


def _host_spec(fleet: Fleet, placement: Placement, inv: InventoryHost) -> Spec:
    data = host_spec_data(fleet, placement, inv.name)
    if data is None:  # nothing placed here: the host's section alone (a spec of no VM is only this question's)
        return Spec(host=inv.host, vms=())
    return spec_from_data(data, f"{inv.name}/spec.yaml")


def _host_room(fleet: Fleet, placement: Placement, inv: InventoryHost, topo: HostTopology) -> HostRoom:
    spec = _host_spec(fleet, placement, inv)
    origin = f"{inv.name}/spec.yaml"
    base = make_plan(topo, spec, origin)
    workers = [c for c in fleet.clusters if inv.role is Role.WORKER]
    shapes = [Shape(c.name, (worker_template(c),)) for c in workers]
    cabled = frozenset(inv.nics) if inv.nics else None
    room = free_room(topo, spec, base, shapes, origin, cabled=cabled)
    placed = Counter(vm.cluster for vm in placement.on_host(inv.name) if vm.role is Role.WORKER)
    fits = []
    for cluster, shape in zip(workers, room.shapes, strict=True):
        left = max(cluster.spread.max_per_host - placed[cluster.name], 0)
        fits.append((cluster.name, min(shape.more, left)))
    return HostRoom(inv.name, inv.role, inv.rack, tuple(fits), room.nodes)


def _cluster_room(
    fleet: Fleet, topologies: Mapping[str, HostTopology], base: Placement, cluster: Cluster, bound: int
) -> ClusterRoom:
    def attempt(more: int) -> Placement | str:
        try:
            return place(with_more_workers(fleet, cluster.name, more), topologies, base)
        except (PlanError, ValueError) as exc:
            return str(exc)

    more, placed, refusal = largest(attempt, base, bound)
    before = {vm.name for vm in base.vms}
    where = Counter(vm.host for vm in placed.vms if vm.name not in before and vm.cluster == cluster.name)
    return ClusterRoom(cluster.name, more, tuple(sorted(where.items())), refusal)


def fleet_room(fleet: Fleet, topologies: Mapping[str, HostTopology], existing: Placement | None = None) -> FleetRoom:
    """Each cluster's and each host's room, with `existing` (else a fresh placement) kept."""
    base = place(fleet, topologies, existing)
    hosts = tuple(
        _host_room(fleet, base, inv, topologies[inv.name]) for inv in sorted(fleet.inventory, key=lambda h: h.name)
    )
    clusters = tuple(
        _cluster_room(fleet, topologies, base, cluster, sum(dict(h.fits).get(cluster.name, 0) for h in hosts))
        for cluster in fleet.clusters
    )
    return FleetRoom(base, clusters, hosts)
