"""bmslice apply: diff the plan against the live host and run only the steps that close the gap.

Order per new slice: detach its NICs to vfio, create its disk and seed volumes, define the
domain (libvirt validates the XML against its schema), start it, set autostart. Any
failure undoes everything this run did, in reverse. A slice that already runs is
re-pinned live when only its pins drifted; anything bigger needs --allow-move.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bmslice.apply import pf_link, sriov, storage
from bmslice.apply.context import Context, is_local, load_context
from bmslice.apply.libvirt_conn import AFFECT_CONFIG, AFFECT_LIVE, VALIDATE, cpumap, host_cpu_count, lookup
from bmslice.apply.lock import host_lock
from bmslice.apply.seed import build_seed
from bmslice.apply.transaction import Step, run_steps
from bmslice.cpuset import CpuSet
from bmslice.errors import ApplyError
from bmslice.model.live import LiveDomain
from bmslice.model.plan import VmPlan
from bmslice.model.spec import Spec, VmSpec
from bmslice.model.topology import nodedev_name
from bmslice.plan.cache_ways import host_ways_conflicts
from bmslice.render.domain_model import Disk, Domain, domain_from_plan
from bmslice.render.domain_xml import from_xml, to_xml

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


def disk_name(vm: str) -> str:
    return f"{vm}.qcow2"


def seed_name(vm: str) -> str:
    return f"{vm}-seed.iso"


def apply(spec: Spec, origin: str, opts: ApplyOptions, report: Callable[[str], None]) -> ApplyResult:
    with host_lock(opts.uri):
        ctx = load_context(spec, origin, opts.uri, opts.host_root, opts.allow_move)
        try:
            _preflight(ctx, spec, opts)
            steps: list[Step] = _sriov_host_steps(ctx, opts)
            for vm_spec in spec.vms:
                steps.extend(_steps_for(ctx, vm_spec, ctx.plan.vm(vm_spec.name), opts))
            result = ApplyResult(warnings=list(ctx.plan.warnings), dry_run=opts.dry_run)
            if opts.dry_run:
                result.steps = [s.description for s in steps]
                return result
            result.steps = run_steps(steps, report).done
            return result
        finally:
            ctx.close()


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
        node = ctx.topology.node(vm.numa_nodes[0])
        need = vm.memory_mib * 1024 // vm.hugepage_kib
        free = node.hugepages_of(vm.hugepage_kib).free
        if free < need:
            raise ApplyError(
                f"{vm.name} needs {need} free {vm.hugepage_kib} KiB hugepages on NUMA node {node.id}, "
                f"{free} are free (bmslice host-apply reserves them)"
            )


def _live_kernel(opts: ApplyOptions) -> bool:
    return opts.host_root is None and is_local(opts.uri)


def _sriov_host_steps(ctx: Context, opts: ApplyOptions) -> list[Step]:
    changes = [pf for pf in ctx.plan.host.sriov if pf.numvfs != pf.numvfs_before]
    if not changes:
        return []
    if opts.host_root is None and not is_local(opts.uri):
        raise ApplyError(
            f"creating SR-IOV VFs needs the host's own /sys; run bmslice on {opts.uri}'s host "
            "(the Ansible module does) or create them with host-apply first"
        )
    root = opts.host_root or Path("/")
    steps = sriov.numvfs_steps(root, changes)
    persist = sriov.persist_step(root, ctx.plan.host.sriov)
    return [*steps, persist] if persist is not None else steps


def _disks(ctx: Context, vm_spec: VmSpec, vm: VmPlan) -> tuple[Disk, ...]:
    disks: list[Disk] = []
    if vm_spec.disk is not None:
        base = storage.pool_path(storage.pool(ctx.conn, vm_spec.disk.pool))
        iothread = 1 if vm.iothreads else None
        disks.append(Disk(f"{base}/{disk_name(vm.name)}", "vda", iothread=iothread))
    if vm_spec.cloud_init is not None:
        pool_name = vm_spec.disk.pool if vm_spec.disk is not None else "default"
        base = storage.pool_path(storage.pool(ctx.conn, pool_name))
        disks.append(Disk(f"{base}/{seed_name(vm.name)}", "sda", "cdrom", "raw", "sata", readonly=True))
    return tuple(disks)


def _steps_for(ctx: Context, vm_spec: VmSpec, vm: VmPlan, opts: ApplyOptions) -> list[Step]:
    desired = domain_from_plan(vm, _disks(ctx, vm_spec, vm))
    live = ctx.live.get(vm.name)
    if live is None:
        return _create_steps(ctx, vm_spec, vm, desired, opts)
    if vm.name in ctx.moving:
        return [_stop_step(ctx, vm.name), *_redefine_steps(ctx, live, desired), _start_step(ctx, vm.name)]
    return _converge_steps(ctx, live, desired, opts.allow_move)


# --- a new slice ---------------------------------------------------------------------


def _create_steps(ctx: Context, vm_spec: VmSpec, vm: VmPlan, desired: Domain, opts: ApplyOptions) -> list[Step]:
    steps = [
        _detach_step(ctx, dev.address)
        for dev in vm.devices
        if dev.type == "passthrough" and _needs_detach(ctx, dev.address)
    ]
    steps += pf_link.pf_up_steps(vm.devices, _live_kernel(opts))
    steps += sriov.vf_setting_steps(vm.devices, _live_kernel(opts))
    if vm_spec.disk is not None:
        steps.append(_disk_step(ctx, vm_spec, vm.name))
    if vm_spec.cloud_init is not None:
        steps.append(_seed_step(ctx, vm_spec, vm.name, opts.spec_dir))
    xml = to_xml(desired)
    steps.append(
        Step(
            f"define {vm.name}",
            lambda: ctx.conn.defineXMLFlags(xml, VALIDATE),
            lambda: ctx.conn.lookupByName(vm.name).undefine(),
            f"undefine {vm.name}",
        )
    )
    steps.append(_start_step(ctx, vm.name))
    steps.append(
        Step(
            f"set autostart on {vm.name}",
            lambda: ctx.conn.lookupByName(vm.name).setAutostart(1),
            None,  # undefine (above, in reverse) drops the autostart link with the domain
        )
    )
    return steps


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


def _disk_step(ctx: Context, vm_spec: VmSpec, name: str) -> Step:
    assert vm_spec.disk is not None
    disk = vm_spec.disk
    pool = storage.pool(ctx.conn, disk.pool)
    if storage.find_volume(pool, disk_name(name)) is not None:
        return Step(f"reuse volume {disk.pool}/{disk_name(name)}", lambda: None)
    backing = f" backed by {disk.image}" if disk.image else ""
    return Step(
        f"create volume {disk.pool}/{disk_name(name)} ({disk.size} MiB qcow2{backing})",
        lambda: storage.create_disk(pool, disk_name(name), disk),
        lambda: storage.delete_volume(pool, disk_name(name)),
        f"delete volume {disk.pool}/{disk_name(name)}",
    )


def _seed_step(ctx: Context, vm_spec: VmSpec, name: str, spec_dir: Path) -> Step:
    assert vm_spec.cloud_init is not None
    pool_name = vm_spec.disk.pool if vm_spec.disk is not None else "default"
    pool = storage.pool(ctx.conn, pool_name)
    data = build_seed(name, vm_spec.cloud_init, spec_dir)  # read and checked before any change
    if storage.find_volume(pool, seed_name(name)) is not None:
        return Step(f"reuse seed {pool_name}/{seed_name(name)}", lambda: None)
    return Step(
        f"create cloud-init seed {pool_name}/{seed_name(name)}",
        lambda: storage.upload_seed(ctx.conn, pool, seed_name(name), data),
        lambda: storage.delete_volume(pool, seed_name(name)),
        f"delete seed {pool_name}/{seed_name(name)}",
    )


def _start_step(ctx: Context, name: str) -> Step:
    return Step(
        f"start {name}",
        lambda: ctx.conn.lookupByName(name).create(),
        lambda: ctx.conn.lookupByName(name).destroy(),
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


def _redefine_steps(ctx: Context, live: LiveDomain, desired: Domain) -> list[Step]:
    old_xml = live.inactive_xml
    return [
        Step(
            f"redefine {live.name}",
            lambda: ctx.conn.defineXMLFlags(to_xml(desired), VALIDATE),
            lambda: ctx.conn.defineXML(old_xml),
            f"restore the previous definition of {live.name}",
        )
    ]


def _converge_steps(ctx: Context, live: LiveDomain, desired: Domain, allow_move: bool = False) -> list[Step]:
    current = from_xml(live.inactive_xml)
    changed = _differences(desired, current)
    if changed and allow_move:  # e.g. memory: the slice keeps its CPUs but needs a restart
        redefine = _redefine_steps(ctx, live, replace(desired, uuid=current.uuid))
        moved = [_stop_step(ctx, live.name), *redefine, _start_step(ctx, live.name)]
        return moved if live.autostart else [*moved, _autostart_step(ctx, live.name)]
    if changed:
        raise ApplyError(
            f"{live.name} is defined differently from the plan ({', '.join(changed)}); "
            "apply --allow-move stops, redefines and restarts it"
        )
    steps: list[Step] = []
    if any(getattr(desired, f) != getattr(current, f) for f in _PIN_FIELDS):
        steps.extend(_redefine_steps(ctx, live, replace(desired, uuid=current.uuid)))
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
