"""Everything `bmslice render` writes, as {file name: text}: pure, so tests compare bytes."""

from __future__ import annotations

from bmslice.model.plan import Plan
from bmslice.render.domain_model import domain_from_plan
from bmslice.render.domain_xml import to_xml


def kernel_args_line(plan: Plan) -> str:
    return " ".join(plan.host.kernel_args) + "\n"


def render_plan(plan: Plan) -> dict[str, str]:
    files = {f"{vm.name}.xml": to_xml(domain_from_plan(vm)) for vm in plan.vms}
    files["kernel-args"] = kernel_args_line(plan)
    return files
