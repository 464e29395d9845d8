"""Start, reach and stop a lab: one QEMU process per lab name, a state directory, a job mailbox.

State lives in `<state>/<name>/` (default /run/bmslice/lab, gone at the machine's reboot):
`lab.json` (shape, pids, kernel args), `console.log` (the lab's serial console), and
`share/`, the writable 9p share the lab mounts at /mnt/bmslice-lab. A job is a directory
`share/jobs/<id>/` holding `cmd` (a shell script), `timeout` and, last, `go`; the lab's
stage 2 runs it under `timeout` and writes `out`, `err` and finally `rc`.

Every process bmslice starts here runs under `timeout` (the lab's TTL), in a session of
its own, and is stopped by `down` or on any failure of `up`; before signalling a pid it
checks the process still carries this lab's name, so it never kills what it did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmslice.errors import LabError
from bmslice.lab.assets import Assets, missing_libraries
from bmslice.lab.boot_files import build_initramfs, guest_script
from bmslice.lab.qemu_cmdline import LabFiles, kernel_cmdline, qemu_command
from bmslice.lab.shape import LabShape, check_lab_name

STATE_ROOT = Path(os.environ.get("BMSLICE_LAB_STATE", "/run/bmslice/lab"))
SHARE_MOUNT = "/mnt/bmslice-lab"
CONSOLE_TAIL_LINES = 25
_POLL_S = 0.25

Say = Callable[[str], None]


@dataclass(frozen=True)
class LabDir:
    name: str
    path: Path

    @classmethod
    def of(cls, name: str, state_root: Path = STATE_ROOT) -> LabDir:
        return cls(check_lab_name(name), state_root / name)

    @property
    def share(self) -> Path:
        return self.path / "share"

    @property
    def jobs(self) -> Path:
        return self.share / "jobs"

    @property
    def console(self) -> Path:
        return self.path / "console.log"

    @property
    def meta(self) -> Path:
        return self.path / "lab.json"

    @property
    def mark(self) -> str:
        """What every process of this lab carries in its command line."""
        return f"bmslice-lab-{self.name}"

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        try:
            with self.console.open("rb") as handle:
                handle.seek(max(0, self.console.stat().st_size - 64 * 1024))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:]) or "(no console output)"


@dataclass(frozen=True)
class LabInfo:
    name: str
    shape: LabShape
    kernel_args: str
    wrapper_pid: int
    started: float
    ttl_s: int
    versions: dict[str, str]
    scaled_down: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": self.shape.to_dict(),
            "kernel_args": self.kernel_args,
            "wrapper_pid": self.wrapper_pid,
            "started": self.started,
            "ttl_s": self.ttl_s,
            "versions": self.versions,
            "scaled_down": list(self.scaled_down),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabInfo:
        shape = dict(data["shape"])
        shape["sriov_nics_per_node"] = tuple(shape["sriov_nics_per_node"])
        return cls(
            name=str(data["name"]),
            shape=LabShape(**shape),
            kernel_args=str(data["kernel_args"]),
            wrapper_pid=int(data["wrapper_pid"]),
            started=float(data["started"]),
            ttl_s=int(data["ttl_s"]),
            versions={str(k): str(v) for k, v in data["versions"].items()},
            scaled_down=tuple(data.get("scaled_down", ())),
        )


# --- processes --------------------------------------------------------------------------


def _alive(pid: int, mark: str) -> bool:
    """`pid` runs (not a zombie) and is this lab's: its command line carries `mark`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"] and mark.encode() in cmdline


def _signal_group(pid: int, mark: str, sig: signal.Signals) -> None:
    if _alive(pid, mark):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)


def _stop_process(pid: int, mark: str, grace_s: float) -> None:
    """SIGTERM the lab's process group, SIGKILL it after `grace_s`; wait until it is gone."""
    _signal_group(pid, mark, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive(pid, mark) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    _signal_group(pid, mark, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid, mark) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    if _alive(pid, mark):
        raise LabError(f"lab process {pid} did not stop after SIGKILL")


def read_info(lab: LabDir) -> LabInfo | None:
    try:
        return LabInfo.from_dict(json.loads(lab.meta.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running(lab: LabDir) -> LabInfo | None:
    info = read_info(lab)
    return info if info is not None and _alive(info.wrapper_pid, lab.mark) else None


# --- up ---------------------------------------------------------------------------------


def _prepare_dir(lab: LabDir, hostname: str, libvirtd: bool) -> None:
    if running(lab) is not None:
        raise LabError(f"lab {lab.name} is already up; `bmslice lab down --name {lab.name}` first")
    shutil.rmtree(lab.path, ignore_errors=True)
    lab.jobs.mkdir(parents=True)
    (lab.share / "stage2.sh").write_text(guest_script("stage2.sh"))
    (lab.share / "hostname").write_text(hostname + "\n")
    if libvirtd:
        (lab.share / "with-libvirtd").touch()


def up(
    name: str,
    shape: LabShape,
    assets: Assets,
    *,
    extra_kernel_args: tuple[str, ...] = (),
    ttl_s: int = 3600,
    boot_timeout_s: int = 300,
    libvirtd: bool = True,
    scaled_down: tuple[str, ...] = (),
    state_root: Path = STATE_ROOT,
    say: Say = lambda _l: None,
) -> LabInfo:
    """Boot the lab and wait until it serves jobs; on any failure nothing of it is left running."""
    lab = LabDir.of(name, state_root)
    _prepare_dir(lab, name, libvirtd)
    files = LabFiles(
        qemu_prefix=assets.root,
        kernel=assets.kernel,
        initrd=lab.path / "initrd.img",
        share=lab.share,
        console=lab.console,
        pidfile=lab.path / "qemu.pid",
    )
    missing = missing_libraries(files.qemu)
    if missing:
        raise LabError(f"QEMU 10 needs libraries this machine lacks: {', '.join(missing)} (apt-get install them)")
    files.initrd.write_bytes(build_initramfs(assets.busybox, assets.modules, assets.kernel_release))
    argv, env = qemu_command(shape, files, name, ttl_s, extra_kernel_args)
    with (lab.path / "qemu.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    info = LabInfo(
        name=name,
        shape=shape,
        kernel_args=kernel_cmdline(shape, extra_kernel_args),
        wrapper_pid=proc.pid,
        started=time.time(),
        ttl_s=ttl_s,
        versions={p.package: p.version for p in assets.packages},
        scaled_down=scaled_down,
    )
    lab.meta.write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    # SIGTERM while booting ends like Ctrl-C: the half-booted lab is stopped, not left to its TTL.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _wait_ready(lab, proc, boot_timeout_s, say)
    except BaseException:
        _stop_process(proc.pid, lab.mark, 5)
        proc.wait()
        lab.meta.unlink(missing_ok=True)  # not up; its console log stays for a look until the next `up`
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return info


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
    try:
        pid = int((lab.path / "qemu.pid").read_text().strip())
        if not _alive(pid, lab.mark):
            return None
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return None


def down(name: str, state_root: Path = STATE_ROOT, grace_s: float = 30, say: Say = lambda _l: None) -> bool:
    """Power the lab off (cleanly if it answers, by signal if not) and remove its state. False: it was not up."""
    lab = LabDir.of(name, state_root)
    info = read_info(lab)
    if info is None:
        if lab.path.exists():
            shutil.rmtree(lab.path, ignore_errors=True)
        return False
    peak = peak_memory_mib(lab)
    if peak is not None:
        say(f"the lab's QEMU held at most {peak} MiB; it ran {time.time() - info.started:.0f} s")
    if _alive(info.wrapper_pid, lab.mark):
        (lab.share / "poweroff").touch()
        deadline = time.monotonic() + grace_s
        while _alive(info.wrapper_pid, lab.mark) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        if _alive(info.wrapper_pid, lab.mark):
            say(f"the lab did not power off within {grace_s:.0f} s; stopping its QEMU")
        _stop_process(info.wrapper_pid, lab.mark, 10)
    shutil.rmtree(lab.path, ignore_errors=True)
    return True


def labs(state_root: Path = STATE_ROOT) -> list[tuple[LabInfo, bool]]:
    """Every lab with state on this machine, and whether its QEMU still runs."""
    found = []
    for path in sorted(state_root.glob("*/lab.json")) if state_root.is_dir() else []:
        lab = LabDir(path.parent.name, path.parent)
        info = read_info(lab)
        if info is not None:
            found.append((info, _alive(info.wrapper_pid, lab.mark)))
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
    info = running(lab)
    if info is None:
        raise LabError(f"lab {name} is not up; `bmslice lab up --name {name}` first")
    job_id = f"{time.time_ns()}-{os.getpid()}"
    host_dir = lab.jobs / job_id
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


def _drain(path: Path, offset: int, sink: Callable[[bytes], None]) -> int:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return offset
    if data:
        sink(data)
    return offset + len(data)


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
            try:
                return int((job_dir / "rc").read_text().strip())
            except ValueError:
                raise LabError(f"the lab wrote an unreadable exit code for: {what}") from None
        now = time.monotonic()
        if not _alive(info.wrapper_pid, lab.mark):
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
