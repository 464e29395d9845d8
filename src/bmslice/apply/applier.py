"""bmslice apply: diff the plan against the live host and run only the steps that close the gap.

Order per new slice: detach its NICs to vfio, define the domain (libvirt validates the XML
against its schema), create its disk and seed volumes, start it, set autostart. The
domain comes before the volumes so that a run killed while creating them leaves a domain
that names them: the next apply finishes the slice, `destroy` removes it (volumes.py).
Any failure, Ctrl-C and SIGTERM included, undoes everything this run did, in reverse.
A slice that already runs is re-pinned live when only its pins drifted; anything bigger
needs --allow-move. Volumes under a slice's names that bmslice did not make are refused
before any change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from bmslice.apply import pf_link, sriov, storage, volumes
from bmslice.apply.context import Context, foreign_domain, held_in_spec, held_warnings, load_context
from bmslice.apply.libvirt_conn import (
    AFFECT_CONFIG,
    AFFECT_LIVE,
    VALIDATE,
    connected,
    cpumap,
    host_cpu_count,
    host_key,
    libvirt_errors,
    lookup,
    stop_domain,
)
from bmslice.apply.lock import host_lock
from bmslice.apply.seed import read_seed
from bmslice.apply.transaction import Step, run_steps
from bmslice.apply.uri import is_local
from bmslice.apply.volumes import disk_slot, seed_slot
from bmslice.cpuset import CpuSet
from bmslice.errors import ApplyError
from bmslice.model.live import LiveDomain
from bmslice.model.plan import VmPlan
from bmslice.model.spec import Spec, VmSpec
from bmslice.model.topology import nodedev_name
from bmslice.plan.cache_ways import host_ways_conflicts
from bmslice.render.domain_model import Disk, Domain, domain_from_plan
from bmslice.render.domain_xml import from_xml, to_xml
from bmslice.render.sriov_files import HOOK_RELOAD
from bmslice.topology.fsroot import FsRoot
from bmslice.topology.mounts import read_hugetlbfs_mounts

PARKED = ("vfio-pci",)


@dataclass(frozen=True)
class ApplyOptions:
    uri: str
    dry_run: bool = False
    allow_move: bool = False
    host_root: Path | None = None
    spec_dir: Path = Path(".")


@dataclass
class ApplyResult:
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.steps) and not self.dry_run


def apply(spec: Spec, origin: str, opts: ApplyOptions, report: Callable[[str], None]) -> ApplyResult:
    with libvirt_errors(opts.uri), connected(opts.uri) as conn, host_lock(host_key(conn), opts.uri):
        ctx = load_context(spec, origin, opts.uri, conn, opts.host_root, opts.allow_move)
        _refuse_held(ctx, spec, origin)
        _preflight(ctx, spec, opts)
        steps: list[Step] = _sriov_host_steps(ctx, opts)
        result = ApplyResult(warnings=[*held_warnings(ctx), *ctx.plan.warnings], dry_run=opts.dry_run)
        if (opts.host_root is not None or is_local(opts.uri)) and sriov.hook_is_new(
            opts.host_root or Path("/"), ctx.plan
        ):
            result.warnings.append(f"libvirt's VF hook is new here: {HOOK_RELOAD}")  # apply writes it below
        for vm_spec in spec.vms:
            steps.extend(_steps_for(ctx, vm_spec, ctx.plan.vm(vm_spec.name), opts, result.warnings))
        if opts.dry_run:
            result.steps = [s.description for s in steps]
            return result
        result.steps = run_steps(steps, report, alive=lambda: bool(conn.isAlive())).done
        return result


def _refuse_held(ctx: Context, spec: Spec, origin: str) -> None:
    """A slice of this spec whose recorded plan is unreadable cannot be converged: bmslice cannot
    tell what it was applied with, so it neither keeps nor moves it."""
    for vm in spec.vms:
        held = ctx.held.get(vm.name)
        if held is not None:
            raise ApplyError(held_in_spec(held, origin))


def _preflight(ctx: Context, spec: Spec, opts: ApplyOptions) -> None:
    """Refuse before touching anything when a step is bound to fail (faults.md 4, 15, 18)."""
    new = [vm for vm in ctx.plan.vms if vm.name not in ctx.live]
    if any(vm.devices for vm in new) and ctx.topology.iommu_active is False:
        args = " ".join(ctx.plan.host.kernel_args)
        raise ApplyError(f"IOMMU is not active on this host; PCI passthrough needs a reboot with: {args}")
    kvm_missing = is_local(opts.uri) and opts.host_root is None and not os.path.exists("/dev/kvm")
    if kvm_missing and any(vm.domain_type == "kvm" for vm in new):
        raise ApplyError("/dev/kvm is missing: enable VT-x/AMD-V, or set host.domain_type: qemu (TCG)")
    conflicts = host_ways_conflicts(ctx.plan, ctx.topology.resctrl, [vm.name for vm in new])
    if conflicts:
        raise ApplyError(
            f"{conflicts[0]}: libvirt would find no room for them; run bmslice host-apply, then "
            "`systemctl daemon-reload && systemctl restart bmslice-resctrl.service`"
        )
    for vm in new:
        if not vm.hugepage_kib:
            continue
        for node_id, mib in vm.memory_by_node().items():
            node = ctx.topology.node(node_id)
            need = mib * 1024 // vm.hugepage_kib
            free = node.hugepages_of(vm.hugepage_kib).free
            if free < need:
                raise ApplyError(
                    f"{vm.name} needs {need} free {vm.hugepage_kib} KiB hugepages on NUMA node {node.id}, "
                    f"{free} are free (bmslice host-apply reserves them)"
                )
    _hugetlbfs_preflight(new, opts)


def _hugetlbfs_preflight(new: list[VmPlan], opts: ApplyOptions) -> None:
    """libvirt backs hugepages with a hugetlbfs of their size and refuses to start a guest without one.
    Known only where this host's /proc/mounts can be read (a local URI, or a tree that has it)."""
    if opts.host_root is None and not is_local(opts.uri):
        return
    mounts = read_hugetlbfs_mounts(FsRoot(opts.host_root or Path("/")))
    if mounts is None:
        return
    for vm in new:
        if vm.hugepage_kib and not mounts.get(vm.hugepage_kib):
            raise ApplyError(
                f"{vm.name} uses {vm.hugepage_kib} KiB hugepages and no hugetlbfs of that page size is mounted "
                "(/proc/mounts): bmslice host-apply places the mount unit; start it, then restart libvirtd, "
                "which looks for hugetlbfs mounts only when it starts"
            )


def _no_kernel(opts: ApplyOptions) -> str | None:
    """Why this run cannot talk netlink to the host's kernel (None: it can), for the steps it skips."""
    if opts.host_root is not None:
        return "a host tree has no kernel to talk netlink to"
    if not is_local(opts.uri):
        return f"netlink reaches this machine's kernel, not the host of {opts.uri}: run bmslice on that host"
    return None


def _sriov_host_steps(ctx: Context, opts: ApplyOptions) -> list[Step]:
    """VF counts, then what brings the VFs back after a reboot (udev rule, VF settings, libvirt hook)."""
    changes = [pf for pf in ctx.plan.host.sriov if pf.numvfs != pf.numvfs_before]
    if opts.host_root is None and not is_local(opts.uri):
        if changes:
            raise ApplyError(
                f"creating SR-IOV VFs needs the host's own /sys; run bmslice on {opts.uri}'s host "
                "(the Ansible module does) or create them with host-apply first"
            )
        return []  # a remote host's files are host-apply's, run there
    root = opts.host_root or Path("/")
    return [*sriov.numvfs_steps(root, changes), *sriov.persist_steps(root, ctx.plan)]


def _disks(ctx: Context, vm_spec: VmSpec, vm: VmPlan) -> tuple[Disk, ...]:
    disks: list[Disk] = []
    if (disk := disk_slot(vm_spec)) is not None:
        base = storage.pool_path(storage.pool(ctx.conn, disk.pool))
        iothread = 1 if vm.iothreads else None
        disks.append(Disk(f"{base}/{disk.name}", "vda", iothread=iothread))
    if (seed := seed_slot(vm_spec)) is not None:
        base = storage.pool_path(storage.pool(ctx.conn, seed.pool))
        disks.append(Disk(f"{base}/{seed.name}", "sda", "cdrom", "raw", "sata", readonly=True))
    return tuple(disks)


def _steps_for(ctx: Context, vm_spec: VmSpec, vm: VmPlan, opts: ApplyOptions, warnings: list[str]) -> list[Step]:
    desired = domain_from_plan(vm, _disks(ctx, vm_spec, vm))
    live = ctx.live.get(vm.name)
    if live is None:
        return _create_steps(ctx, vm_spec, vm, desired, opts)
    listed = {disk.path for disk in from_xml(live.inactive_xml).disks}
    running = live.active and vm.name not in ctx.moving  # a slice that moves is stopped first
    ensure = _volume_steps(ctx, vm_spec, opts.spec_dir, listed, False, warnings.append, running)
    if vm.name in ctx.moving:
        xml = partial(_final_xml, opts, vm, desired)
        return [_stop_step(ctx, vm.name), *_redefine_steps(ctx, live, xml), *ensure, _start_step(ctx, vm.name)]
    return [*ensure, *_converge_steps(ctx, live, desired, opts.allow_move)]


def _volume_steps(
    ctx: Context,
    vm_spec: VmSpec,
    spec_dir: Path,
    listed: set[str],
    new_slice: bool,
    warn: Callable[[str], None],
    running: bool = False,
) -> list[Step]:
    """The disk and seed as this run needs them; `listed`: the volume paths the slice's domain names.

    For a new slice a volume that is not bmslice's is refused; for a slice already defined
    on it, it is only warned about (the slice uses it today, bmslice leaves it as it is).
    """
    steps: list[Step] = []
    if (slot := disk_slot(vm_spec)) is not None:
        assert vm_spec.disk is not None
        pool = storage.pool(ctx.conn, slot.pool)
        named = f"{storage.pool_path(pool)}/{slot.name}" in listed
        steps += volumes.disk_steps(pool, slot, vm_spec.disk, named, new_slice, warn, running)
    if (slot := seed_slot(vm_spec)) is not None:
        assert vm_spec.cloud_init is not None
        seed = read_seed(vm_spec.name, vm_spec.cloud_init, spec_dir)  # read and checked before any change
        pool = storage.pool(ctx.conn, slot.pool)
        named = f"{storage.pool_path(pool)}/{slot.name}" in listed
        steps += volumes.seed_steps(pool, slot, seed, named, new_slice, warn)
    return steps


# --- a new slice ---------------------------------------------------------------------


def _create_steps(ctx: Context, vm_spec: VmSpec, vm: VmPlan, desired: Domain, opts: ApplyOptions) -> list[Step]:
    if lookup(ctx.conn, vm.name) is not None:  # defined, but not by bmslice (no bmslice metadata)
        raise ApplyError(f"{foreign_domain(vm.name)}: rename one of them")
    ensure_volumes = _volume_steps(ctx, vm_spec, opts.spec_dir, set(), True, lambda _line: None)  # refusals first
    steps = [
        _detach_step(ctx, dev.known_address)
        for dev in vm.devices
        if dev.type == "passthrough" and _needs_detach(ctx, dev.known_address)
    ]
    steps += pf_link.pf_up_steps(vm.devices, _no_kernel(opts))
    steps += sriov.vf_setting_steps(vm.devices, _no_kernel(opts))

    def undefine() -> None:
        dom = lookup(ctx.conn, vm.name)
        if dom is not None:
            dom.undefine()

    steps.append(
        Step(
            f"define {vm.name}",
            lambda: ctx.conn.defineXMLFlags(_final_xml(opts, vm, desired), VALIDATE),
            undefine,
            f"undefine {vm.name}",
        )
    )
    steps += ensure_volumes
    steps.append(_start_step(ctx, vm.name))
    steps.append(
        Step(
            f"set autostart on {vm.name}",
            lambda: ctx.conn.lookupByName(vm.name).setAutostart(1),
            None,  # undefine (above, in reverse) drops the autostart link with the domain
        )
    )
    return steps


def _final_xml(opts: ApplyOptions, vm: VmPlan, desired: Domain) -> str:
    """The XML to define, made when the define step runs: a VF the plan could not place in
    advance has been created by then, and its address is read from its PF's virtfn link."""
    if not sriov.unresolved_vfs(vm):
        return to_xml(desired)
    if opts.host_root is None and not is_local(opts.uri):
        # This machine's /sys is not the host's. (Unreached today: through a remote URI VFs are
        # never created, and ones that exist come with their addresses from libvirt's node devices.)
        raise ApplyError(
            f"{vm.name}: its VFs' PCI addresses are unknown through {opts.uri}; create the VFs on the host"
        )
    resolved = sriov.resolve_vf_addresses(opts.host_root or Path("/"), vm)
    return to_xml(replace(domain_from_plan(resolved, desired.disks), uuid=desired.uuid))


def _needs_detach(ctx: Context, address: str) -> bool:
    dev = ctx.topology.pci(address)
    return dev is not None and dev.driver not in PARKED


def _detach_step(ctx: Context, address: str) -> Step:
    name = nodedev_name(address)
    return Step(
        f"detach {address} from its host driver to vfio-pci",
        lambda: ctx.conn.nodeDeviceLookupByName(name).detachFlags("vfio", 0),
        lambda: ctx.conn.nodeDeviceLookupByName(name).reAttach(),
        f"reattach {address} to its host driver",
    )


def _start_step(ctx: Context, name: str) -> Step:
    return Step(
        f"start {name}",
        lambda: ctx.conn.lookupByName(name).create(),
        lambda: stop_domain(ctx.conn.lookupByName(name)),
        f"stop {name}",
    )


def _stop_step(ctx: Context, name: str) -> Step:
    stopped: list[bool] = []

    def stop() -> None:
        dom = ctx.conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
            stopped.append(True)

    def restart() -> None:
        if stopped:  # a slice that was shut off before this run stays shut off
            ctx.conn.lookupByName(name).create()

    return Step(f"stop {name} to move it", stop, restart, f"restart {name}")


# --- a slice that already exists --------------------------------------------------------

_PIN_FIELDS = ("vcpupins", "emulatorpin", "iothreadpins")


def _differences(desired: Domain, current: Domain) -> list[str]:
    skip = {"plan_json", *_PIN_FIELDS}
    return [f for f in Domain.__dataclass_fields__ if f not in skip and getattr(desired, f) != getattr(current, f)]


def _redefine_steps(ctx: Context, live: LiveDomain, xml: Callable[[], str]) -> list[Step]:
    old_xml = live.inactive_xml
    return [
        Step(
            f"redefine {live.name}",
            lambda: ctx.conn.defineXMLFlags(xml(), VALIDATE),
            lambda: ctx.conn.defineXML(old_xml),
            f"restore the previous definition of {live.name}",
        )
    ]


def _converge_steps(ctx: Context, live: LiveDomain, desired: Domain, allow_move: bool = False) -> list[Step]:
    current = from_xml(live.inactive_xml)
    changed = _differences(desired, current)
    if changed and allow_move:  # e.g. memory: the slice keeps its CPUs but needs a restart
        redefine = _redefine_steps(ctx, live, partial(to_xml, replace(desired, uuid=current.uuid)))
        moved = [_stop_step(ctx, live.name), *redefine, _start_step(ctx, live.name)]
        return moved if live.autostart else [*moved, _autostart_step(ctx, live.name)]
    if changed:
        raise ApplyError(
            f"{live.name} is defined differently from the plan ({', '.join(changed)}); "
            "apply --allow-move stops, redefines and restarts it"
        )
    steps: list[Step] = []
    if any(getattr(desired, f) != getattr(current, f) for f in _PIN_FIELDS):
        steps.extend(_redefine_steps(ctx, live, partial(to_xml, replace(desired, uuid=current.uuid))))
    if live.active:
        steps.extend(_live_pin_steps(ctx, live, desired))
    else:
        steps.append(_start_step(ctx, live.name))
    if not live.autostart:
        steps.append(_autostart_step(ctx, live.name))
    return steps


def _autostart_step(ctx: Context, name: str) -> Step:
    return Step(
        f"set autostart on {name}",
        lambda: ctx.conn.lookupByName(name).setAutostart(1),
        lambda: ctx.conn.lookupByName(name).setAutostart(0),
        f"clear autostart on {name}",
    )


def _pin_step(ctx: Context, name: str, what: str, old: CpuSet | None, new: CpuSet, pin: Callable[..., Any]) -> Step:
    count = host_cpu_count(ctx.conn)
    new_map = cpumap(new, count)  # a CPU the host lacks is refused here, before any change

    def do() -> None:
        pin(lookup(ctx.conn, name), new_map)

    def undo() -> None:
        if old is not None:
            pin(lookup(ctx.conn, name), cpumap(old, count))

    was = old.format() if old is not None else "unpinned"
    return Step(f"re-pin {name} {what} live: {was} -> {new}", do, undo, f"re-pin {name} {what} back to {was}")


def _live_pin_steps(ctx: Context, live: LiveDomain, desired: Domain) -> list[Step]:
    flags = AFFECT_LIVE | AFFECT_CONFIG
    steps = []
    for vcpu, cpus in desired.vcpupins:
        old = live.vcpu_pins[vcpu] if vcpu < len(live.vcpu_pins) else None
        if old != cpus:
            steps.append(
                _pin_step(ctx, live.name, f"vCPU {vcpu}", old, cpus, lambda d, m, v=vcpu: d.pinVcpuFlags(v, m, flags))
            )
    if desired.emulatorpin is not None and live.emulator_pin != desired.emulatorpin:
        steps.append(
            _pin_step(
                ctx, live.name, "emulator", live.emulator_pin, desired.emulatorpin, lambda d, m: d.pinEmulator(m, flags)
            )
        )
    current = dict(live.iothread_pins)
    for iothread, cpus in desired.iothreadpins:
        if current.get(iothread) != cpus:
            steps.append(
                _pin_step(
                    ctx,
                    live.name,
                    f"IOThread {iothread}",
                    current.get(iothread),
                    cpus,
                    lambda d, m, i=iothread: d.pinIOThread(i, m, flags),
                )
            )
    return steps
