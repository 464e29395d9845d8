"""One bmslice run per host at a time (faults.md 28): an exclusive, non-blocking flock.

The lock is named by what the host is, not by how it was reached: apply and destroy key it
on `libvirt_conn.host_key(conn)` (the host's own name as libvirt reports it), so
`qemu:///system`, `qemu:///system?` and `qemu+unix:///system` take one lock, and so does
`qemu+ssh://` to this machine (libvirt names the same host; tests/test_remote_ssh.py). The
second run refuses at once, naming the holder; it does not wait.

The lock is a file on the machine bmslice runs on. Runs made from one machine serialise,
whichever URI they use; a run from another machine (a workstation's `--connect
qemu+ssh://server1/system`) does not see the locks on server1. The fleet's Ansible module
runs bmslice on each server itself, so runs made through it lock on the server.

The lock directory (/run/lock/bmslice) sits in a directory every user can write, so a user
could make it first, or plant a link where a lock file will be opened. bmslice makes it
0700 and refuses one that another user owns or that group or others can write; a lock file
is opened without following a link and refused when it is not a regular file of the running
user's alone (a hard link to another file), so the truncate after taking the lock can only
ever empty bmslice's own lock file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bmslice.apply.safe_dir import LOCK_RULE, open_dir
from bmslice.errors import ApplyError

LOCK_DIR = Path(os.environ.get("BMSLICE_LOCK_DIR", "/run/lock/bmslice"))
_HOLDER_BYTES = 4096  # "pid N via URI"; a longer file was not written by bmslice


def lock_path(key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return LOCK_DIR / f"{digest}.lock"


def _not_ours_alone(st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    if st.st_nlink != 1:
        return "a hard link to another file"
    return None


def _open_lock(path: Path) -> int:
    try:
        with open_dir(path.parent, LOCK_RULE) as directory:
            assert directory is not None
            fd = directory.open_file(path.name, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise ApplyError(f"cannot create lock file {path}: {exc.strerror or exc}") from None
    why = _not_ours_alone(os.fstat(fd))
    if why is not None:
        os.close(fd)
        raise ApplyError(f"lock file {path} is {why}; refused (remove it; bmslice makes it again)")
    return fd


@contextmanager
def host_lock(key: str, via: str = "") -> Iterator[None]:
    """Hold the lock for host `key` (`via`: the URI this run used, shown to a second run)."""
    path = lock_path(key)
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, _HOLDER_BYTES, 0).decode(errors="replace").strip() or "another process"
            raise ApplyError(
                f"another bmslice run holds the lock for host {key} ({holder}); try again when it ends"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}{f' via {via}' if via else ''}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
