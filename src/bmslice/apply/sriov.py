"""SR-IOV on the host: VF count through sysfs, VF MAC/VLAN/trust/spoofchk through netlink.

sysfs and file writes go through tree_files.HostTree below a root directory, so a host tree
(tests, `--host-root`) gets the same writes as the live /sys, none of them can leave the
tree, and none follows a link. Netlink talks to
the running kernel only; on a host tree those steps are reported as skipped, never faked.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

from bmslice.apply.transaction import Step
from bmslice.apply.tree_files import EXEC_MODE, FILE_MODE, FileWrite, HostTree
from bmslice.errors import ApplyError, TopologyError
from bmslice.model.plan import DeviceAssignment, PfPlan, Plan, VmPlan
from bmslice.render.sriov_files import (
    EXECUTABLES,
    UDEV_RULES_PATH,
    VF_HOOK_PATH,
    VF_SETTINGS_PATH,
    sriov_host_files,
)
from bmslice.topology.fsroot import FsRoot
from bmslice.topology.sysfs import PCI_DIR, vf_of


def _numvfs_rel(pf: str) -> str:
    return f"{PCI_DIR}/{pf}/sriov_numvfs"


def write_numvfs(root: Path, pf: str, count: int) -> None:
    """sriov_numvfs is written in place, as the kernel expects (no temp file and rename)."""
    tree = HostTree(root)
    tree.write_in_place(tree.real(_numvfs_rel(pf)), f"{count}\n".encode())


def read_numvfs(root: Path, pf: str) -> int:
    try:
        return FsRoot(root).read_int(_numvfs_rel(pf)) or 0
    except TopologyError as exc:
        raise ApplyError(str(exc)) from None


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


def _file_step(tree: HostTree, rel: str, text: str, what: str) -> Step | None:
    """Write one host file bmslice owns whole (atomically, undone to what was there); None when it is as planned."""
    write = FileWrite.of(tree, rel, text.encode(), EXEC_MODE if rel in EXECUTABLES else FILE_MODE)
    return write.step(f"write {rel} ({what})", f"restore {rel}") if write.changed else None


_PERSISTS = {
    UDEV_RULES_PATH: "VF counts at boot",
    VF_SETTINGS_PATH: "VF trust and spoofchk, for the hook",
    VF_HOOK_PATH: "restores them before each start",
}


def persist_steps(root: Path, plan: Plan) -> list[Step]:
    """What brings the VFs back after a reboot: the udev rule, the VF settings and libvirt's hook."""
    tree = HostTree(root)
    steps = [_file_step(tree, rel, text, _PERSISTS[rel]) for rel, text in sriov_host_files(plan).items()]
    return [step for step in steps if step is not None]


def hook_is_new(root: Path, plan: Plan) -> bool:
    """The plan's VFs need libvirt's hook and the host has none yet, so the running libvirtd has not
    loaded it (it looks for hooks only when it starts or reloads)."""
    return VF_HOOK_PATH in sriov_host_files(plan) and HostTree(root).read(VF_HOOK_PATH) is None


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


def _keep_lines(root: Path, rel: str, drop: Callable[[str], bool]) -> bool:
    """Remove the lines `drop` picks from a file bmslice owns; the file goes when only comments are left.
    True when the file is gone (or was not there)."""
    tree = HostTree(root)
    data = tree.read(rel)
    if data is None:
        return True
    real = tree.real(rel)
    kept = [line for line in data.decode("utf-8", errors="replace").splitlines() if not drop(line)]
    if any(line.strip() and not line.startswith("#") for line in kept):
        tree.write(real, ("\n".join(kept) + "\n").encode(), tree.mode(real))
        return False
    tree.remove(real)
    return True


def drop_udev_rule(root: Path, pf: str) -> None:
    """Remove `pf`'s line from bmslice's udev rules (either form: the PF's interface or, before, its PCI device)."""
    _keep_lines(root, UDEV_RULES_PATH, lambda line: f'KERNELS=="{pf}"' in line or f'KERNEL=="{pf}"' in line)


def drop_vf_settings(root: Path, domains: Collection[str]) -> None:
    """Remove the VF settings of `domains`; with none left, the hook that reads them goes too."""
    if _keep_lines(root, VF_SETTINGS_PATH, lambda line: line.split(" ", 1)[0] in domains):
        tree = HostTree(root)
        tree.remove(tree.real(VF_HOOK_PATH))


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
