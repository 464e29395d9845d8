"""bmslice destroy: stop and undefine the spec's slices, delete their volumes, give NICs back.

Only volumes bmslice can prove it made are deleted (volumes.py): a volume under a slice's
name without bmslice's mark is left in place and named. Volumes that a killed apply left
without a domain are found by name and mark, and removed too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bmslice.apply import storage
from bmslice.apply.context import discover, foreign_domain, held_line, read_slices
from bmslice.apply.libvirt_conn import (
    NO_VOLUME,
    LibvirtError,
    connected,
    host_key,
    libvirt_errors,
    lookup,
    reason,
    stop_domain,
)
from bmslice.apply.lock import host_lock
from bmslice.apply.sriov import drop_udev_rule, drop_vf_settings, write_numvfs
from bmslice.apply.uri import is_local
from bmslice.apply.volumes import Owner, Slot, disk_name, disk_slot, examine, examine_slot, seed_name, seed_slot
from bmslice.errors import ApplyError
from bmslice.model.live import HeldSlice, LiveDomain
from bmslice.model.plan import DeviceAssignment
from bmslice.model.spec import Spec, VmSpec
from bmslice.model.topology import HostTopology, nodedev_name
from bmslice.plan.held import held_vfs
from bmslice.render.domain_xml import from_xml
from bmslice.render.sriov_files import VF_SETTINGS_PATH
from bmslice.safe_text import shown


@dataclass(frozen=True)
class DestroyOptions:
    uri: str
    keep_disks: bool = False
    host_root: Path | None = None
    only: tuple[str, ...] = ()  # these slices of the spec (--vm); () is all of them


Act = Callable[[str, Callable[[], object]], None]


def _volume_at(conn: Any, path: str) -> Any | None:
    try:
        return conn.storageVolLookupByPath(path)
    except LibvirtError as exc:
        if exc.get_error_code() == NO_VOLUME:
            return None
        raise


def _domain_volumes(
    conn: Any, live: LiveDomain, keep_disks: bool, report: Callable[[str], None], readable: bool = True
) -> list[tuple[str, Any]]:
    """The slice's disk and seed volumes that bmslice made, as (path, volume); others are named and kept.

    `readable`: the slice's metadata reads back. Only then does the domain listing a blank,
    unmarked volume make it bmslice's unfinished one (volumes.py); a held slice's volumes go
    only when they carry bmslice's mark."""
    ours = []
    for disk in from_xml(live.inactive_xml).disks:
        name = Path(disk.path).name
        if name != seed_name(live.name) and (name != disk_name(live.name) or keep_disks):
            continue
        vol = _volume_at(conn, disk.path)
        if vol is None:
            report(f"volume {disk.path}: already gone")
            continue
        slot = Slot(live.name, vol.storagePoolLookupByVolume().name(), vol.name())
        found = examine(vol, slot, listed=readable)
        if found.owner is Owner.FOREIGN:
            report(f"keep volume {disk.path}: bmslice did not create it ({found.why})")
            continue
        ours.append((disk.path, vol))
    return ours


def _leftover_volumes(conn: Any, vm: VmSpec, keep_disks: bool, act: Act, report: Callable[[str], None]) -> None:
    """Volumes of a slice with no domain: what a killed apply left. Only bmslice's own go."""
    slots = [s for s in (None if keep_disks else disk_slot(vm), seed_slot(vm)) if s is not None]
    for slot in slots:
        try:
            pool = storage.pool(conn, slot.pool)
        except ApplyError as exc:
            report(f"{slot.name}: not looked for ({exc})")
            continue
        found = examine_slot(pool, slot, listed=False)
        if found.owner is Owner.OURS and found.vol is not None:
            act(
                f"delete volume {found.vol.path()} (its domain is gone)",
                partial(storage.delete_volume, found.vol),
            )
        elif found.owner is not Owner.MISSING:
            report(f"keep volume {slot.label}: bmslice did not create it ({found.why})")


def _reattach(conn: Any, nodedev: str) -> None:
    conn.nodeDeviceLookupByName(nodedev).reAttach()


def _remove_vfs(root: Path, pf: str) -> None:
    write_numvfs(root, pf, 0)
    drop_udev_rule(root, pf)


def _targets(spec: Spec, only: tuple[str, ...]) -> list[VmSpec]:
    unknown = [name for name in only if name not in {vm.name for vm in spec.vms}]
    if unknown:
        raise ApplyError(f"--vm {shown(unknown[0])}: the spec names no such VM")
    return [vm for vm in spec.vms if not only or vm.name in only]


def _held_devices(topo: HostTopology, held: HeldSlice, report: Callable[[str], None]) -> bool:
    """Say what a held slice's devices are left as; True when it had VFs (its hook settings go)."""
    had_vfs = False
    for address in held.devices:
        dev = topo.pci(address)
        if dev is not None and dev.physfn:
            had_vfs = True
            report(f"VF {address} of {held.name} stays made on its PF (its metadata is unreadable)")
        else:
            report(
                f"{address} stays on its current driver: {held.name}'s metadata is unreadable, so its host driver is "
                f"unknown (`virsh nodedev-reattach {nodedev_name(address)}` gives it back)"
            )
    return had_vfs


def destroy(
    spec: Spec, opts: DestroyOptions, report: Callable[[str], None], warn: Callable[[str], None] | None = None
) -> list[str]:
    """Everything done, one line each; slices not defined are reported as such.

    A slice whose metadata is unreadable goes too, by what libvirt still says about it: its
    domain, and its volumes that carry bmslice's mark; devices whose host driver only the
    metadata knew stay where they are, named. Such slices of other specs get one `warn` line.
    """
    done: list[str] = []
    failures: list[str] = []
    targets = _targets(spec, opts.only)

    def step(text: str, action: Callable[[], object]) -> None:
        report(text)
        try:
            action()
            done.append(text)
        except (LibvirtError, ApplyError) as exc:
            failures.append(f"{text}: {reason(exc)}")

    with libvirt_errors(opts.uri), connected(opts.uri) as conn, host_lock(host_key(conn), opts.uri):
        topo = discover(opts.uri, opts.host_root)
        slices = read_slices(conn, topo)
        destroyed = {vm.name for vm in targets}
        for name, held in slices.held.items():
            if name not in destroyed and warn is not None:
                warn(held_line(held))
        released: list[DeviceAssignment] = []
        with_vfs: list[str] = []  # destroyed slices that had VFs: their settings go from the hook's file
        for vm in reversed(targets):
            current = slices.live.get(vm.name)
            if current is None and lookup(conn, vm.name) is not None:  # its volumes may be in that domain's use
                report(f"{vm.name}: {foreign_domain(vm.name)}; left as it is, with its volumes")
                continue
            if current is None:
                report(f"{vm.name}: not defined")
                _leftover_volumes(conn, vm, opts.keep_disks, step, report)
                continue
            plan = slices.recorded.get(vm.name)
            dom = lookup(conn, vm.name)
            if dom is None:
                continue
            # judged while the domain names them
            volumes = _domain_volumes(conn, current, opts.keep_disks, report, readable=plan is not None)
            persistent = bool(dom.isPersistent())  # a transient domain is gone once stopped
            if current.active:
                step(f"stop {vm.name}", partial(stop_domain, dom))
            if persistent:
                step(f"undefine {vm.name}", dom.undefine)
            else:
                report(f"{vm.name} was transient (never defined): stopping it removed it")
            for path, vol in volumes:
                step(f"delete volume {path}", partial(storage.delete_volume, vol))
            if (unreadable := slices.held.get(vm.name)) is not None and _held_devices(topo, unreadable, report):
                with_vfs.append(vm.name)
            for dev in plan.devices if plan is not None else ():
                if dev.type == "vf":
                    released.append(dev)
                    with_vfs.append(vm.name)
                    continue
                now = topo.pci(dev.known_address)
                if dev.driver in (None, "vfio-pci") or (now is not None and now.driver == dev.driver):
                    continue
                node = nodedev_name(dev.known_address)
                step(f"reattach {dev.address} to {dev.driver}", partial(_reattach, conn, node))
        still_used = {
            d.pf for name, p in slices.recorded.items() if name not in destroyed for d in p.devices if d.type == "vf"
        }
        still_used |= {pf for name, h in slices.held.items() if name not in destroyed for pf in held_vfs(topo, [h])}
        for pf in sorted({d.pf for d in released if d.created_vfs and d.pf and d.pf not in still_used}):
            root = opts.host_root or Path("/")
            if opts.host_root is None and not is_local(opts.uri):
                report(f"VFs of {pf} left in place: remove them on the host (sriov_numvfs 0)")
                continue
            step(f"remove the VFs bmslice created on {pf} (sriov_numvfs 0)", partial(_remove_vfs, root, pf))
        if with_vfs and (opts.host_root is not None or is_local(opts.uri)):
            names = sorted(set(with_vfs))
            step(
                f"drop the VF settings of {', '.join(names)} from /{VF_SETTINGS_PATH}",
                partial(drop_vf_settings, opts.host_root or Path("/"), names),
            )
    if failures:
        raise ApplyError("destroy finished with failures: " + "; ".join(failures))
    return done
