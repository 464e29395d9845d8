"""bmslice host-apply: place the host files and runtime settings of a plan below a root.

The only code that writes host configuration. It diffs each file and setting against
what is there and reports a no-op explicitly; each change is then a step of
apply/transaction.py, so a failure, Ctrl-C or SIGTERM puts back everything this run
changed, or says ROLLBACK INCOMPLETE and names what it could not. Files are replaced
atomically (temp file + rename) through the safe writer, following no link. It never runs
the bootloader tool: it says which file it wrote and which command the operator runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bmslice.apply.lock import host_lock
from bmslice.apply.transaction import Step, run_steps
from bmslice.apply.tree_files import EXEC_MODE, FILE_MODE, FileWrite, HostTree
from bmslice.errors import ApplyError, BmsliceError
from bmslice.model.distro import Distro, initramfs_command
from bmslice.model.plan import Plan
from bmslice.model.sizes import GIB_KIB
from bmslice.numbers import decimal
from bmslice.render.exporter_unit import EXPORTER_UNIT, EXPORTER_UNIT_PATH
from bmslice.render.host_files import (
    GIG_MOUNT_POINT,
    GIG_MOUNT_UNIT,
    GRUB_DROPIN,
    KERNEL_ARGS,
    SysfsSetting,
    grubby_command,
)
from bmslice.render.sriov_files import EXECUTABLES, HOOK_RELOAD, VF_HOOK_PATH
from bmslice.render.systemd_units import LIBVIRT_UNITS, UNIT_DIR
from bmslice.topology.fsroot import FsRoot
from bmslice.topology.mounts import read_hugetlbfs_mounts

REBOOT_PENDING = "var/lib/bmslice/reboot-pending"


class Bootloader(StrEnum):
    DEBIAN = "debian"  # update-grub reads /etc/default/grub.d/*.cfg
    RHEL = "rhel"  # BLS entries, changed with grubby
    UNKNOWN = "unknown"


def detect_bootloader(fs: FsRoot) -> Bootloader:
    """RHEL markers first: RHEL has /etc/default/grub too, but its entries are BLS files."""
    if fs.read("etc/redhat-release") is not None or fs.exists("usr/sbin/grubby"):
        return Bootloader.RHEL
    if fs.read("etc/debian_version") is not None or fs.read("etc/default/grub") is not None:
        return Bootloader.DEBIAN
    return Bootloader.UNKNOWN


def bootloader_step(kind: Bootloader, plan: Plan) -> str:
    """The one command (or instruction) that makes the planned kernel args part of the next boot."""
    if kind is Bootloader.DEBIAN:
        return f"run `update-grub` (it reads /{GRUB_DROPIN}), then reboot"
    if kind is Bootloader.RHEL:
        return f"run `{grubby_command(plan)}`, then reboot"
    return f"add the args in /{KERNEL_ARGS} to the bootloader's kernel command line, then reboot"


def bootloader_name(kind: Bootloader) -> str:
    return {
        Bootloader.DEBIAN: "GRUB, Debian/Ubuntu style (update-grub)",
        Bootloader.RHEL: "RHEL style (grubby, BLS entries)",
        Bootloader.UNKNOWN: "unknown (no /etc/default/grub, /etc/debian_version, grubby or /etc/redhat-release)",
    }[kind]


@dataclass(frozen=True)
class Change:
    path: str  # relative to the root
    action: str  # "create" | "update" | "remove" | "set"
    detail: str = ""

    def line(self) -> str:
        """The step's line, `create /etc/x` or `set /sys/... (0 -> 512 (...))`; after "would " in a dry run."""
        return f"{self.action} /{self.path}{f' ({self.detail})' if self.detail else ''}"


@dataclass
class HostApplyResult:
    root: Path
    bootloader: Bootloader
    changes: list[Change] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    reboot_pending: tuple[str, ...] = ()  # planned kernel args not in proc/cmdline
    next_steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False


def reboot_note(plan: Plan) -> str:
    return "# Written by bmslice host-apply: these planned kernel args are not in /proc/cmdline yet.\n" + "".join(
        f"{arg}\n" for arg in plan.host.missing_kernel_args
    )


def _current_int(fs: FsRoot, rel: str) -> int | None:
    text = fs.read_line(rel)
    return decimal(text) if text is not None else None


def _setting_path(fs: FsRoot, setting: SysfsSetting) -> str:
    """A kernel without NUMA has one pool, under /sys/kernel/mm/hugepages."""
    if fs.read(setting.path) is None and "/node0/" in setting.path and not fs.is_dir("sys/devices/system/node"):
        return "sys/kernel/mm/hugepages/" + setting.path.rsplit("/hugepages/", 1)[1]
    return setting.path


class _Changes:
    """Diffs the plan against the host (reads only) and makes a step of each change."""

    def __init__(self, tree: HostTree, result: HostApplyResult) -> None:
        self.tree = tree
        self.result = result
        self.steps: list[Step] = []

    def _add(self, change: Change, step: Step) -> None:
        self.result.changes.append(change)
        self.steps.append(step)

    def _step(self, change: Change, do: Callable[[], object], undo: Callable[[], object]) -> None:
        self._add(change, Step(change.line(), do, undo, f"restore /{change.path}"))

    def place(self, rel: str, text: str) -> None:
        write = FileWrite.of(self.tree, rel, text.encode(), EXEC_MODE if rel in EXECUTABLES else FILE_MODE)
        if not write.changed:
            self.result.unchanged.append(rel)
            return
        detail = f"mode {write.old_mode:o} -> {write.mode:o}" if write.old == write.data else ""
        change = Change(rel, "create" if write.old is None else "update", detail)
        self._add(change, write.step(change.line(), f"restore /{rel}"))

    def remove(self, rel: str) -> None:
        old = self.tree.read(rel)
        if old is None:
            return
        real = self.tree.real(rel)
        mode = self.tree.mode(real)
        self._step(
            Change(rel, "remove", "the planned kernel args are all active"),
            lambda: self.tree.remove(real),
            lambda: self.tree.write(real, old, mode),
        )

    def set(self, setting: SysfsSetting) -> None:
        fs = self.tree.fs
        rel = _setting_path(fs, setting)
        current = _current_int(fs, rel)
        if current is None:
            raise ApplyError(f"cannot set {setting.what}: /{rel} does not exist or is unreadable")
        if current >= setting.value if setting.minimum else current == setting.value:
            self.result.unchanged.append(rel)
            return
        real = self.tree.real(rel)

        def do() -> None:
            if (now := _current_int(fs, rel)) != current:  # set meanwhile: the undo would put back a stale value
                raise ApplyError(f"/{rel} changed after bmslice read it ({current} -> {now}); left as it is")
            self.tree.write_in_place(real, f"{setting.value}\n".encode())
            got = _current_int(fs, rel)
            if got is not None and got < setting.value:
                self.result.warnings.append(
                    f"{setting.what}: asked for {setting.value}, the kernel gave {got} (memory too fragmented): "
                    "reserve them at boot with hugepages= instead"
                )

        self._step(
            Change(rel, "set", f"{current} -> {setting.value} ({setting.what})"),
            do,
            lambda: self.tree.write_in_place(real, f"{current}\n".encode()),
        )


HOST_FILES_LEFT = "what is named was not put back; host-apply again finishes the plan"


def apply_host(
    plan: Plan,
    files: Mapping[str, str],
    settings: Sequence[SysfsSetting],
    root: Path,
    dry_run: bool = False,
    distro: Distro = Distro.UNKNOWN,
    report: Callable[[str], None] = lambda _line: None,
    record_reboot: bool = True,
) -> HostApplyResult:
    """Place `files` and `settings` below `root`; record or clear "reboot pending" (unless
    `record_reboot` is False: a run that places only some files, such as the exporter's unit).

    `distro` (the host's, from its os-release) names the command that rebuilds its initramfs.
    `report` hears each change as it is made (`Change.line`) and each undo.

    Raises ApplyError (after putting back whatever this run changed) when a write fails or
    SIGINT/SIGTERM arrives.
    """
    if not root.is_dir():
        raise ApplyError(f"--host-root {root}: no such directory")
    fs = FsRoot(root)
    result = HostApplyResult(root=root, bootloader=detect_bootloader(fs), dry_run=dry_run)
    if result.bootloader is Bootloader.DEBIAN and fs.read("etc/default/grub") is None:
        result.warnings.append(
            f"no /etc/default/grub: this host may not boot with GRUB; give the args in /{KERNEL_ARGS} to its bootloader"
        )
    result.reboot_pending = plan.host.missing_kernel_args
    if dry_run:
        try:
            _changes(HostTree(root), result, plan, files, settings, record_reboot)
        except (OSError, BmsliceError) as exc:
            raise ApplyError(f"host-apply --dry-run: {_reason(exc, root)}") from None
    else:
        with host_lock(f"host-root:{root.resolve()}"):
            try:
                steps = _changes(HostTree(root), result, plan, files, settings, record_reboot)
            except (OSError, BmsliceError) as exc:
                raise ApplyError(f"host-apply failed: {_reason(exc, root)}; nothing was left changed") from None
            try:
                run_steps(steps, report, left=HOST_FILES_LEFT)
            except ApplyError as exc:
                message = str(exc)
                raise ApplyError(
                    f"host-apply {message}" if message.startswith("interrupted") else f"host-apply failed: {message}"
                ) from None
    _next_steps(plan, result, distro, read_hugetlbfs_mounts(fs))
    return result


def _reason(exc: OSError | BmsliceError, root: Path) -> str:
    return str(exc) if isinstance(exc, BmsliceError) else f"{exc.filename or root}: {exc.strerror or exc}"


def _changes(
    tree: HostTree,
    result: HostApplyResult,
    plan: Plan,
    files: Mapping[str, str],
    settings: Sequence[SysfsSetting],
    record_reboot: bool,
) -> list[Step]:
    """The steps that make the host as planned; reads only, so a dry run is this and nothing more."""
    changes = _Changes(tree, result)
    for rel, text in files.items():
        changes.place(rel, text)
    for setting in settings:
        changes.set(setting)
    if not record_reboot:
        return changes.steps
    if plan.host.missing_kernel_args:
        changes.place(REBOOT_PENDING, reboot_note(plan))
    else:
        changes.remove(REBOOT_PENDING)
    return changes.steps


def _next_steps(plan: Plan, result: HostApplyResult, distro: Distro, mounts: dict[int, tuple[str, ...]] | None) -> None:
    touched = {c.path for c in result.changes}
    if result.reboot_pending:
        result.next_steps.append(
            f"bootloader not touched: {bootloader_step(result.bootloader, plan)} "
            f"to activate {' '.join(result.reboot_pending)}"
        )
    if any(p.startswith("etc/systemd/") for p in touched):
        result.next_steps.append(
            "run `systemctl daemon-reload` (slice CPU limits, CPUAffinity, irqbalance drop-in, boot-time hugepages)"
        )
    if any(p.startswith("etc/systemd/") and p != EXPORTER_UNIT_PATH for p in touched):
        result.next_steps.append("run `systemctl try-restart irqbalance.service` (new ban list)")
    if EXPORTER_UNIT_PATH in touched:
        result.next_steps.append(
            f"run `systemctl enable --now {EXPORTER_UNIT}` to serve the metrics (or `systemctl try-restart "
            f"{EXPORTER_UNIT}` if it runs)"
        )
    gig_mounted = mounts is not None and bool(mounts.get(GIB_KIB))
    if f"{UNIT_DIR}/{GIG_MOUNT_UNIT}" in touched and not gig_mounted:
        result.next_steps.append(
            f"run `systemctl start {GIG_MOUNT_UNIT}`, then `systemctl restart {LIBVIRT_UNITS[0]}` (or "
            f"{LIBVIRT_UNITS[1]}): libvirt looks for hugetlbfs mounts only when it starts, and needs {GIG_MOUNT_POINT} "
            "for 1 GiB pages (running guests keep running); at the next boot both come up in that order"
        )
    if VF_HOOK_PATH in touched:
        result.next_steps.append(HOOK_RELOAD)
    passthrough = any(d.type == "passthrough" for vm in plan.vms for d in vm.devices)
    if passthrough and any(p.startswith(("etc/modprobe.d/", "etc/modules-load.d/")) for p in touched):
        command = initramfs_command(distro)
        rebuild = f"run `{command}`" if command else "rebuild the initramfs (update-initramfs -u or dracut -f)"
        result.next_steps.append(
            f"{rebuild}: a NIC driver that loads from the initramfs binds its device before vfio-pci's options "
            "in /etc/modprobe.d apply, unless the initramfs holds them too (then reboot)"
        )
