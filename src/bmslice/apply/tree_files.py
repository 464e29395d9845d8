"""Writes below a host root (the live "/" or a tree), on paths FsRoot.resolve confined to it.

A path handed here has no symlink left in it, so each open uses O_NOFOLLOW: a link swapped in
later is refused, never followed. Only regular files are written: a FIFO where a sysfs
attribute should be would block the write forever, a device node could be the host's disk.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from bmslice.errors import ApplyError

FILE_MODE = 0o644
EXEC_MODE = 0o755  # a script another program runs (libvirt's hooks)


def file_mode(path: Path) -> int:
    """Permission bits of an existing file; FILE_MODE when there is none (what a new one gets)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return FILE_MODE


def write_in_place(path: Path, data: bytes) -> None:
    """One write to an existing file: how sysfs attributes take a value (they cannot be renamed over)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise ApplyError(f"{path} does not exist") from None
    if not stat.S_ISREG(mode):
        raise ApplyError(f"{path} is not a regular file; refused to write to it")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ApplyError(f"{path} is not a regular file; refused to write to it")
        os.write(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".bmslice")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def make_dirs(directory: Path, created: list[Path]) -> None:
    """Create `directory` and its missing parents, each added to `created` as soon as it exists."""
    missing = []
    current = directory
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)


def remove_dirs(created: list[Path]) -> None:
    """Undo of make_dirs: innermost first, only while empty."""
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()
