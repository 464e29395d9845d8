"""The first pass: one VM at a time, control planes first, then the biggest, each to the rack
with the fewest of its cluster and role, there to the spot with the fewest cross-NUMA NICs,
then in rack, host and node order. Fast and usually right; when it finds no spot for a VM,
or its layout does not meet the lower bounds, the CP-SAT model decides (decide.py)."""

from __future__ import annotations

from bmslice.fleet.placement.problem import Host, Problem, Spot, VmClass
from bmslice.fleet.placement.rules import Rules
from bmslice.fleet.placement.rules.locality import cross
from bmslice.fleet.placement.rules.nics import options
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import Role


def order(problem: Problem) -> list[tuple[VmClass, str]]:
    def key(item: tuple[VmClass, str, int]) -> tuple[int, int, int, int]:
        cls, _name, position = item
        cores = sum(2 * s.pairs + s.singles for s in cls.shares)
        memory = sum(s.memory_mib for s in cls.shares)
        return (cls.role is not Role.CONTROL, -cores, -memory, position)

    position = {req: i for i, req in enumerate(problem.requests)}
    items = [(cls, name, position[name]) for cls in problem.classes for name in cls.names]
    return [(cls, name) for cls, name, _ in sorted(items, key=key)]


def best_spot(tally: Tally, rules: Rules, cls: VmClass, hosts: list[Host]) -> Spot | None:
    """The spot a VM of `cls` gets on the first of `hosts` (one rack tier) with the least cross-NUMA cost."""
    host_rules = [rules.roles, rules.max_per_host, rules.control_apart]
    best: tuple[int, Spot] | None = None
    for host in hosts:
        if not all(rule.host_ok(tally, cls, host) for rule in host_rules):
            continue
        for nodes in host.slots(cls.size.numa_nodes):
            if not rules.capacity.spot_ok(tally, cls, host, nodes, ()):
                continue
            choices = options(tally, host, cls.nic, nodes, cls.vlan) if cls.nic is not None else iter([()])
            for nics in choices:
                if not rules.host_planner.spot_ok(tally, cls, host, nodes, nics):
                    continue
                cost = cross(nodes, nics)
                if best is None or cost < best[0]:
                    best = (cost, Spot(host.name, nodes, nics))
                break  # the preferred NICs of these nodes
            if best is not None and best[0] == 0:
                return best[1]
    return best[1] if best is not None else None


def first_pass(problem: Problem, base: Tally, rules: Rules) -> tuple[dict[str, Spot], str | None]:
    """The layout of every VM to place, or, at the first VM with no spot left, what it has so
    far and that VM's name."""
    tally = Tally.of(problem, base.spots)
    layout: dict[str, Spot] = {}
    for cls, name in order(problem):
        hosts = problem.role_hosts[cls.role]
        tiers: dict[int, list[Host]] = {}
        for host in sorted(hosts, key=lambda h: (h.rack, h.name)):
            tiers.setdefault(rules.racks.tier(tally, cls, host), []).append(host)
        spot = None
        for tier in sorted(tiers):
            spot = best_spot(tally, rules, cls, tiers[tier])
            if spot is not None:
                break
        if spot is None:
            return layout, name
        tally.add(name, spot)
        layout[name] = spot
    return layout, None
