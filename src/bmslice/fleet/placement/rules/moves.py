"""O1 moves (only with --allow-move): the fewest VMs of the kept placement on another host,
other nodes or other NICs than before. A kept VM that stays keeps its NICs too (when its
size still asks for them): a VM given other NICs is rebuilt like a moved one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from bmslice.fleet.placement.problem import Problem, Spot, VmClass
from bmslice.fleet.placement.rules.base import ObjectiveRule, Term
from bmslice.model.fleet import NicKind

if TYPE_CHECKING:
    from bmslice.fleet.placement.cpsat_model import FleetModel


def stays(cls: VmClass, spot: Spot) -> bool:
    kept = cls.kept
    if kept is None or (spot.host, spot.nodes) != (kept.host, kept.nodes):
        return False
    return not kept.nics or spot.pfs == kept.pfs


def moved(problem: Problem, layout: Mapping[str, Spot]) -> tuple[str, ...]:
    return tuple(
        sorted(
            cls.names[0]
            for cls in problem.classes
            if cls.moving and cls.names[0] in layout and not stays(cls, layout[cls.names[0]])
        )
    )


class Moves(ObjectiveRule):
    name = "moves"
    level = 0

    def cost(self, problem: Problem, layout: Mapping[str, Spot]) -> int:
        return len(moved(problem, layout))

    def constrain(self, m: FleetModel) -> None:
        movers = [cls for cls in m.problem.classes if cls.moving]
        if not movers:
            return
        stay_vars = []
        for cls in movers:
            kept = cls.kept
            var = m.place.get((cls.index, kept.host, kept.nodes)) if kept is not None else None
            if var is None or kept is None:
                continue  # cannot stay: it moves whatever the layout
            stay = m.sat.var(0, 1, f"stays[{cls.names[0]}]")
            m.sat.equal([(var, 1)], 1, enforce=[stay])
            key = (cls.index, kept.host, kept.nodes)
            for nic in kept.nics:
                nic_vars = m.whole if nic.kind is NicKind.PASSTHROUGH else m.sriov
                nic_var = nic_vars.get((*key, nic.address))
                if nic_var is None:
                    m.sat.equal([(stay, 1)], 0)  # its NICs are gone: it cannot stay
                else:
                    m.sat.equal([(nic_var, 1)], 1, enforce=[stay])
            stay_vars.append(stay)
        m.terms[self.level].append(Term([(stay, -1) for stay in stay_vars], len(movers), len(movers)))
