"""What a placement rule is: the hooks the first pass, the CP-SAT model and the refusals call.

Every rule of the contract (docs/fleet.md, Placement) is one module of this package with one
subclass of `Rule`; both searches read the same rules, so a rule is written once:

- `check`: a refusal in operator terms that needs no search (a necessary condition fails);
- `admits`, `slot_admits`: whether a VM class may go to a host (to these nodes of it) at all,
  with only the VMs that stay where they are: the CP-SAT model makes variables only where
  every rule admits (`relax`: the rules a "what binds" probe leaves out);
- `host_ok` / `spot_ok`: the first pass's filters, given what is placed so far;
- `constrain`: the rule's constraints (and objective terms) in the CP-SAT model;
- `shortfall`: what the rule says about a host that cannot take a VM, for refusals.

An objective rule also has `cost` (its value for a layout) and `lower_bound` (what no layout
can beat), so the first pass proves its layout optimal without a solver when they meet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bmslice.fleet.placement.problem import Host, Nodes, Problem, Spot, VmClass
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import NicAssignment

if TYPE_CHECKING:  # the solver is imported only when a model is built
    from bmslice.fleet.placement.cpsat_model import FleetModel


Terms = list[tuple[int, int]]  # a linear expression of the model: (variable, coefficient) pairs


@dataclass(frozen=True)
class Term:
    """An objective rule's term in the model: the sum of `terms` plus `constant`, at most `upper`."""

    terms: Terms
    constant: int
    upper: int


class Rule:
    name = ""  # how "what binds" names it in a refusal

    def check(self, problem: Problem, base: Tally) -> str | None:
        return None

    def admits(self, problem: Problem, base: Tally, cls: VmClass, host: Host, relax: frozenset[str]) -> bool:
        return True

    def slot_admits(self, base: Tally, cls: VmClass, host: Host, nodes: Nodes, relax: frozenset[str]) -> bool:
        return True

    def host_ok(self, tally: Tally, cls: VmClass, host: Host) -> bool:
        return True

    def spot_ok(self, tally: Tally, cls: VmClass, host: Host, nodes: Nodes, nics: tuple[NicAssignment, ...]) -> bool:
        return True

    def shortfall(self, tally: Tally, cls: VmClass, host: Host) -> str | None:
        return None

    def constrain(self, m: FleetModel) -> None:
        return None


class ObjectiveRule(Rule):
    level = 0  # lexicographic rank: 0 is minimised first

    def cost(self, problem: Problem, layout: Mapping[str, Spot]) -> int:
        raise NotImplementedError

    def lower_bound(self, problem: Problem, base: Tally) -> int:
        return 0
