"""H3 control planes apart: a cluster's control-plane VMs on distinct hosts, and on distinct
racks when the control hosts span as many racks as the cluster has control-plane VMs; unless
the cluster says `spread: {control_planes: any}`.

Without it, one server going down could take a cluster's quorum with it; the rule refuses
rather than stack control planes silently."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from bmslice.fleet.placement.problem import Host, Problem, VmClass
from bmslice.fleet.placement.rules.base import Rule
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import ControlPlanes, Role

if TYPE_CHECKING:
    from bmslice.fleet.placement.cpsat_model import FleetModel

RACKS = "control planes on distinct racks"
OPT_OUT = "or say spread: {control_planes: any}"


def apart(problem: Problem, cluster: str) -> bool:
    return problem.cluster(cluster).spread.control_planes is ControlPlanes.APART


def racks_apart(problem: Problem, cluster: str) -> bool:
    """Distinct racks too: the control hosts span at least as many racks as the cluster has
    control-plane VMs."""
    wanted = len(problem.cluster(cluster).control_plane)
    return apart(problem, cluster) and len(problem.racks[Role.CONTROL]) >= wanted


class ControlApart(Rule):
    name = "control planes apart"

    def check(self, problem: Problem, base: Tally) -> str | None:
        for cluster in problem.fleet.clusters:
            wanted = len(cluster.control_plane)
            if wanted < 2 or not apart(problem, cluster.name):
                continue
            hosts = problem.control_hosts
            if wanted > hosts:
                return (
                    f"control planes apart: {cluster.name} has {wanted} control-plane VMs, the inventory has {hosts} "
                    f"control host(s); add control hosts {OPT_OUT}"
                )
            stacked = _stacked(problem, base, cluster.name)
            if stacked:
                return f"control planes apart: {stacked}; let one move with --allow-move, {OPT_OUT}"
        return None

    def host_ok(self, tally: Tally, cls: VmClass, host: Host) -> bool:
        if cls.role is not Role.CONTROL or not apart(tally.problem, cls.cluster):
            return True
        if tally.per_host[(host.name, cls.cluster, Role.CONTROL)]:
            return False
        return not (racks_apart(tally.problem, cls.cluster) and tally.per_rack[(cls.cluster, Role.CONTROL, host.rack)])

    def shortfall(self, tally: Tally, cls: VmClass, host: Host) -> str | None:
        if self.host_ok(tally, cls, host):
            return None
        if tally.per_host[(host.name, cls.cluster, Role.CONTROL)]:
            return f"runs a {cls.cluster} control plane already (control planes apart)"
        return f"rack {host.rack} holds a {cls.cluster} control plane already (control planes on distinct racks)"

    def constrain(self, m: FleetModel) -> None:
        per_host: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
        per_rack: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
        for (k, host, _nodes), var in m.place.items():
            cls = m.problem.cls(k)
            if cls.role is Role.CONTROL and apart(m.problem, cls.cluster):
                per_host[(cls.cluster, host)].append(var)
                if racks_apart(m.problem, cls.cluster):
                    per_rack[(cls.cluster, m.problem.host(host).rack)].append(var)
        if not m.relaxed(self.name):
            for (cluster, host), variables in per_host.items():
                m.sat.at_most(m.total(variables), 1 - m.base.per_host[(host, cluster, Role.CONTROL)])
        if not m.relaxed(RACKS):
            for (cluster, rack), variables in per_rack.items():
                m.sat.at_most(m.total(variables), 1 - m.base.per_rack[(cluster, Role.CONTROL, rack)])


def _stacked(problem: Problem, base: Tally, cluster: str) -> str | None:
    """Kept control planes of `cluster` that already share a host (or a rack, when racks apply)."""
    where: defaultdict[str, list[str]] = defaultdict(list)
    racks: defaultdict[str, list[str]] = defaultdict(list)
    for name, spot in sorted(base.spots.items()):
        req = problem.requests[name]
        if req.cluster == cluster and req.role is Role.CONTROL:
            where[spot.host].append(name)
            racks[problem.host(spot.host).rack].append(name)
    for host, names in sorted(where.items()):
        if len(names) > 1:
            return f"{' and '.join(names)} of the kept placement are both on {host}"
    if racks_apart(problem, cluster):
        for rack, names in sorted(racks.items()):
            if len(names) > 1:
                return f"{' and '.join(names)} of the kept placement are both in rack {rack} ({RACKS})"
    return None
