"""bmslice destroy: stop and undefine the spec's slices, delete their volumes, give NICs back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bmslice.apply.applier import disk_name, seed_name
from bmslice.apply.context import discover, is_local, recorded_plan
from bmslice.apply.libvirt_conn import LibvirtError, lookup, managed_domains, open_rw, reason
from bmslice.apply.lock import host_lock
from bmslice.apply.sriov import drop_udev_rule, write_numvfs
from bmslice.errors import ApplyError
from bmslice.model.plan import DeviceAssignment
from bmslice.model.spec import Spec
from bmslice.model.topology import nodedev_name
from bmslice.render.domain_xml import from_xml


@dataclass(frozen=True)
class DestroyOptions:
    uri: str
    keep_disks: bool = False
    host_root: Path | None = None


def _delete_volume(conn: Any, path: str) -> None:
    conn.storageVolLookupByPath(path).delete(0)


def _reattach(conn: Any, nodedev: str) -> None:
    conn.nodeDeviceLookupByName(nodedev).reAttach()


def _remove_vfs(root: Path, pf: str) -> None:
    write_numvfs(root, pf, 0)
    drop_udev_rule(root, pf)


def destroy(spec: Spec, opts: DestroyOptions, report: Callable[[str], None]) -> list[str]:
    """Everything done, one line each; slices not defined are reported as such."""
    done: list[str] = []
    failures: list[str] = []

    def step(text: str, action: Callable[[], object]) -> None:
        report(text)
        try:
            action()
            done.append(text)
        except (LibvirtError, ApplyError) as exc:
            failures.append(f"{text}: {reason(exc)}")

    with host_lock(opts.uri):
        topo = discover(opts.uri, opts.host_root)
        conn = open_rw(opts.uri)
        try:
            live = managed_domains(conn)
            released: list[DeviceAssignment] = []
            for vm in reversed(spec.vms):
                current = live.get(vm.name)
                if current is None:
                    report(f"{vm.name}: not defined, nothing to do")
                    continue
                plan = recorded_plan(current)
                dom = lookup(conn, vm.name)
                if dom is None:
                    continue
                if current.active:
                    step(f"stop {vm.name}", dom.destroy)
                step(f"undefine {vm.name}", dom.undefine)
                for disk in from_xml(current.inactive_xml).disks:
                    name = Path(disk.path).name
                    if name == seed_name(vm.name) or (name == disk_name(vm.name) and not opts.keep_disks):
                        step(f"delete volume {disk.path}", partial(_delete_volume, conn, disk.path))
                for dev in plan.devices if plan is not None else ():
                    if dev.type == "vf":
                        released.append(dev)
                        continue
                    now = topo.pci(dev.known_address)
                    if dev.driver in (None, "vfio-pci") or (now is not None and now.driver == dev.driver):
                        continue
                    node = nodedev_name(dev.known_address)
                    step(f"reattach {dev.address} to {dev.driver}", partial(_reattach, conn, node))
            destroyed = {vm.name for vm in spec.vms}
            still_used = {
                d.pf
                for name, dom in live.items()
                if name not in destroyed and (p := recorded_plan(dom)) is not None
                for d in p.devices
                if d.type == "vf"
            }
            for pf in sorted({d.pf for d in released if d.created_vfs and d.pf and d.pf not in still_used}):
                root = opts.host_root or Path("/")
                if opts.host_root is None and not is_local(opts.uri):
                    report(f"VFs of {pf} left in place: remove them on the host (sriov_numvfs 0)")
                    continue
                step(f"remove the VFs bmslice created on {pf} (sriov_numvfs 0)", partial(_remove_vfs, root, pf))
        finally:
            conn.close()
    if failures:
        raise ApplyError("destroy finished with failures: " + "; ".join(failures))
    return done
