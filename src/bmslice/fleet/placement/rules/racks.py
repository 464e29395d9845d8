"""O2 rack spread: with `spread.racks: spread`, a cluster's VMs of one role as evenly over the
racks as the hosts allow. The objective is the sum of squares of the counts per rack (over
clusters and roles), which is least when the counts are as even as possible.

Lower bound (no search): per cluster and role, fill the racks one VM at a time, always the
rack with the fewest, each rack only up to what its hosts may take (max_per_host, one control
plane per host or rack) - the least sum of squares any layout can have, ignoring cores."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from bmslice.fleet.placement.problem import Problem, Spot, VmClass
from bmslice.fleet.placement.rules.base import ObjectiveRule, Term
from bmslice.fleet.placement.rules.control_apart import apart, racks_apart
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import RackSpread as Spread
from bmslice.model.fleet import Role

if TYPE_CHECKING:
    from bmslice.fleet.placement.cpsat_model import FleetModel


def spread(problem: Problem, cluster: str) -> bool:
    return problem.cluster(cluster).spread.racks is Spread.SPREAD


class RackSpread(ObjectiveRule):
    name = "rack spread"
    level = 1

    def spreads(self, problem: Problem, cls: VmClass) -> bool:
        """The first pass tries the racks with the fewest VMs of the cluster and role first."""
        return spread(problem, cls.cluster)

    def cost(self, problem: Problem, layout: Mapping[str, Spot]) -> int:
        counts: Counter[tuple[str, Role, str]] = Counter()
        for name, spot in layout.items():
            req = problem.requests[name]
            if spread(problem, req.cluster):
                counts[(req.cluster, req.role, problem.host(spot.host).rack)] += 1
        return sum(n * n for n in counts.values())

    def lower_bound(self, problem: Problem, base: Tally) -> int:
        counts = targets(problem, base)
        done = {(cluster, role) for cluster, role, _ in counts}
        fixed = sum(
            n * n
            for (cluster, role, _rack), n in base.per_rack.items()
            if spread(problem, cluster) and (cluster, role) not in done
        )
        return fixed + sum(n * n for n in counts.values())

    def constrain(self, m: FleetModel) -> None:
        by_rack: defaultdict[tuple[str, Role, str], list[tuple[int, int]]] = defaultdict(list)
        for key, var in m.place.items():
            cls = m.problem.cls(key[0])
            if spread(m.problem, cls.cluster):
                by_rack[(cls.cluster, cls.role, m.problem.host(key[1]).rack)].append((var, m.upper[key]))
        for (cluster, role, rack), terms in sorted(by_rack.items()):
            have = m.base.per_rack[(cluster, role, rack)]
            wanted = sum(c.count for c in m.problem.classes if c.cluster == cluster and c.role is role)
            most = min(wanted, sum(upper for _, upper in terms))
            # n^2 as have^2 plus one step per VM added, each step dearer than the one before:
            # the least-cost way to count n VMs takes the cheap steps first, so it is exact.
            steps = [m.sat.var(0, 1, f"rack_step[{cluster}|{role.value}|{rack}|{i}]") for i in range(most)]
            m.sat.equal(m.total([var for var, _ in terms]) + [(step, -1) for step in steps], 0)
            for before, after in itertools.pairwise(steps):
                m.sat.literals("bool_or", [before], enforce=[after])
            square = m.weighted(steps, [2 * (have + i) + 1 for i in range(len(steps))])
            m.terms[self.level].append(Term(square, have * have, (have + most) ** 2))


def targets(problem: Problem, base: Tally) -> dict[tuple[str, Role, str], int]:
    """Per cluster and role with VMs to place and `racks: spread`, the count per rack of the
    evenest layout the rules (not the cores) allow: racks filled one VM at a time, always the
    rack with the fewest, each only up to what its hosts may take."""
    wanted: Counter[tuple[str, Role]] = Counter()
    for cls in problem.classes:
        wanted[(cls.cluster, cls.role)] += cls.count
    out: dict[tuple[str, Role, str], int] = {}
    for (cluster, role), count in sorted(wanted.items()):
        if not spread(problem, cluster):
            continue
        rooms = _rooms(problem, base, cluster, role)
        counts = {rack: base.per_rack[(cluster, role, rack)] for rack in rooms}
        heap = [(counts[rack], rack, room) for rack, room in rooms.items() if room > 0]
        heapq.heapify(heap)
        for _ in range(count):
            if not heap:
                break
            have, rack, room = heapq.heappop(heap)
            counts[rack] = have + 1
            if room > 1:
                heapq.heappush(heap, (have + 1, rack, room - 1))
        out.update({(cluster, role, rack): n for rack, n in counts.items()})
    return out


def _rooms(problem: Problem, base: Tally, cluster: str, role: Role) -> dict[str, int]:
    """How many more VMs of the cluster and role each rack may take (rules, not cores)."""
    per_host = 1 if role is Role.CONTROL and apart(problem, cluster) else problem.cluster(cluster).spread.max_per_host
    rooms = {rack: per_host * len(hosts) for rack, hosts in problem.racks_of[role]}
    rack_of = {h.name: h.rack for h in problem.role_hosts[role]}
    for (host, c, r), taken in base.per_host.items():  # only the hosts the kept VMs are on
        if c == cluster and r is role and host in rack_of:
            rooms[rack_of[host]] -= min(taken, per_host)
    if role is Role.CONTROL and racks_apart(problem, cluster):
        for rack in rooms:
            rooms[rack] = min(rooms[rack], max(1 - base.per_rack[(cluster, role, rack)], 0))
    return rooms
