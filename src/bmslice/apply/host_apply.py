"""bmslice host-apply: place the host files and runtime settings of a plan below a root.

The only code that writes host configuration. It diffs each file and setting against
what is there and reports a no-op explicitly; files are replaced atomically (temp file +
rename); a failure puts back everything this run changed. It never runs the bootloader
tool: it says which file it wrote and which command the operator runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from bmslice.apply.lock import host_lock
from bmslice.apply.tree_files import (
    EXEC_MODE,
    FILE_MODE,
    file_mode,
    make_dirs,
    remove_dirs,
    write_atomic,
    write_in_place,
)
from bmslice.errors import ApplyError, BmsliceError
from bmslice.model.distro import Distro, initramfs_command
from bmslice.model.plan import Plan
from bmslice.model.sizes import GIB_KIB
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


@dataclass
class _Undo:
    """What to put back if a later step fails: old file contents and mode (None: did not exist), dirs made."""

    files: list[tuple[Path, bytes | None, int]] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)

    def run(self) -> list[str]:
        problems = []
        for path, old, mode in reversed(self.files):
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                elif _is_sysfs(path):
                    write_in_place(path, old)
                else:
                    write_atomic(path, old, mode)
            except (OSError, ApplyError) as exc:
                problems.append(f"{path}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc))
        remove_dirs(self.dirs)
        return problems


def _is_sysfs(path: Path) -> bool:
    return "/sys/" in f"/{path}/"


def _read_bytes(fs: FsRoot, rel: str) -> bytes | None:
    try:
        return fs.read_bytes(rel)
    except IsADirectoryError:
        raise ApplyError(f"{fs.display(rel)} is a directory, not a file; remove it and run host-apply again") from None


def _current_int(fs: FsRoot, rel: str) -> int | None:
    text = fs.read_line(rel)
    return int(text) if text is not None and text.isdigit() else None


def _setting_path(fs: FsRoot, setting: SysfsSetting) -> str:
    """A kernel without NUMA has one pool, under /sys/kernel/mm/hugepages."""
    if fs.read(setting.path) is None and "/node0/" in setting.path and not fs.is_dir("sys/devices/system/node"):
        return "sys/kernel/mm/hugepages/" + setting.path.rsplit("/hugepages/", 1)[1]
    return setting.path


class _Run:
    def __init__(self, fs: FsRoot, result: HostApplyResult) -> None:
        self.fs = fs
        self.result = result
        self.undo = _Undo()

    def place(self, rel: str, text: str) -> None:
        path = self.fs.resolve(rel)
        old = _read_bytes(self.fs, rel)
        new = text.encode()
        mode = EXEC_MODE if rel in EXECUTABLES else FILE_MODE
        old_mode = file_mode(path)
        if old == new and old_mode == mode:
            self.result.unchanged.append(rel)
            return
        detail = f"mode {old_mode:o} -> {mode:o}" if old == new else ""
        self.result.changes.append(Change(rel, "create" if old is None else "update", detail))
        if self.result.dry_run:
            return
        make_dirs(path.parent, self.undo.dirs)
        self.undo.files.append((path, old, old_mode))
        write_atomic(path, new, mode)

    def remove(self, rel: str) -> None:
        path = self.fs.resolve(rel)
        old = _read_bytes(self.fs, rel)
        if old is None:
            return
        self.result.changes.append(Change(rel, "remove", "the planned kernel args are all active"))
        if not self.result.dry_run:
            self.undo.files.append((path, old, file_mode(path)))
            path.unlink()

    def set(self, setting: SysfsSetting) -> None:
        rel = _setting_path(self.fs, setting)
        current = _current_int(self.fs, rel)
        if current is None:
            raise ApplyError(f"cannot set {setting.what}: /{rel} does not exist or is unreadable")
        if current >= setting.value if setting.minimum else current == setting.value:
            self.result.unchanged.append(rel)
            return
        self.result.changes.append(Change(rel, "set", f"{current} -> {setting.value} ({setting.what})"))
        if self.result.dry_run:
            return
        path = self.fs.resolve(rel)
        self.undo.files.append((path, f"{current}\n".encode(), FILE_MODE))
        write_in_place(path, f"{setting.value}\n".encode())
        got = _current_int(self.fs, rel)
        if got is not None and got < setting.value:
            self.result.warnings.append(
                f"{setting.what}: asked for {setting.value}, the kernel gave {got} (memory too fragmented): "
                "reserve them at boot with hugepages= instead"
            )


def apply_host(
    plan: Plan,
    files: Mapping[str, str],
    settings: Sequence[SysfsSetting],
    root: Path,
    dry_run: bool = False,
    distro: Distro = Distro.UNKNOWN,
    record_reboot: bool = True,
) -> HostApplyResult:
    """Place `files` and `settings` below `root`; record or clear "reboot pending" (unless
    `record_reboot` is False: a run that places only some files, such as the exporter's unit).

    `distro` (the host's, from its os-release) names the command that rebuilds its initramfs.

    Raises ApplyError (after putting back whatever this run changed) when a write fails.
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
            _run_all(_Run(fs, result), plan, files, settings, record_reboot)
        except OSError as exc:
            raise ApplyError(f"host-apply --dry-run: {_reason(exc, root)}") from None
    else:
        with host_lock(f"host-root:{root.resolve()}"):
            run = _Run(fs, result)
            try:
                _run_all(run, plan, files, settings, record_reboot)
            except (OSError, BmsliceError) as exc:
                problems = run.undo.run()
                tail = f"; could not put back: {'; '.join(problems)}" if problems else "; nothing was left changed"
                raise ApplyError(f"host-apply failed: {_reason(exc, root)}{tail}") from None
    _next_steps(plan, result, distro, read_hugetlbfs_mounts(fs))
    return result


def _reason(exc: OSError | BmsliceError, root: Path) -> str:
    return str(exc) if isinstance(exc, BmsliceError) else f"{exc.filename or root}: {exc.strerror or exc}"


def _run_all(
    run: _Run, plan: Plan, files: Mapping[str, str], settings: Sequence[SysfsSetting], record_reboot: bool
) -> None:
    for rel, text in files.items():
        run.place(rel, text)
    for setting in settings:
        run.set(setting)
    if not record_reboot:
        return
    if plan.host.missing_kernel_args:
        run.place(REBOOT_PENDING, reboot_note(plan))
    else:
        run.remove(REBOOT_PENDING)


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
