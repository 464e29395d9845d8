"""The per-host planner as the last word on each server the fleet filled (pure).

The fleet placement counts capacity the way the host planner does, but only the host
planner knows every rule (IOMMU groups, SMT splits, kernel args). So each generated spec
goes through `make_plan` on that host's topology. A spec that uses a spec feature this
bmslice does not know yet (SR-IOV entries, seed files) cannot be checked here; that is
said, not hidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bmslice.errors import PlanError, SpecError
from bmslice.model import spec as spec_model
from bmslice.model.plan import Plan
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan


@dataclass(frozen=True)
class HostCheck:
    host: str
    plan: Plan | None  # None: not checked (see `skipped`)
    skipped: str | None = None
    warnings: tuple[str, ...] = field(default=())
    partial: str | None = None  # what the check had to leave out


def unsupported_features(data: Mapping[str, Any]) -> list[str]:
    """Spec features `data` uses that change the plan and this bmslice's spec model lacks."""
    vms = data.get("vms", [])
    uses_sriov = any("sriov" in nic for vm in vms for nic in vm.get("nics", []))
    if uses_sriov and not hasattr(spec_model, "SriovSpec"):
        return ["SR-IOV NIC entries (sriov:)"]
    return []


SEED_FILES_MISSING = (
    "checked without cloud_init.seed_files, which this bmslice's spec does not have yet; "
    "apply refuses these specs until it does"
)


def plannable(data: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """`data` without the parts this bmslice's spec model lacks that do not change the plan
    (seed files only go onto the cloud-init seed), and what was left out."""
    if "seed_files" in spec_model.CloudInitSpec.model_fields:
        return dict(data), None
    left_out = None
    vms = []
    for vm in data.get("vms", []):
        cloud_init = vm.get("cloud_init") or {}
        if "seed_files" in cloud_init:
            vm = {**vm, "cloud_init": {k: v for k, v in cloud_init.items() if k != "seed_files"}}
            left_out = SEED_FILES_MISSING
        vms.append(vm)
    return {**data, "vms": vms}, left_out


def check_host(host: str, data: Mapping[str, Any], topo: HostTopology, origin: str) -> HostCheck:
    """Plan `data` on `topo`; PlanError/SpecError name the host. Skipped (with the reason) when
    the spec uses features this bmslice cannot plan yet."""
    missing = unsupported_features(data)
    if missing:
        return HostCheck(host, None, f"this bmslice cannot check {', '.join(missing)} yet")
    checked, left_out = plannable(data)
    try:
        spec = spec_model.spec_from_data(checked, origin)
        plan = make_plan(topo, spec, origin=origin)
    except SpecError as exc:
        raise SpecError(f"{host}: the generated spec is invalid: {exc}") from None
    except PlanError as exc:
        raise PlanError(f"{host}: the host planner refuses the fleet's placement: {exc}") from None
    return HostCheck(host, plan, None, plan.warnings, left_out)
