"""Start, reach and stop a lab: one QEMU process per lab name, a state directory, a job mailbox.

State lives in `<state>/<name>/` (default /run/bmslice/lab, gone at the machine's reboot):
`lab.json` (shape, pids, kernel args), `console.log` (the lab's serial console), and
`share/`, the writable 9p share the lab mounts at /mnt/bmslice-lab. A job is a directory
`share/jobs/<id>/` holding `cmd` (a shell script), `timeout` and, last, `go`; the lab's
stage 2 runs it under `timeout` and writes `out`, `err` and finally `rc`.

Every process bmslice starts here runs under `timeout` (the lab's TTL), in a session of
its own, and is stopped by `down` or on any failure of `up`; before signalling a pid it
checks the process is still this lab's (its QEMU name and pid file, both whole:
`processes.py`), so it never kills what it did not start.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bmslice.errors import LabError
from bmslice.lab import processes
from bmslice.lab.assets import Assets, missing_libraries
from bmslice.lab.boot_files import build_initramfs, guest_script
from bmslice.lab.qemu_cmdline import BootOptions, LabFiles, kernel_cmdline, qemu_command
from bmslice.lab.shape import LAB_NAME_RE, LabShape
from bmslice.lab.state import STATE_ROOT, LabDir, LabInfo, LabStateError, read_info, write_info
from bmslice.lab.units import LIBVIRT_UNITS, lab_units

SHARE_MOUNT = "/mnt/bmslice-lab"
MACHINE_LIBVIRTD_UNIT = Path("/lib/systemd/system/libvirtd.service")
_POLL_S = 0.25
DRAIN_CHUNK = 1 << 20  # what one read of a job's output takes

Say = Callable[[str], None]


def running_or_refuse(name: str, state_root: Path = STATE_ROOT) -> LabInfo:
    info = running(LabDir.of(name, state_root))
    if info is None:
        raise LabError(f"lab {name} is not up; `bmslice lab up --name {name}` first")
    return info


def running(lab: LabDir) -> LabInfo | None:
    """The lab's state when its QEMU runs; None when it is not up; LabError when its state is unusable."""
    info = read_info(lab)
    return info if info is not None and processes.is_lab_process(info.wrapper_pid, lab) else None


# --- up ---------------------------------------------------------------------------------


def refuse_if_up(name: str, state_root: Path = STATE_ROOT) -> None:
    """Before `up` fetches or prints anything: a lab of this name runs, or left state nobody can read."""
    lab = LabDir.of(name, state_root)
    if processes.find(lab, read_info(lab)) is not None:
        raise LabError(f"lab {lab.name} is already up; `bmslice lab down --name {lab.name}` first")


def _prepare_dir(lab: LabDir, hostname: str, libvirtd: bool, boot: BootOptions, assets: Assets) -> None:
    refuse_if_up(lab.name, lab.path.parent)
    _remove_state(lab)
    lab.jobs.mkdir(parents=True)
    for script in ("stage2.sh", "prepare.sh", "jobs.sh"):
        (lab.share / script).write_text(guest_script(script))
    (lab.share / "hostname").write_text(hostname + "\n")
    if libvirtd:
        (lab.share / "with-libvirtd").touch()
    if boot.systemd:
        (lab.share / "systemd").mkdir()
        for unit, text in lab_units(libvirtd).items():
            (lab.share / "systemd" / unit).write_text(text)
        if libvirtd and not MACHINE_LIBVIRTD_UNIT.exists():
            for unit in LIBVIRT_UNITS:
                shutil.copyfile(assets.root / "lib/systemd/system" / unit, lab.share / "systemd" / unit)
        _make_root_disk(lab.root_disk, boot.disk_mib)


def _make_root_disk(path: Path, size_mib: int) -> None:
    """A sparse raw image with an empty ext4: the overlay's upper layer, kept across reboots."""
    mkfs = shutil.which("mkfs.ext4")
    if mkfs is None:
        raise LabError("a lab with a root disk needs mkfs.ext4 (apt-get install e2fsprogs)")
    with path.open("xb") as image:
        image.truncate(size_mib << 20)
    done = subprocess.run(
        [mkfs, "-q", "-F", "-L", "bmslice-lab", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise LabError(f"mkfs.ext4 {path} failed: {(done.stderr or done.stdout).strip()[-300:]}")


def _files(lab: LabDir, assets: Assets, boot: BootOptions) -> LabFiles:
    return LabFiles(
        qemu_prefix=assets.root,
        kernel=assets.kernel,
        initrd=lab.path / "initrd.img",
        share=lab.share,
        console=lab.console,
        pidfile=lab.pidfile,
        root_disk=lab.root_disk if boot.systemd else None,
    )


def up(
    name: str,
    shape: LabShape,
    assets: Assets,
    *,
    boot: BootOptions | None = None,
    ttl_s: int = 3600,
    boot_timeout_s: int = 300,
    libvirtd: bool = True,
    scaled_down: tuple[str, ...] = (),
    state_root: Path = STATE_ROOT,
    say: Say = lambda _l: None,
) -> LabInfo:
    """Boot the lab and wait until it serves jobs; on any failure nothing of it is left running."""
    boot = boot or BootOptions()
    lab = LabDir.of(name, state_root)
    files = _files(lab, assets, boot)
    missing = missing_libraries(files.qemu)
    if missing:
        raise LabError(f"QEMU 10 needs libraries this machine lacks: {', '.join(missing)} (apt-get install them)")
    _prepare_dir(lab, name, libvirtd, boot, assets)
    files.initrd.write_bytes(build_initramfs(assets.busybox, assets.modules, assets.kernel_release))
    info = LabInfo(
        name=name,
        shape=shape,
        kernel_args=kernel_cmdline(shape, boot.extra_kernel_args, boot.systemd),
        wrapper_pid=2,  # replaced by the wrapper's pid once it runs
        started=time.time(),
        ttl_s=ttl_s,
        versions={p.package: p.version for p in assets.packages},
        scaled_down=scaled_down,
        boot=boot,
    )
    return _boot(lab, files, info, boot_timeout_s, say, keep_meta=False)


def _boot(lab: LabDir, files: LabFiles, info: LabInfo, timeout_s: int, say: Say, keep_meta: bool) -> LabInfo:
    """Start the lab's QEMU and wait until it serves jobs; on any failure stop it again."""
    argv, env = qemu_command(info.shape, files, lab.name, info.ttl_s, info.boot)
    with (lab.path / "qemu.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    info = replace(info, wrapper_pid=proc.pid)
    write_info(lab, info)
    # SIGTERM while booting ends like Ctrl-C: the half-booted lab is stopped, not left to its TTL.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _wait_ready(lab, proc, timeout_s, say)
    except BaseException:
        processes.stop(processes.LabProcess(proc.pid, group=True), lab, 5)
        proc.wait()
        if not keep_meta:
            lab.meta.unlink(missing_ok=True)  # not up; its console log stays for a look until the next `up`
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return info


def rebootable(name: str, state_root: Path = STATE_ROOT) -> LabInfo:
    """The lab's state, when it runs and keeps its changes on a root disk."""
    info = running_or_refuse(name, state_root)
    if not info.boot.systemd:
        raise LabError(
            f"lab {name} keeps its changes in memory, so a reboot would lose them: boot it with --systemd "
            "(a root disk kept across reboots)"
        )
    return info


def reboot(
    name: str,
    assets: Assets,
    extra_kernel_args: tuple[str, ...] | None = None,
    *,
    boot_timeout_s: int = 300,
    grace_s: float = 180,
    state_root: Path = STATE_ROOT,
    say: Say = lambda _l: None,
) -> LabInfo:
    """Power the lab off cleanly and boot it again from its root disk (with other kernel args).

    Only a lab on a root disk (`--systemd`) keeps what it wrote: one in memory would come back
    empty, which is `lab down` and `lab up`, not a reboot.
    """
    lab = LabDir.of(name, state_root)
    info = rebootable(name, state_root)
    process = processes.LabProcess(info.wrapper_pid, group=True)
    say("powering off")
    if not _power_off(lab, process, grace_s):
        say(f"the lab did not power off within {grace_s:.0f} s; stopping its QEMU (its disk may need a journal replay)")
        processes.stop(process, lab, 10)
    for stale in ("ready", "poweroff"):
        (lab.share / stale).unlink(missing_ok=True)
    boot = info.boot if extra_kernel_args is None else replace(info.boot, extra_kernel_args=extra_kernel_args)
    again = replace(
        info,
        boot=boot,
        kernel_args=kernel_cmdline(info.shape, boot.extra_kernel_args, boot.systemd),
        started=time.time(),
    )
    return _boot(lab, _files(lab, assets, boot), again, boot_timeout_s, say, keep_meta=True)


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _wait_ready(lab: LabDir, proc: subprocess.Popen[bytes], timeout_s: int, say: Say) -> None:
    start = time.monotonic()
    next_note = start + 15
    while not (lab.share / "ready").exists():
        if proc.poll() is not None:
            log = (lab.path / "qemu.log").read_text(errors="replace").strip().splitlines()
            why = log[-1] if log else f"exit {proc.returncode}"
            raise LabError(f"the lab's QEMU stopped while booting: {why}", f"console tail:\n{lab.console_tail()}")
        now = time.monotonic()
        if now - start > timeout_s:
            raise LabError(f"the lab did not come up within {timeout_s} s", f"console tail:\n{lab.console_tail()}")
        if now >= next_note:
            last = lab.console_tail(1).strip()
            say(f"booting ({now - start:.0f} s): {last[:100]}")
            next_note = now + 15
        time.sleep(_POLL_S)
    say(f"up in {time.monotonic() - start:.0f} s")


# --- down -------------------------------------------------------------------------------


def peak_memory_mib(lab: LabDir) -> int | None:
    """The most memory the lab's QEMU has held (VmHWM), while it runs."""
    pid = processes.qemu_pid(lab)
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return None


def _mailbox(path: Path) -> None:
    """An empty file in the share, made afresh: the guest may have left a link there (to /etc/nologin,
    say), which is removed, never followed."""
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))


def _shared_dir(path: Path) -> Path:
    """A directory of the share the guest can write: refused when it is a link (it would lead the
    host's writes out of the share)."""
    if path.is_symlink() or not path.is_dir():
        raise LabError(f"{path} is not a directory (a link or other file the lab's guest put there); lab down and up")
    return path


def _power_off(lab: LabDir, process: processes.LabProcess, grace_s: float) -> bool:
    """Ask the lab to power off (its job mailbox) and wait up to `grace_s`: whether it did."""
    _mailbox(lab.share / "poweroff")
    deadline = time.monotonic() + grace_s
    while processes.alive(process, lab) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    return not processes.alive(process, lab)


def down(name: str, state_root: Path = STATE_ROOT, grace_s: float = 30, say: Say = lambda _l: None) -> bool:
    """Power the lab off (cleanly if it answers, by signal if not) and remove its state. False: it was not up.

    A state directory whose lab.json is unusable (hand-edited, cut short, another version's)
    or whose QEMU is gone is cleared, saying so; a QEMU of this lab that still runs is found
    through its pid file and stopped first.
    """
    lab = LabDir.of(name, state_root)
    try:
        info, problem = read_info(lab), None
    except LabStateError as exc:
        info, problem = None, exc.problem
    process = processes.find(lab, info)
    if problem:
        say(f"{problem}; clearing it")
    if process is None:
        if lab.path.exists() or lab.path.is_symlink():
            if info is not None:
                say(f"lab {name}'s QEMU no longer runs (pid {info.wrapper_pid}); removing its stale state")
            elif not problem:
                say(f"lab {name} left a state directory without lab.json; removing it")
            _remove_state(lab)
        return False
    peak = peak_memory_mib(lab)
    if peak is not None:
        ran = f"; it ran {time.time() - info.started:.0f} s" if info is not None else ""
        say(f"the lab's QEMU held at most {peak} MiB{ran}")
    if not _power_off(lab, process, grace_s):
        say(f"the lab did not power off within {grace_s:.0f} s; stopping its QEMU")
    processes.stop(process, lab, 10)
    _remove_state(lab)
    return True


def _remove_state(lab: LabDir) -> None:
    if lab.path.is_symlink():  # bmslice makes directories here, never links: remove the link only
        lab.path.unlink()
    else:
        shutil.rmtree(lab.path, ignore_errors=True)


def labs(state_root: Path = STATE_ROOT) -> list[tuple[LabInfo, bool]]:
    """Every lab with state on this machine, and whether its QEMU still runs; LabError for an unusable one."""
    found = []
    for path in sorted(state_root.glob("*/lab.json")) if state_root.is_dir() else []:
        if not LAB_NAME_RE.fullmatch(path.parent.name):  # not a directory bmslice made
            continue
        lab = LabDir(path.parent.name, path.parent)
        info = read_info(lab)
        if info is not None:
            found.append((info, processes.is_lab_process(info.wrapper_pid, lab)))
    return found


# --- jobs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    argv: tuple[str, ...] = ()
    script: bytes | None = None  # a script's content, run with `argv` as its arguments
    cwd: str | None = None  # None: the job's own directory, where `files` are
    timeout_s: int = 600
    files: tuple[tuple[str, bytes], ...] = ()  # (name, content) placed in the job's directory
    fresh: bool = False  # drop the lab's cache of the machine's files first (they changed since boot)


def _job_command(job: Job, job_dir: str) -> str:
    cd = f"cd {shlex.quote(job.cwd or job_dir + '/files')} || exit 125\n"
    if job.script is None:
        return cd + f"exec {shlex.join(job.argv)}\n"
    script = f"{job_dir}/script"
    if job.script.startswith(b"#!"):  # its own interpreter
        return cd + f"chmod +x {script}\nexec {shlex.join((script, *job.argv))}\n"
    return cd + f"exec {shlex.join(('/bin/sh', script, *job.argv))}\n"


def run(
    name: str,
    job: Job,
    on_out: Callable[[bytes], None],
    on_err: Callable[[bytes], None],
    *,
    heartbeat_s: float = 0,
    state_root: Path = STATE_ROOT,
    say: Say = lambda _l: None,
) -> int:
    """Run `job` in the lab, streaming its output; return its exit code (124: it timed out)."""
    lab = LabDir.of(name, state_root)
    info = running_or_refuse(name, state_root)
    job_id = f"{time.time_ns()}-{os.getpid()}"
    host_dir = _shared_dir(lab.jobs) / job_id
    guest_dir = f"{SHARE_MOUNT}/jobs/{job_id}"
    host_dir.mkdir()
    try:
        (host_dir / "files").mkdir()
        for file_name, content in job.files:
            (host_dir / "files" / file_name).write_bytes(content)
        if job.script is not None:
            (host_dir / "script").write_bytes(job.script)
        (host_dir / "cmd").write_text(_job_command(job, guest_dir))
        (host_dir / "timeout").write_text(f"{job.timeout_s}\n")
        if job.fresh:
            (host_dir / "fresh").touch()
        (host_dir / "go").touch()
        return _follow(lab, info, host_dir, job, on_out, on_err, heartbeat_s, say)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


def _read_guest_file(path: Path, offset: int = 0, limit: int = DRAIN_CHUNK) -> bytes | None:
    """At most `limit` bytes from `offset` of a file the lab's guest wrote in the share: a regular
    file only, no link followed (the guest may plant a FIFO, or a link to /dev/zero or a host file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.pread(fd, limit, offset) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _drain(path: Path, offset: int, sink: Callable[[bytes], None]) -> int:
    """Everything written past `offset`, a chunk at a time; the new offset."""
    while data := _read_guest_file(path, offset):
        sink(data)
        offset += len(data)
        if len(data) < DRAIN_CHUNK:
            break
    return offset


def _follow(
    lab: LabDir,
    info: LabInfo,
    job_dir: Path,
    job: Job,
    on_out: Callable[[bytes], None],
    on_err: Callable[[bytes], None],
    heartbeat_s: float,
    say: Say,
) -> int:
    start = time.monotonic()
    beat = start + heartbeat_s if heartbeat_s else float("inf")
    out = err = 0
    what = " ".join(job.argv)[:80] or "script"
    while True:
        done = (job_dir / "rc").exists()
        out = _drain(job_dir / "out", out, on_out)
        err = _drain(job_dir / "err", err, on_err)
        if done:
            rc = (_read_guest_file(job_dir / "rc", limit=16) or b"").strip()
            if not re.fullmatch(rb"[0-9]{1,3}", rc):
                raise LabError(f"the lab wrote an unreadable exit code for: {what}")
            return int(rc)
        now = time.monotonic()
        if not processes.is_lab_process(info.wrapper_pid, lab):
            raise LabError(f"the lab stopped while running: {what}", f"console tail:\n{lab.console_tail()}")
        if now - start > job.timeout_s + 30:
            raise LabError(f"the lab did not report the end of: {what} ({job.timeout_s} s timeout + 30 s)")
        if now >= beat:
            say(f"still running ({now - start:.0f} s): {what}")
            beat = now + heartbeat_s
        time.sleep(_POLL_S)


def run_simple(
    name: str, argv: Sequence[str], timeout_s: int = 600, state_root: Path = STATE_ROOT
) -> tuple[int, str, str]:
    """Run a command in the lab; (exit code, stdout, stderr) decoded as UTF-8."""
    out: list[bytes] = []
    err: list[bytes] = []
    rc = run(name, Job(tuple(argv), timeout_s=timeout_s), out.append, err.append, state_root=state_root)
    return rc, b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace")
