"""H8: every host's share is planned by the host planner before the fleet accepts it.

`judge` plans each host's generated spec (`make_plan`, through fleet/check.py); `learn` turns
a refusal into a no-good the searches avoid from then on: the fewest VMs of the share the
planner still refuses (a deletion filter: drop each VM whose absence does not change the
verdict), and for one VM alone, every spot of it on that host the planner refuses, so one
round learns them all. `settle` records the nodes the planner gives a VM over several nodes
(a spec cannot name them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from bmslice.errors import PlanError
from bmslice.fleet.placement.problem import Host, Problem, Spot
from bmslice.fleet.placement.rules.host_planner import HostPlanner, NoGood
from bmslice.fleet.placement.rules.nics import every_option
from bmslice.fleet.placement.tally import Item, Tally
from bmslice.model.fleet import PlacedVm, Placement
from bmslice.model.plan import Plan
from bmslice.model.topology import HostTopology


def placed_vm(problem: Problem, name: str, spot: Spot) -> PlacedVm:
    req = problem.requests[name]
    spans = spot.nodes if len(spot.nodes) > 1 else ()
    return PlacedVm(name, req.cluster, req.role, req.index, spot.host, spot.nodes[0], spot.nics, numa_nodes=spans)


def plan_share(problem: Problem, host: Host, share: Mapping[str, Spot]) -> Plan | str:
    """The host planner's plan of these VMs on `host` (in spec order), or its refusal."""
    from bmslice.fleet.check import check_host  # fleet/check.py and render.py sit above placement
    from bmslice.fleet.render import host_spec_data

    order = problem.order
    vms = tuple(placed_vm(problem, name, share[name]) for name in sorted(share, key=order.__getitem__))
    data = host_spec_data(problem.fleet, Placement(vms), host.name)
    assert data is not None
    try:
        return check_host(host.name, data, host.topo, f"{host.name}/spec.yaml").plan
    except PlanError as exc:
        return str(exc)


@dataclass
class Verdict:
    plans: dict[str, Plan] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def on_host(layout: Mapping[str, Spot], host: str) -> dict[str, Spot]:
    return {name: spot for name, spot in layout.items() if spot.host == host}


def judge(problem: Problem, layout: Mapping[str, Spot], hosts: Iterable[str] | None = None) -> Verdict:
    by_host: dict[str, dict[str, Spot]] = {}
    for name, spot in layout.items():
        by_host.setdefault(spot.host, {})[name] = spot
    verdict = Verdict()
    for name in sorted(by_host if hosts is None else set(hosts) & set(by_host)):
        result = plan_share(problem, problem.host(name), by_host[name])
        if isinstance(result, str):
            verdict.refused[name] = result
        else:
            verdict.plans[name] = result
    return verdict


def learn(problem: Problem, layout: Mapping[str, Spot], host_name: str, reason: str, planner: HostPlanner) -> None:
    """No-goods for `host_name`'s refused share; PlanError when what the planner refuses is only
    VMs that stay where they are.

    VMs the planner refuses even alone there are learned spot by spot (every nodes and NICs
    of theirs it refuses); otherwise the fewest VMs of the share it still refuses together."""
    host = problem.host(host_name)
    share = on_host(layout, host_name)
    order = problem.order
    names = sorted(share, key=order.__getitem__)
    alone = [n for n in names if n in problem.class_of and isinstance(plan_share(problem, host, {n: share[n]}), str)]
    for name in alone:
        _learn_one(problem, host, name, _alike(problem, host), planner)
    if alone:
        return
    keep = names
    for name in list(keep):
        trial = [n for n in keep if n != name]
        if trial:
            verdict = plan_share(problem, host, {n: share[n] for n in trial})
            if isinstance(verdict, str):
                keep, reason = trial, verdict
    tally = Tally(problem)
    items: Counter[Item] = Counter(tally.item(name, share[name]) for name in keep)
    if all(key[0] == "fixed" for key, _, _ in items):
        raise PlanError(f"{reason} (kept VMs {', '.join(keep)}, which stay where they are)")
    fixed = any(key[0] == "fixed" for key, _, _ in items)
    hosts = frozenset({host_name}) if fixed else _alike(problem, host)
    planner.learn(NoGood(hosts, tuple(sorted(items.items(), key=repr)), _short(reason)))


def _learn_one(problem: Problem, host: Host, name: str, hosts: frozenset[str], planner: HostPlanner) -> None:
    """Every other spot of this VM alone on the host that the planner refuses too."""
    cls = problem.class_of[name]
    empty = Tally(problem)
    for nodes in cls.slots(host):
        if not empty.fits(host, nodes, cls.shares):
            continue
        choices = list(every_option(empty, host, cls.nic, nodes, cls.vlan)) if cls.nic is not None else [()]
        for nics in choices:
            spot = Spot(host.name, nodes, nics)
            verdict = plan_share(problem, host, {name: spot})
            if isinstance(verdict, str):
                item = (cls.key, nodes, spot.pfs)
                planner.learn(NoGood(hosts, ((item, 1),), _short(verdict)))


def _short(reason: str) -> str:
    return reason.split(": the host planner refuses the fleet's placement: ", 1)[-1]


def _alike(problem: Problem, host: Host) -> frozenset[str]:
    """Hosts the host planner cannot tell from `host`: the same topology, host section and NICs."""

    def planned_as(topo: HostTopology) -> HostTopology:
        return replace(topo, source="", hostname="")  # only in the planner's messages

    mine = planned_as(host.topo)
    return frozenset(
        h.name
        for h in problem.hosts
        if h.pfs == host.pfs and h.inv.host == host.inv.host and (h.topo is host.topo or planned_as(h.topo) == mine)
    )


def settle(
    problem: Problem, layout: dict[str, Spot], plans: Mapping[str, Plan], placed_now: set[str], notes: list[str]
) -> None:
    """Record, for the VMs over several nodes placed in this run, the nodes the host planner gives
    them on the spec of their host (the spec cannot name them)."""
    hosts = sorted({layout[n].host for n in placed_now if len(layout[n].nodes) > 1})
    for host_name in hosts:
        plan = plans[host_name]
        new = sorted(vm.name for vm in plan.vms if vm.name in placed_now)
        moved = [
            vm
            for vm in plan.vms
            if vm.name not in placed_now
            and vm.name in layout
            and len(layout[vm.name].nodes) > 1
            and vm.numa_nodes != layout[vm.name].nodes
        ]
        if moved:
            # A kept VM over several nodes that this fresh plan puts elsewhere: if it runs, the host
            # keeps it where it is, so the fresh plan says nothing sure about the new ones either.
            # They keep the nodes the fleet found room on around the kept VM's record.
            vm = moved[0]
            nodes = ",".join(map(str, layout[vm.name].nodes))
            notes.append(
                f"{host_name}: planned afresh, the host puts {vm.name} on NUMA nodes "
                f"{','.join(map(str, vm.numa_nodes))}, the placement keeps it on {nodes}; "
                f"{', '.join(new)} keep the nodes the fleet found room on, which the host planner may not "
                "choose: check with `bmslice plan` on the host"
            )
            continue
        for vm in plan.vms:
            if vm.name in placed_now and len(layout[vm.name].nodes) > 1:
                spot = layout[vm.name]
                layout[vm.name] = Spot(spot.host, vm.numa_nodes, spot.nics)
