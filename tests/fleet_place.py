"""The one adapter between the completeness tests/bench and `bmslice.fleet.placement.place`.

The placement contract has `place(fleet, topologies, existing=None, *, allow_move=False,
budget_s=...)` returning a `Placement` with `proven_optimal` and `moved`, and fleets may say
`spread: {control_planes: any}`. An older `place` lacks some of that: here, and only here,
the tests ask for what exists. An older `place` is called without `allow_move` (so it moves
nothing: the tests then see what it cannot do), never claims a proven optimum, and reports
no `moved`; fleets leave out `control_planes` when the model has no such field.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from dataclasses import dataclass

from bmslice.errors import PlanError
from bmslice.fleet import placement as placement_module
from bmslice.model.fleet import Fleet, Placement, Spread
from bmslice.model.topology import HostTopology

HAS_CONTROL_PLANES_FIELD = "control_planes" in Spread.__struct_fields__
HAS_ALLOW_MOVE = "allow_move" in inspect.signature(placement_module.place).parameters


@dataclass(frozen=True)
class Outcome:
    """What one call of place() did: a placement, or the one-line refusal."""

    placement: Placement | None
    refusal: str | None
    seconds: float
    proven_optimal: bool  # the placement says its objective is proven optimal
    moved: tuple[str, ...] | None  # the VMs the placement says moved; None: it does not say


def run_place(
    fleet: Fleet,
    topologies: Mapping[str, HostTopology],
    existing: Placement | None = None,
    *,
    allow_move: bool = False,
) -> Outcome:
    kwargs = {"allow_move": allow_move} if HAS_ALLOW_MOVE else {}
    start = time.perf_counter()
    try:
        placement = placement_module.place(fleet, topologies, existing, **kwargs)
    except PlanError as exc:
        return Outcome(None, str(exc), time.perf_counter() - start, False, None)
    seconds = time.perf_counter() - start
    moved = getattr(placement, "moved", None)
    return Outcome(
        placement,
        None,
        seconds,
        bool(getattr(placement, "proven_optimal", False)),
        None if moved is None else tuple(moved),
    )
