"""The per-host planner as the last word on each server the fleet filled (pure).

The fleet placement counts capacity the way the host planner does, but only the host
planner knows every rule (IOMMU groups, SMT splits, kernel args). So each generated spec
goes through `make_plan` on that host's topology.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bmslice.errors import PlanError, SpecError
from bmslice.model.plan import Plan
from bmslice.model.spec import spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan


@dataclass(frozen=True)
class HostCheck:
    host: str
    plan: Plan
    warnings: tuple[str, ...] = field(default=())


def check_host(host: str, data: Mapping[str, Any], topo: HostTopology, origin: str) -> HostCheck:
    """Plan `data` on `topo`; PlanError/SpecError name the host."""
    try:
        spec = spec_from_data(dict(data), origin)
        plan = make_plan(topo, spec, origin=origin)
    except SpecError as exc:
        raise SpecError(f"{host}: the generated spec is invalid: {exc}") from None
    except PlanError as exc:
        raise PlanError(f"{host}: the host planner refuses the fleet's placement: {exc}") from None
    return HostCheck(host, plan, plan.warnings)
