"""Which host, NUMA node(s) and NICs each cluster VM gets: a pure function of the fleet, the
hosts' topologies and the kept placement. docs/fleet.md (Placement) says what it decides and
how; the rules are in rules/, one module each, read by the first pass and the CP-SAT model."""

from bmslice.fleet import DEFAULT_BUDGET_S
from bmslice.fleet.placement.decide import place
from bmslice.fleet.placement.problem import spec_order

__all__ = ["DEFAULT_BUDGET_S", "place", "spec_order"]
