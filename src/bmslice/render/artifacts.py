"""Everything `bmslice render` writes, as {file name: text}: pure, so tests compare bytes."""

from __future__ import annotations

from bmslice.errors import RenderError
from bmslice.model.plan import Plan
from bmslice.render.domain_model import domain_from_plan
from bmslice.render.domain_xml import to_xml


def kernel_args_line(plan: Plan) -> str:
    return " ".join(plan.host.kernel_args) + "\n"


def _unresolved_vfs(plan: Plan) -> str | None:
    """The VFs whose PCI address only apply can know, as "VF 0 of eno2 for Blue, ..." (None: none)."""
    named = [
        f"VF {d.vf_index} of {d.interface or d.pf} for {vm.name}"
        for vm in plan.vms
        for d in vm.devices
        if d.type == "vf" and d.address is None
    ]
    if not named:
        return None
    return ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")


def render_plan(plan: Plan) -> dict[str, str]:
    """Every file `render` writes; refused when a domain would name a VF libvirt cannot find.

    libvirt's schema and `virsh define` reject an <interface type='hostdev'> without a source
    address, and an operator may define the rendered XML by hand; so a plan that leaves a
    VF's address to apply (no First VF Offset / VF Stride known, VFs not made yet) is refused
    with the ways to know it, instead of written as XML that looks usable and is not.
    """
    unresolved = _unresolved_vfs(plan)
    if unresolved is not None:
        raise RenderError(
            f"the PCI address of {unresolved} is resolved at apply time, once the VF exists, and libvirt rejects "
            "a VF interface without one: render on the host as root (the PF's SR-IOV capability gives First VF "
            "Offset and VF Stride), from a --host-root tree with sriov_offset and sriov_stride (Linux 4.16+) or "
            "whose PF already has the VFs (bmslice host-apply makes them), or let `bmslice apply` define the slice"
        )
    files = {f"{vm.name}.xml": to_xml(domain_from_plan(vm)) for vm in plan.vms}
    files["kernel-args"] = kernel_args_line(plan)
    return files
