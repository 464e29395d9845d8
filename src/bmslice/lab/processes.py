"""Which processes are a lab's, and stopping them: bmslice signals only what it started.

A lab's QEMU and the `timeout` wrapper it runs under both carry, in their argv, QEMU's
`-name bmslice-lab-<name>,process=bmslice-lab-<name>` and `-pidfile <state>/<name>/qemu.pid`.
A process is this lab's only when both appear as whole arguments: a substring would let
`lab down --name lab` stop `labtest`, and a name alone would let one state root's lab stop
another's. The recorded pid may have been reused since; the argv check runs again right
before every signal.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bmslice.errors import LabError
from bmslice.lab.state import LabDir, LabInfo
from bmslice.model.input_file import read_input_text

_POLL_S = 0.25
_PID = re.compile(r"[1-9][0-9]{0,7}")
PIDFILE_LIMIT = 64  # QEMU writes "<pid>\n"


def _argv(pid: int) -> list[bytes] | None:
    """The process's arguments; None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if stat.rpartition(")")[2].split()[:1] == ["Z"]:
        return None
    return cmdline.split(b"\0")


def _has_option(argv: list[bytes], flag: str, value: str) -> bool:
    want = (flag.encode(), os.fsencode(value))
    return any(pair == want for pair in itertools.pairwise(argv))


def is_lab_process(pid: int, lab: LabDir) -> bool:
    """`pid` runs and is this lab's QEMU or its wrapper: its name and pid file, both whole."""
    if pid <= 1:
        return False
    argv = _argv(pid)
    return (
        argv is not None
        and _has_option(argv, "-name", lab.qemu_name)
        and _has_option(argv, "-pidfile", str(lab.pidfile))
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def qemu_pid(lab: LabDir) -> int | None:
    """The pid in QEMU's pid file, when that process is this lab's QEMU."""
    try:  # bounded, a regular file only: a pid file made a FIFO or a link to /dev/zero must not hang down
        text = read_input_text(lab.pidfile, "the lab's QEMU pid file", PIDFILE_LIMIT, LabError).strip()
    except LabError:
        return None
    if not _PID.fullmatch(text):
        return None
    pid = int(text)
    return pid if is_lab_process(pid, lab) else None


@dataclass(frozen=True)
class LabProcess:
    """What to signal: the lab's wrapper and its process group, or (group False) one process."""

    pid: int
    group: bool


def find(lab: LabDir, info: LabInfo | None) -> LabProcess | None:
    """The running process of this lab to stop: its recorded wrapper, else the one its pid file names.

    Without a usable lab.json (a hand-edited or truncated one) the pid file still finds the
    QEMU, and the QEMU's process group leads to the wrapper when that is the lab's too.
    """
    if info is not None and is_lab_process(info.wrapper_pid, lab):
        return LabProcess(info.wrapper_pid, _pgid(info.wrapper_pid) == info.wrapper_pid)
    pid = qemu_pid(lab)
    if pid is None:
        return None
    leader = _pgid(pid)
    if leader is not None and leader != pid and is_lab_process(leader, lab):
        return LabProcess(leader, True)
    return LabProcess(pid, leader == pid)


def alive(process: LabProcess, lab: LabDir) -> bool:
    """The process, or (a group) any process of the lab left in its group: a wrapper gone before
    its QEMU has exited does not make the lab down."""
    if is_lab_process(process.pid, lab):
        return True
    return process.group and any(is_lab_process(pid, lab) for pid in _members(process.pid))


def _members(leader: int) -> list[int]:
    """The pids of process group `leader` (from /proc: a group has no list of its own)."""
    pids = (int(entry) for entry in os.listdir("/proc") if entry.isascii() and entry.isdigit())
    return [pid for pid in pids if pid != leader and _pgid(pid) == leader]


def _signal(process: LabProcess, lab: LabDir, sig: signal.Signals) -> None:
    """Signal it, and (a group) every process of the lab in its group, each if it is still the
    lab's: a QEMU whose wrapper is already gone is still reached."""
    for pid in [process.pid, *(_members(process.pid) if process.group else ())]:
        _signal_one(pid, lab, sig)


def _signal_one(pid: int, lab: LabDir, sig: signal.Signals) -> None:
    """A pidfd taken before the argv check pins the process: were the pid freed and reused
    between check and signal, the signal would fail, not land elsewhere."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone
        return
    try:
        if is_lab_process(pid, lab):
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, sig)
    finally:
        os.close(pidfd)


def stop(process: LabProcess, lab: LabDir, grace_s: float) -> None:
    """SIGTERM, SIGKILL after `grace_s`; wait until it is gone."""
    _signal(process, lab, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive(process, lab) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    _signal(process, lab, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(process, lab) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    if alive(process, lab):
        raise LabError(f"lab {lab.name}: process {process.pid} did not stop after SIGKILL")
