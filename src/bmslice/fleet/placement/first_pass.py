"""The first pass: one VM at a time, control planes first, then the biggest, each to the rack
with the fewest of its cluster and role, there to the spot with the fewest cross-NUMA NICs,
then in rack, host and node order. Fast and usually right; when it finds no spot for a VM,
or its layout does not meet the lower bounds, the CP-SAT model decides (decide.py)."""

from __future__ import annotations

from collections.abc import Iterable

from bmslice.fleet.placement.problem import Host, Problem, Spot, VmClass
from bmslice.fleet.placement.rules import Rules
from bmslice.fleet.placement.rules.locality import cross
from bmslice.fleet.placement.rules.nics import options
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import Role


def order(problem: Problem) -> list[tuple[VmClass, str]]:
    def key(item: tuple[VmClass, str]) -> tuple[int, int, int, int]:
        cls, name = item
        cores = sum(2 * s.pairs + s.singles for s in cls.shares)
        memory = sum(s.memory_mib for s in cls.shares)
        return (cls.role is not Role.CONTROL, -cores, -memory, problem.order[name])

    return sorted(((cls, name) for cls in problem.classes for name in cls.names), key=key)


def best_spot(
    tally: Tally, rules: Rules, cls: VmClass, hosts: Iterable[Host], dead: set[tuple[int, str]] | None = None
) -> Spot | None:
    """The spot a VM of `cls` gets on the first of `hosts` (one rack tier) with the least
    cross-NUMA cost. `dead`: (class, host) pairs known to have no spot; what is placed only
    grows, so they never get one again (a first pass on a big fleet skips full hosts at once)."""
    best: tuple[int, Spot] | None = None
    for host in hosts:
        if dead is not None and (cls.index, host.name) in dead:
            continue
        found = False
        if rules.roles.host_ok(tally, cls, host) and rules.max_per_host.host_ok(tally, cls, host):
            if not rules.control_apart.host_ok(tally, cls, host):
                if dead is not None:
                    dead.add((cls.index, host.name))
                continue
            for nodes in cls.slots(host):
                if not rules.capacity.spot_ok(tally, cls, host, nodes, ()):
                    continue
                choices = options(tally, host, cls.nic, nodes, cls.vlan) if cls.nic is not None else iter([()])
                for nics in choices:
                    if not rules.host_planner.spot_ok(tally, cls, host, nodes, nics):
                        continue
                    found = True
                    cost = cross(nodes, nics)
                    if best is None or cost < best[0]:
                        best = (cost, Spot(host.name, nodes, nics))
                    break  # the preferred NICs of these nodes
                if best is not None and best[0] == 0:
                    return best[1]
        if not found and dead is not None:
            dead.add((cls.index, host.name))
    return best[1] if best is not None else None


def first_pass(problem: Problem, base: Tally, rules: Rules) -> tuple[dict[str, Spot], str | None]:
    """The layout of every VM to place, or, at the first VM with no spot left, what it has so
    far and that VM's name."""
    tally = Tally.of(problem, base.spots)
    layout: dict[str, Spot] = {}
    dead: set[tuple[int, str]] = set()
    for cls, name in order(problem):
        tiers: dict[int, list[Host]] = {}
        spread = rules.racks.spreads(problem, cls)
        for rack, hosts in problem.racks_of[cls.role]:
            tier = tally.per_rack[(cls.cluster, cls.role, rack)] if spread else 0
            tiers.setdefault(tier, []).extend(hosts)
        spot = None
        for tier in sorted(tiers):
            spot = best_spot(tally, rules, cls, tiers[tier], dead)
            if spot is not None:
                break
        if spot is None:
            return layout, name
        tally.add(name, spot)
        layout[name] = spot
    return layout, None
