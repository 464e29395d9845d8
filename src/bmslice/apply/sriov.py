"""SR-IOV on the host: VF count through sysfs, VF MAC/VLAN/trust/spoofchk through netlink.

sysfs writes go through a root directory, so a host tree (tests, `--host-root`) gets the
same writes as the live /sys. Netlink talks to the running kernel only; on a host tree
those steps are reported as skipped, never faked.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from bmslice.apply.transaction import Step
from bmslice.errors import ApplyError
from bmslice.model.plan import DeviceAssignment, PfPlan
from bmslice.render.sriov_files import UDEV_RULES_PATH, udev_rules


def _numvfs_path(root: Path, pf: str) -> Path:
    return root / "sys/bus/pci/devices" / pf / "sriov_numvfs"


def write_numvfs(root: Path, pf: str, count: int) -> None:
    """sriov_numvfs is written in place, as the kernel expects (no temp file and rename)."""
    path = _numvfs_path(root, pf)
    try:
        with path.open("w") as handle:
            handle.write(f"{count}\n")
    except OSError as exc:
        raise ApplyError(f"cannot set {path} to {count}: {exc.strerror or exc}") from None


def read_numvfs(root: Path, pf: str) -> int:
    try:
        return int(_numvfs_path(root, pf).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


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
    path = root / UDEV_RULES_PATH
    text = udev_rules(pfs)
    old = path.read_text() if path.exists() else None
    if old == text:
        return None

    missing_dirs = [d for d in path.relative_to(root).parents if d != Path(".") and not (root / d).exists()]

    def do() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def undo() -> None:
        if old is not None:
            path.write_text(old)
            return
        path.unlink(missing_ok=True)
        for directory in missing_dirs:  # deepest first: leave no empty directory this run made
            (root / directory).rmdir()

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
    path = root / UDEV_RULES_PATH
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if f'KERNEL=="{pf}"' not in line]
    if any(not line.startswith("#") for line in kept):
        path.write_text("\n".join(kept) + "\n")
    else:
        path.unlink()
