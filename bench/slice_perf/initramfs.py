"""A newc ("070701") cpio archive writer: enough to build a Linux initramfs without a cpio binary.

>>> archive = Newc()
>>> archive.directory("dev")
>>> archive.device("dev/console", 5, 1)
>>> archive.file("init", b"#!/bin/sh\\n", 0o755)
>>> data = archive.finish()
>>> data[:6], len(data) % 512
(b'070701', 0)
"""

from __future__ import annotations

import stat


class Newc:
    """Entries in the order added; the kernel unpacks them in that order (parents first)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self._ino,
            mode,
            0,  # uid
            0,  # gid
            nlink,
            0,  # mtime: fixed, so the archive is reproducible
            len(data),
            0,  # devmajor
            0,  # devminor
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check
        )
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self._parts.append(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self._parts.append(data + b"\0" * (-len(data) % 4))
        self._ino += 1

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def device(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._ino = 0
        self._entry("TRAILER!!!", 0, nlink=1)
        data = b"".join(self._parts)
        return data + b"\0" * (-len(data) % 512)
