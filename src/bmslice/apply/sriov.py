"""SR-IOV on the host: VF count through sysfs, VF MAC/VLAN/trust/spoofchk through netlink.

sysfs writes go through FsRoot below a root directory, so a host tree (tests, `--host-root`)
gets the same writes as the live /sys, and none of them can leave the tree. Netlink talks to
the running kernel only; on a host tree those steps are reported as skipped, never faked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from bmslice.apply.transaction import Step
from bmslice.apply.tree_files import make_dirs, remove_dirs, write_atomic, write_in_place
from bmslice.errors import ApplyError, TopologyError
from bmslice.model.plan import DeviceAssignment, PfPlan, VmPlan
from bmslice.render.sriov_files import UDEV_RULES_PATH, udev_rules
from bmslice.topology.fsroot import FsRoot
from bmslice.topology.sysfs import PCI_DIR, vf_of


def _numvfs_rel(pf: str) -> str:
    return f"{PCI_DIR}/{pf}/sriov_numvfs"


def _confined(fs: FsRoot, rel: str) -> Path:
    """The tree path of `rel`; a symlink loop is a refusal of this step, like any failed write."""
    try:
        return fs.resolve(rel)
    except TopologyError as exc:
        raise ApplyError(str(exc)) from None


def write_numvfs(root: Path, pf: str, count: int) -> None:
    """sriov_numvfs is written in place, as the kernel expects (no temp file and rename)."""
    path = _confined(FsRoot(root), _numvfs_rel(pf))
    try:
        write_in_place(path, f"{count}\n".encode())
    except OSError as exc:
        raise ApplyError(f"cannot set {path} to {count}: {exc.strerror or exc}") from None


def read_numvfs(root: Path, pf: str) -> int:
    try:
        return FsRoot(root).read_int(_numvfs_rel(pf)) or 0
    except TopologyError as exc:
        raise ApplyError(str(exc)) from None


def _read_rules(fs: FsRoot) -> bytes | None:
    try:
        return fs.read_bytes(UDEV_RULES_PATH)
    except TopologyError as exc:
        raise ApplyError(str(exc)) from None
    except OSError as exc:
        raise ApplyError(f"cannot read {fs.display(UDEV_RULES_PATH)}: {exc.strerror or exc}") from None


def numvfs_steps(root: Path, pfs: Sequence[PfPlan]) -> list[Step]:
    """0 -> N only; N -> M goes through 0, and the planner refused it when VFs were in use."""
    steps = []
    for pf in pfs:
        if pf.numvfs == pf.numvfs_before:
            continue
        name = pf.interface or pf.address

        def do(pf: PfPlan = pf) -> None:
            if read_numvfs(root, pf.address):
                write_numvfs(root, pf.address, 0)
            write_numvfs(root, pf.address, pf.numvfs)

        def undo(pf: PfPlan = pf) -> None:
            write_numvfs(root, pf.address, 0)
            if pf.numvfs_before:
                write_numvfs(root, pf.address, pf.numvfs_before)

        steps.append(
            Step(
                f"create {pf.numvfs} VFs on {name} (sriov_numvfs {pf.numvfs_before} -> {pf.numvfs})",
                do,
                undo,
                f"set sriov_numvfs of {name} back to {pf.numvfs_before}",
            )
        )
    return steps


def persist_step(root: Path, pfs: Sequence[PfPlan]) -> Step | None:
    """A udev rule recreates the VFs at boot; bmslice owns the whole rules file."""
    if not pfs:
        return None
    fs = FsRoot(root)
    path = _confined(fs, UDEV_RULES_PATH)
    text = udev_rules(pfs).encode()
    old = _read_rules(fs)
    if old == text:
        return None
    created: list[Path] = []

    def do() -> None:
        make_dirs(path.parent, created)
        write_atomic(path, text)

    def undo() -> None:
        if old is not None:
            write_atomic(path, old)
            return
        path.unlink(missing_ok=True)
        remove_dirs(created)  # leave no empty directory this run made

    return Step(f"write {UDEV_RULES_PATH} (VF counts at boot)", do, undo, f"restore {UDEV_RULES_PATH}")


def set_vf(pf_interface: str, vf: DeviceAssignment, netns: str | None = None) -> None:
    """MAC, VLAN (0 = untagged), trust and spoofchk of one VF, set explicitly (faults.md 23)."""
    from pyroute2 import IPRoute, NetlinkError, NetNS

    ipr = NetNS(netns) if netns else IPRoute()
    try:
        index = ipr.link_lookup(ifname=pf_interface)
        if not index:
            raise ApplyError(f"no interface {pf_interface} for the VFs of {vf.pf}")
        settings = {
            "vf": vf.vf_index,
            "mac": vf.mac,
            "vlan": vf.vlan or 0,
            "trust": int(bool(vf.trust)),
            "spoofchk": int(bool(vf.spoofchk)),
        }
        try:
            ipr.link("set", index=index[0], vf=settings)
        except NetlinkError as exc:
            raise ApplyError(
                f"cannot set VF {vf.vf_index} of {pf_interface}: {exc.args[-1] if exc.args else exc}"
            ) from None
    finally:
        ipr.close()


def vf_setting_steps(devices: Sequence[DeviceAssignment], no_kernel: str | None) -> list[Step]:
    """A step per VF to set; when `no_kernel` says why the host's kernel is out of reach, each is
    listed as skipped with that reason (libvirt still sets MAC and VLAN when it starts the VM)."""
    steps = []
    for dev in devices:
        if dev.type != "vf" or dev.interface is None:
            continue
        what = (
            f"set VF {dev.vf_index} of {dev.interface}: mac {dev.mac}, vlan {dev.vlan or 'untagged'}, "
            f"trust {'on' if dev.trust else 'off'}, spoofchk {'on' if dev.spoofchk else 'off'}"
        )
        if no_kernel is not None:
            steps.append(Step(f"{what} (skipped: {no_kernel})", lambda: None))
            continue
        steps.append(Step(what, partial(set_vf, dev.interface, dev)))
    return steps


def drop_udev_rule(root: Path, pf: str) -> None:
    """Remove `pf`'s line from bmslice's udev rules; the file goes when no PF is left."""
    fs = FsRoot(root)
    data = _read_rules(fs)
    if data is None:
        return
    path = _confined(fs, UDEV_RULES_PATH)
    kept = [line for line in data.decode("utf-8", errors="replace").splitlines() if f'KERNEL=="{pf}"' not in line]
    try:
        if any(not line.startswith("#") for line in kept):
            write_atomic(path, ("\n".join(kept) + "\n").encode())
        else:
            path.unlink()
    except OSError as exc:
        raise ApplyError(f"cannot update {path}: {exc.strerror or exc}") from None


def unresolved_vfs(vm: VmPlan) -> bool:
    """True when the plan could not tell where some VF of `vm` will sit (it exists only after apply made it)."""
    return any(d.type == "vf" and d.address is None for d in vm.devices)


def resolve_vf_addresses(root: Path, vm: VmPlan) -> VmPlan:
    """`vm` with each VF the plan left without an address given the one the kernel chose.

    Run after sriov_numvfs was written: the kernel has created the VFs and links each from
    its PF as virtfn<index>, so (PF, index), stable across runs, names the VF.
    """
    fs = FsRoot(root)
    devices = []
    for dev in vm.devices:
        if dev.type == "vf" and dev.address is None:
            assert dev.pf is not None and dev.vf_index is not None
            try:
                address = vf_of(fs, dev.pf, dev.vf_index)
            except TopologyError as exc:
                raise ApplyError(str(exc)) from None
            if address is None:
                raise ApplyError(
                    f"VF {dev.vf_index} of {dev.interface or dev.pf} did not appear: "
                    f"no {fs.display(f'{PCI_DIR}/{dev.pf}/virtfn{dev.vf_index}')} after sriov_numvfs was set"
                )
            dev = replace(dev, address=address)
        devices.append(dev)
    return replace(vm, devices=tuple(devices))
