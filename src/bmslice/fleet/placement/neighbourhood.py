"""Large fleets: improve a layout a few VMs at a time (large-neighbourhood search).

One CP-SAT model of a 1,000-server fleet has some 600,000 variables and finds nothing in
minutes. But every rule and both objectives stay within a rack (per host, per rack), so
freeing some VMs of a few racks and solving those racks again, everything else held,
changes the objective by exactly what changes inside them: each solve can only make the
layout better. What is freed is where the layout misses the lower bounds: a cluster's VMs in
its fullest rack and its emptiest ones, with the VMs of the emptiest hosts there (rack
spread); the VMs of the hosts with a cross-NUMA NIC (locality).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from bmslice.fleet.placement.problem import Problem, Spot, VmClass
from bmslice.fleet.placement.rules import Rules
from bmslice.fleet.placement.rules.locality import cross
from bmslice.fleet.placement.rules.racks import spread, targets
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import Role

RACKS_PER_SOLVE = 2
HOSTS_TO_EMPTY = 3  # hosts of an emptiest rack whose VMs are freed too, to make room there
SECONDS_PER_SOLVE = 1.0


@dataclass(frozen=True)
class Neighbourhood:
    racks: frozenset[str]
    free: frozenset[str]  # the VMs solved again; the others of these racks stay


def part(
    problem: Problem, layout: Mapping[str, Spot], racks: frozenset[str], free: frozenset[str] | None = None
) -> Problem:
    """The problem of these racks alone: their hosts, the VMs of `free` placed there (all, when
    None) in classes as before, the other VMs there fixed (keeping their class for no-goods)."""
    hosts = tuple(h for h in problem.hosts if h.rack in racks)
    here = {h.name for h in hosts}
    freed: dict[int, list[str]] = {}
    fixed: dict[str, Spot] = {}
    keys: dict[str, tuple[object, ...]] = {}
    for name, spot in layout.items():
        if spot.host not in here:
            continue
        cls = problem.class_of.get(name)
        if cls is not None and (free is None or name in free):
            freed.setdefault(cls.index, []).append(name)
            continue
        fixed[name] = spot
        if cls is not None:
            keys[name] = cls.key
        elif name in problem.fixed_keys:
            keys[name] = problem.fixed_keys[name]
    classes: list[VmClass] = []
    for index in sorted(freed):
        names = tuple(sorted(freed[index], key=problem.order.__getitem__))
        classes.append(replace(problem.cls(index), index=len(classes), names=names))
    return Problem(problem.fleet, hosts, tuple(classes), fixed, problem.requests, fixed_keys=keys)


def choices(problem: Problem, layout: Mapping[str, Spot], base: Tally) -> list[Neighbourhood]:
    """Parts worth solving again, the most promising first."""
    rack_of = {h.name: h.rack for h in problem.hosts}
    counts: Counter[tuple[str, Role, str]] = Counter()
    on_host: defaultdict[str, list[str]] = defaultdict(list)
    crossing: defaultdict[str, set[str]] = defaultdict(set)  # rack -> hosts with a cross-NUMA NIC
    for name, spot in layout.items():
        req = problem.requests[name]
        counts[(req.cluster, req.role, rack_of[spot.host])] += 1
        on_host[spot.host].append(name)
        if cross(spot.nodes, spot.nics):
            crossing[rack_of[spot.host]].add(spot.host)
    tally = Tally.of(problem, layout)
    out: list[Neighbourhood] = []
    goal = targets(problem, base)
    for cluster, role in sorted({(cluster, role) for cluster, role, _ in goal}):
        if not spread(problem, cluster):
            continue
        racks = problem.racks[role]
        gap = {r: counts[(cluster, role, r)] - goal.get((cluster, role, r), 0) for r in racks}
        over = max(racks, key=lambda r: (gap[r], r))
        if gap[over] <= 0:
            continue
        under = sorted((r for r in racks if gap[r] < 0), key=lambda r: (gap[r], r))[: RACKS_PER_SOLVE - 1]
        chosen = frozenset([over, *under])
        free = {n for n, s in layout.items() if rack_of[s.host] in chosen and problem.requests[n].cluster == cluster}
        for rack in under:  # make room there: free the VMs of its emptiest hosts too
            hosts = sorted(
                (h for h in problem.hosts if h.rack == rack and h.role is role),
                key=lambda h: (-sum(tally.cores_left(h, n.id) for n in h.nodes), h.name),
            )
            for h in hosts[:HOSTS_TO_EMPTY]:
                free.update(on_host[h.name])
        out.append(Neighbourhood(chosen, frozenset(free)))
    for rack, names in sorted(crossing.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        free = {n for h in names for n in on_host[h]}
        out.append(Neighbourhood(frozenset({rack}), frozenset(free)))
    return list(dict.fromkeys(out))


def improve(problem: Problem, layout: dict[str, Spot], rules: Rules, deadline: float) -> tuple[dict[str, Spot], bool]:
    """A layout at least as good as `layout` (which holds the fixed VMs too); True when it
    meets the lower bounds (proven optimal)."""
    from bmslice.fleet.placement.cpsat_model import build, solve

    base = Tally.of(problem, problem.fixed)
    bounds = [rule.lower_bound(problem, base) for rule in rules.objectives]
    tried: set[Neighbourhood] = set()

    def costs() -> list[int]:
        return [rule.cost(problem, layout) for rule in rules.objectives]

    def at_bounds() -> bool:
        return all(cost <= bound for cost, bound in zip(costs(), bounds, strict=True))

    while not at_bounds():
        todo = [n for n in choices(problem, layout, base) if n not in tried]
        if not todo or time.monotonic() >= deadline:
            break
        tried.add(todo[0])
        sub = part(problem, layout, todo[0].racks, todo[0].free)
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
