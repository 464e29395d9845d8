"""Large fleets: improve a layout a few racks at a time (large-neighbourhood search).

One CP-SAT model of a 1,000-server fleet has some 600,000 variables and finds nothing in
minutes. But every rule and both objectives stay within a rack (per host, per rack), so
freeing every VM placed in a few racks and solving just those racks again, the rest held,
changes the objective by exactly what changes inside them: each solve can only make the
layout better. The racks are chosen where the layout misses the lower bounds: a cluster's
fullest rack with its emptiest ones (rack spread), the racks with cross-NUMA NICs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace

from bmslice.fleet.placement.problem import Problem, Spot, VmClass
from bmslice.fleet.placement.rules import Rules
from bmslice.fleet.placement.rules.locality import cross
from bmslice.fleet.placement.rules.racks import spread, targets
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import Role

RACKS_PER_SOLVE = 3
SECONDS_PER_SOLVE = 2.0


def part(problem: Problem, layout: Mapping[str, Spot], racks: frozenset[str]) -> Problem:
    """The problem of these racks alone: their hosts, the VMs placed there freed (in classes as
    before), the fixed ones fixed."""
    hosts = tuple(h for h in problem.hosts if h.rack in racks)
    here = {h.name for h in hosts}
    freed: dict[int, list[str]] = {}
    fixed: dict[str, Spot] = {}
    for name, spot in layout.items():
        if spot.host not in here:
            continue
        cls = problem.class_of.get(name)
        if cls is None:
            fixed[name] = spot
        else:
            freed.setdefault(cls.index, []).append(name)
    classes: list[VmClass] = []
    for index in sorted(freed):
        names = tuple(sorted(freed[index], key=problem.order.__getitem__))
        classes.append(replace(problem.cls(index), index=len(classes), names=names))
    return Problem(problem.fleet, hosts, tuple(classes), fixed, problem.requests)


def choices(problem: Problem, layout: Mapping[str, Spot], base: Tally) -> list[frozenset[str]]:
    """Sets of racks worth solving again, the most promising first."""
    rack_of = {h.name: h.rack for h in problem.hosts}
    counts: Counter[tuple[str, Role, str]] = Counter()
    crossing: Counter[str] = Counter()
    for name, spot in layout.items():
        req = problem.requests[name]
        rack = rack_of[spot.host]
        counts[(req.cluster, req.role, rack)] += 1
        crossing[rack] += cross(spot.nodes, spot.nics)
    out: list[frozenset[str]] = []
    goal = targets(problem, base)
    groups = sorted({(cluster, role) for cluster, role, _ in goal})
    for cluster, role in groups:
        if not spread(problem, cluster):
            continue
        racks = problem.racks[role]
        over = sorted(racks, key=lambda r: (goal.get((cluster, role, r), 0) - counts[(cluster, role, r)], r))
        under = sorted(racks, key=lambda r: (counts[(cluster, role, r)] - goal.get((cluster, role, r), 0), r))
        if over and counts[(cluster, role, over[0])] > goal.get((cluster, role, over[0]), 0):
            out.append(frozenset([over[0], *under[: RACKS_PER_SOLVE - 1]]))
    for rack, n in sorted(crossing.items(), key=lambda kv: (-kv[1], kv[0])):
        if n:
            out.append(frozenset({rack}))
    return list(dict.fromkeys(out))


def improve(problem: Problem, layout: dict[str, Spot], rules: Rules, deadline: float) -> tuple[dict[str, Spot], bool]:
    """A layout at least as good as `layout` (which holds the fixed VMs too); True when it
    meets the lower bounds (proven optimal)."""
    from bmslice.fleet.placement.cpsat_model import build, solve

    base = Tally.of(problem, problem.fixed)
    bounds = [rule.lower_bound(problem, base) for rule in rules.objectives]
    tried: set[frozenset[str]] = set()

    def costs() -> list[int]:
        return [rule.cost(problem, layout) for rule in rules.objectives]

    def at_bounds() -> bool:
        return all(cost <= bound for cost, bound in zip(costs(), bounds, strict=True))

    while not at_bounds():
        todo = [racks for racks in choices(problem, layout, base) if racks not in tried]
        if not todo or time.monotonic() >= deadline:
            break
        racks = todo[0]
        tried.add(racks)
        sub = part(problem, layout, racks)
        if not sub.classes:
            continue
        sub_base = Tally.of(sub, sub.fixed)
        hint = {name: layout[name] for cls in sub.classes for name in cls.names}
        model = build(sub, sub_base, rules.all, hint=hint)
        solved = solve(model, min(SECONDS_PER_SOLVE, deadline - time.monotonic()))
        if solved.found:
            before = costs()
            trial = {**layout, **solved.layout}
            after = [rule.cost(problem, trial) for rule in rules.objectives]
            if after < before:
                layout = trial
                tried.clear()
    return layout, at_bounds()
