"""H8 the host planner is the judge: what it refused, never again.

The rules above mirror what the per-host planner checks, but it knows more (realtime
housekeeping on SMT siblings, MAC addresses already on the host, IOMMU groups shared
between PFs that go to different VMs...). When it refuses a host's share, judge.py finds
the fewest VMs of that share it still refuses and learns a no-good: not all of them, on
these nodes with these NICs, on that host or any host the planner cannot tell from it (same
topology, `host:` section and NICs). Both searches then avoid it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bmslice.fleet.placement.problem import Host, Nodes, VmClass
from bmslice.fleet.placement.rules.base import Rule
from bmslice.fleet.placement.tally import Item, Tally
from bmslice.model.fleet import NicAssignment
from bmslice.plan.sat_model import negated

if TYPE_CHECKING:
    from bmslice.fleet.placement.cpsat_model import FleetModel

NAME = "host planner"


@dataclass(frozen=True)
class NoGood:
    """Not all of `items` (each at least so many times) on any one of `hosts`."""

    hosts: frozenset[str]
    items: tuple[tuple[Item, int], ...]
    reason: str  # the host planner's refusal, for messages

    def hit(self, have: Counter[Item]) -> bool:
        return all(have[item] >= times for item, times in self.items)

    def text(self) -> str:
        """'a red worker on NUMA node 0 of server1 (and 2 servers like it)'."""
        what = []
        for (key, nodes, _pfs), times in self.items:
            who = f"{key[1]} {key[2]}" if key[0] == "class" else str(key[1])
            count = f"{times} x " if times > 1 else ("a " if key[0] == "class" else "")
            what.append(f"{count}{who} on NUMA node{'s' if len(nodes) > 1 else ''} {','.join(map(str, nodes))}")
        hosts = sorted(self.hosts)
        like = f" (and {len(hosts) - 1} host(s) like it)" if len(hosts) > 1 else ""
        return f"{' with '.join(what)} of {hosts[0]}{like}"


class HostPlanner(Rule):
    name = NAME

    def __init__(self) -> None:
        self.no_goods: list[NoGood] = []

    def learn(self, no_good: NoGood) -> None:
        if no_good not in self.no_goods:
            self.no_goods.append(no_good)

    def spot_ok(self, tally: Tally, cls: VmClass, host: Host, nodes: Nodes, nics: tuple[NicAssignment, ...]) -> bool:
        relevant = [ng for ng in self.no_goods if host.name in ng.hosts]
        if not relevant:
            return True
        have = Counter(tally.items[host.name])
        have[(cls.key, nodes, tuple(n.address for n in nics))] += 1
        return not any(ng.hit(have) for ng in relevant)

    def shortfall(self, tally: Tally, cls: VmClass, host: Host) -> str | None:
        for ng in self.no_goods:
            if host.name in ng.hosts and any(item[0] == cls.key for item, _ in ng.items):
                return f"the host planner refuses it there ({ng.reason})"
        return None

    def constrain(self, m: FleetModel) -> None:
        if m.relaxed(NAME):
            return
        for ng in self.no_goods:
            for host in sorted(ng.hosts):
                present = []
                possible = True
                for (key, nodes, pfs), times in ng.items:
                    cls = m.problem.class_by_key.get(key)
                    if cls is None:  # a VM that stays where it is, or of no class here
                        if m.base.items[host][(key, nodes, pfs)] < times:
                            possible = False  # not there: the no-good cannot hit
                        continue
                    literal = _present(m, (cls.index, host, nodes), pfs, times)
                    if literal is None:
                        possible = False
                        break
                    present.append(literal)
                if possible:
                    m.sat.literals("bool_or", [negated(lit) for lit in present])


def _present(m: FleetModel, key: tuple[int, str, Nodes], pfs: tuple[str, ...], times: int) -> int | None:
    """A literal that is true whenever `times` VMs of class k are on these nodes with these PFs."""
    found = [m.place.get(key)] if not pfs else [m.sriov.get((*key, pf), m.whole.get((*key, pf))) for pf in pfs]
    variables = [v for v in found if v is not None]
    if not variables or len(variables) != len(found):
        return None
    literal = m.sat.var(0, 1, f"no_good[{key[1]}|{key[0]}]")
    if len(variables) == 1:
        m.sat.at_most([(variables[0], 1)], times - 1, enforce=[negated(literal)])
    else:  # whole PFs: each given once, so all of them to the class on these nodes
        m.sat.literals("bool_or", [negated(v) for v in variables], enforce=[negated(literal)])
    return literal
