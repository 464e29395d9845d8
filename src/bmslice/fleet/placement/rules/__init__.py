"""The placement rules, one module each (base.py says what a rule is)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bmslice.fleet.placement.rules.base import ObjectiveRule, Rule
from bmslice.fleet.placement.rules.capacity import Capacity
from bmslice.fleet.placement.rules.control_apart import ControlApart
from bmslice.fleet.placement.rules.host_planner import HostPlanner
from bmslice.fleet.placement.rules.locality import NicLocality
from bmslice.fleet.placement.rules.max_per_host import MaxPerHost
from bmslice.fleet.placement.rules.moves import Moves
from bmslice.fleet.placement.rules.nics import Nics
from bmslice.fleet.placement.rules.racks import RackSpread
from bmslice.fleet.placement.rules.roles import Roles


@dataclass
class Rules:
    """One set per placement: the host planner's no-goods are learned as it goes."""

    roles: Roles = field(default_factory=Roles)
    max_per_host: MaxPerHost = field(default_factory=MaxPerHost)
    control_apart: ControlApart = field(default_factory=ControlApart)
    capacity: Capacity = field(default_factory=Capacity)
    nics: Nics = field(default_factory=Nics)
    host_planner: HostPlanner = field(default_factory=HostPlanner)
    moves: Moves = field(default_factory=Moves)
    racks: RackSpread = field(default_factory=RackSpread)
    locality: NicLocality = field(default_factory=NicLocality)

    @property
    def hard(self) -> list[Rule]:
        """In the order a refusal names what a host lacks."""
        return [self.roles, self.control_apart, self.max_per_host, self.capacity, self.nics, self.host_planner]

    @property
    def objectives(self) -> list[ObjectiveRule]:
        """In lexicographic order."""
        return [self.moves, self.racks, self.locality]

    @property
    def all(self) -> list[Rule]:
        return [*self.hard, *self.objectives]


__all__ = ["ObjectiveRule", "Rule", "Rules"]
