"""bmslice verify / status: the note's `virsh vcpuinfo` and `virsh emulatorpin` check, done by a program."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmslice.apply.context import foreign_domain, held_in_spec, held_line, load_context
from bmslice.apply.libvirt_conn import connected, libvirt_errors, lookup
from bmslice.apply.uri import is_local
from bmslice.model.plan import Plan, VmPlan
from bmslice.model.spec import Spec
from bmslice.model.topology import HostTopology
from bmslice.render.domain_model import domain_from_plan
from bmslice.topology.fsroot import FsRoot
from bmslice.verify.compare import Drift, DriftKind, compare_definition, compare_pins, compare_threads, compare_vfs
from bmslice.verify.resctrl_state import compare_resctrl, read_slice_resctrl
from bmslice.verify.threads import read_threads

ROOT = Path("/")
HELD = "metadata unreadable"
NOT_BMSLICES = "not bmslice's"  # a domain of the slice's name that bmslice did not define


@dataclass
class SliceStatus:
    name: str
    state: str  # "running" | "shut off" | "not defined" | HELD
    drift: list[Drift] = field(default_factory=list)

    def count(self, kind: DriftKind) -> int:
        return sum(1 for line in self.drift if line.kind is kind)


@dataclass
class VerifyReport:
    slices: list[SliceStatus]
    notes: list[str]
    plan: Plan  # the plan verify compared against (the running slices kept)
    topology: HostTopology  # the host as verify read it (callers reuse it, never read twice)
    unreadable: list[str] = field(default_factory=list)  # one line per held slice the spec does not name

    @property
    def drift(self) -> list[str]:
        return [line for s in self.slices for line in s.drift]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.drift,
            "drift": self.drift,
            "notes": self.notes,
            "unreadable": self.unreadable,
            "slices": [{"name": s.name, "state": s.state, "drift": s.drift} for s in self.slices],
        }


def verify(
    spec: Spec, origin: str, uri: str, host_root: Path | None = None, topology: HostTopology | None = None
) -> VerifyReport:
    """The live slices against their plan; `topology`: the host as already read (else discovered)."""
    # a lost libvirtd is one error line, never a half report or a traceback
    with libvirt_errors(uri), connected(uri) as conn:
        return _verify(spec, origin, uri, conn, host_root, topology)


def _verify(
    spec: Spec, origin: str, uri: str, conn: Any, host_root: Path | None, topology: HostTopology | None
) -> VerifyReport:
    # allow_move: a slice whose spec changed is planned afresh, so the change shows as drift
    ctx = load_context(spec, origin, uri, conn, host_root, allow_move=True, topology=topology)
    this_kernel = is_local(uri) and host_root is None  # /proc and netlink answer for this kernel only
    slices = []
    notes: list[str] = []
    for vm_spec in spec.vms:
        held = ctx.held.get(vm_spec.name)
        if held is not None:  # not planned: bmslice cannot tell what it was applied with
            slices.append(SliceStatus(held.name, HELD, [Drift(held_in_spec(held, origin), DriftKind.STATE)]))
            continue
        vm = ctx.plan.vm(vm_spec.name)
        live = ctx.live.get(vm.name)
        if live is None and lookup(conn, vm.name) is not None:  # that name, but no bmslice metadata
            slices.append(SliceStatus(vm.name, NOT_BMSLICES, [Drift(foreign_domain(vm.name), DriftKind.STATE)]))
            continue
        if live is None:
            slices.append(SliceStatus(vm.name, "not defined", [Drift(f"{vm.name} is not defined", DriftKind.STATE)]))
            continue
        desired = domain_from_plan(vm)
        drift = compare_definition(vm.name, desired, live.xml)
        drift += compare_pins(vm.name, desired, live)  # live pins when running, else the definition's
        if live.active and live.pid is not None and this_kernel:
            drift += compare_threads(vm, read_threads(live.pid))
        if this_kernel:
            drift += compare_vfs(vm, ctx.topology.vf_states)
        if vm.cache is not None and live.active and (is_local(uri) or host_root is not None):
            resctrl_drift, resctrl_notes = compare_resctrl(vm, read_slice_resctrl(FsRoot(host_root or ROOT), vm.name))
            drift += [Drift(line, DriftKind.CACHE) for line in resctrl_drift]
            notes += resctrl_notes
        if not live.active:
            drift.insert(0, Drift(f"{vm.name} is not running", DriftKind.STATE))
        slices.append(SliceStatus(vm.name, "running" if live.active else "shut off", drift))
    if ctx.plan.host.reboot_required:
        notes.append(
            "reboot pending (not drift): kernel args not active yet: " + " ".join(ctx.plan.host.missing_kernel_args)
        )
    if not is_local(uri):
        notes.extend(_unchecked(uri, ctx.plan.vms, slices))
    notes.extend(ctx.plan.warnings)
    names = {vm.name for vm in spec.vms}
    unreadable = [held_line(held) for name, held in ctx.held.items() if name not in names]
    return VerifyReport(slices, notes, ctx.plan, ctx.topology, unreadable)


def _unchecked(uri: str, vms: Sequence[VmPlan], slices: list[SliceStatus]) -> list[str]:
    """What only the remote host's own kernel can answer, said rather than passed over in silence."""
    out = []
    if any(s.state == "running" for s in slices):
        out.append(
            f"not checked through {uri}: the CPUs each QEMU thread may run on (/proc/<pid>/task on the host); "
            "libvirt's vCPU, emulator and IOThread pins were checked; run `bmslice verify` on the host for both"
        )
    if any(dev.type == "vf" for vm in vms for dev in vm.devices):
        out.append(
            f"not checked through {uri}: VF MAC, VLAN, trust and spoofchk (netlink on the host); "
            "run `bmslice verify` on the host for them"
        )
    return out
