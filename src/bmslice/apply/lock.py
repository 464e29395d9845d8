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
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bmslice.errors import ApplyError

LOCK_DIR = Path(os.environ.get("BMSLICE_LOCK_DIR", "/run/lock/bmslice"))


def lock_path(key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return LOCK_DIR / f"{digest}.lock"


@contextmanager
def host_lock(key: str, via: str = "") -> Iterator[None]:
    """Hold the lock for host `key` (`via`: the URI this run used, shown to a second run)."""
    path = lock_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+")
    except OSError as exc:
        raise ApplyError(f"cannot create lock file {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ApplyError(
                f"another bmslice run holds the lock for host {key} ({holder}); try again when it ends"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}{f' via {via}' if via else ''}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
