"""A newc ("070701") cpio archive, the format the kernel unpacks as an initramfs.

Written here rather than with the `cpio` tool so the archive is byte-for-byte the same
for the same inputs (mtime 0, fixed inode numbers) and needs nothing installed.

>>> archive = Cpio()
>>> archive.directory("bin")
>>> archive.file("bin/hello", b"hi\\n", 0o755)
>>> data = archive.finish()
>>> data[:6], data.endswith(b"TRAILER!!!\\x00\\x00\\x00\\x00")
(b'070701', True)
"""

from __future__ import annotations

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


class Cpio:
    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
        self._parts += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]

    def directory(self, name: str, perms: int = 0o755) -> None:
        self._entry(name, S_IFDIR | perms)

    def file(self, name: str, data: bytes, perms: int = 0o644) -> None:
        self._entry(name, S_IFREG | perms, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, perms: int = 0o600) -> None:
        self._entry(name, S_IFCHR | perms, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._parts)
