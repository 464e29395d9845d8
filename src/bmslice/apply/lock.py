"""One bmslice run per host at a time (faults.md 28): an exclusive, non-blocking flock."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bmslice.errors import ApplyError

LOCK_DIR = Path(os.environ.get("BMSLICE_LOCK_DIR", "/run/lock/bmslice"))


def lock_path(uri: str) -> Path:
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return LOCK_DIR / f"{digest}.lock"


@contextmanager
def host_lock(uri: str) -> Iterator[None]:
    """Hold the lock for `uri`; a second holder gets ApplyError at once, not a wait."""
    path = lock_path(uri)
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
                f"another bmslice run holds the lock for {uri} ({holder}); try again when it ends"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
