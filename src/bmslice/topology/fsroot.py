"""One root directory read as "/": the live machine, or a tree captured from one.

Every `--host-root` path, read or written, goes through `FsRoot.resolve`, the way hwloc's
HWLOC_FSROOT works: symlinks are followed by hand, inside the root, so a tree can never
reach the machine that reads it. An absolute target is taken from the root and `..`
stops at the root:

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     tree = Path(tmp)
...     os.symlink("/etc/passwd", tree / "passwd")
...     FsRoot(tree).resolve("passwd") == tree / "etc/passwd", FsRoot(tree).resolve("../../etc") == tree / "etc"
(True, True)

Tree files are opened only when they are regular files (a FIFO at proc/cmdline would
block a read forever, a device node could be the host's disk), and read up to a bound.
sysfs attributes are regular files that report 4096 bytes and procfs files report 0, so
the bound is on what is read, never on what `stat` says.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from bmslice.cpuset import CpuListError, CpuSet
from bmslice.errors import TopologyError
from bmslice.numbers import decimal, hexadecimal
from bmslice.safe_text import shown

MAX_SYMLINK_HOPS = 40  # Linux's own limit (MAXSYMLINKS) before ELOOP
MAX_FILE_BYTES = 32 * 1024 * 1024  # far above /proc/cpuinfo of a 1,000-CPU machine

_NUMBERED = re.compile(r"(cpu|node|virtfn)([0-9]+)")
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class TreeError(TopologyError):
    """A tree path that must not be followed or opened: a symlink loop, a FIFO, a device, a huge file."""


class FsRoot:
    """Reads files below `root` as if it were "/"; absent or unreadable files read as None.

    Problems that should not stop discovery are collected in `warnings`; what must not be
    read at all (TreeError) stops it with one line naming the path.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.warnings: list[str] = []
        self._base = str(root).rstrip("/")
        self._links: dict[str, str | None] = {}  # path -> symlink target; a tree does not change while read

    def _readlink(self, path: str) -> str | None:
        if path not in self._links:
            try:
                self._links[path] = os.readlink(path)
            except (OSError, ValueError):  # not a link, absent, or a name no file can have
                self._links[path] = None
        return self._links[path]

    def resolve(self, rel: str) -> Path:
        """The real path of ROOT/rel with every symlink followed inside the root.

        Raises TreeError when the chain of links is longer than Linux would follow (a loop).
        """
        return Path(self._resolved(rel))

    def _resolved(self, rel: str) -> str:
        """`resolve` as a string: readers of many small files (a host's /proc) skip building Paths."""
        return self._base + "/" + self.real(rel)

    def real(self, rel: str) -> str:
        """`rel` with every symlink followed inside the root: a path below the root that holds no link
        (what a writer walks without following any)."""
        pending = list(reversed(rel.split("/")))
        current: list[str] = []
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if current:
                    current.pop()
                continue
            current.append(part)
            target = self._readlink(self._base + "/" + "/".join(current))
            if target is None:
                continue
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise TreeError(
                    f"{self.display(rel)}: more than {MAX_SYMLINK_HOPS} symbolic links to follow (a loop?); refused"
                )
            current.pop()
            if target.startswith("/"):
                current = []
            pending.extend(reversed(target.split("/")))
        return "/".join(current)

    def display(self, rel: str) -> str:
        return str(self.root / rel.lstrip("/"))

    def is_dir(self, rel: str) -> bool:
        return self.resolve(rel).is_dir()

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.resolve(rel))

    def read_bytes(self, rel: str, limit: int = MAX_FILE_BYTES) -> bytes | None:
        """The content of a regular file, None when it does not exist.

        Raises TreeError for a FIFO, socket or device node and for a file larger than `limit`,
        IsADirectoryError for a directory; other OSErrors (permission denied) reach the caller.
        """
        if not self._base:
            return self._read_live(rel, limit)
        # The directory through the resolver, the file itself by its lstat: a link there is resolved too.
        parent, _, name = rel.rpartition("/")
        path = self._resolved(rel) if name in ("", ".", "..") else f"{self._resolved(parent)}/{name}"
        try:
            before = os.lstat(path)
            if stat.S_ISLNK(before.st_mode):
                path = self._resolved(rel)
                before = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        self._check_regular(rel, before.st_mode)
        # O_NONBLOCK: should a FIFO be swapped in after the lstat, open() still returns at once.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        return self._read_opened(rel, fd, before, limit)

    def _read_live(self, rel: str, limit: int) -> bytes | None:
        """read_bytes below the live "/": the kernel's own resolution of links is the resolver's (no link
        leads outside "/"), so stat() does what resolve and lstat do for a tree. The file is checked to
        be a regular one before it is opened (opening a device can act: a watchdog starts), again once
        open (O_NONBLOCK: a FIFO swapped in cannot block), and read up to `limit`. The exporter reads
        thousands of /proc files a scrape this way."""
        path = "/" + rel.lstrip("/")
        try:
            before = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        self._check_regular(rel, before.st_mode)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None  # gone since (a thread that ended)
        return self._read_opened(rel, fd, before, limit)

    def _read_opened(self, rel: str, fd: int, before: os.stat_result, limit: int) -> bytes:
        """Read `fd` (then close it) if it is still the regular file `before` was, up to `limit`."""
        try:
            now = os.fstat(fd)
            self._check_regular(rel, now.st_mode)
            if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
                raise TreeError(f"{self.display(rel)}: replaced while being read; refused")
            return self._read_bounded(rel, fd, limit)
        finally:
            os.close(fd)

    def _check_regular(self, rel: str, mode: int) -> None:
        if stat.S_ISREG(mode):
            return
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.display(rel))
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise TreeError(f"{self.display(rel)} is {kind}, not a regular file; refused")

    def _read_bounded(self, rel: str, fd: int, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 16, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise TreeError(f"{self.display(rel)} is larger than {limit} bytes; refused")
        return b"".join(chunks)

    def read(self, rel: str, keep_nul: bool = False) -> str | None:
        """Text of a regular file; None when absent, unreadable or a directory.

        NUL bytes are dropped (captured trees pad sysfs values with them) unless `keep_nul`:
        /proc/<pid>/cmdline separates arguments with NUL.
        """
        try:
            data = self.read_bytes(rel)
        except OSError:
            return None
        if data is None:
            return None
        text = data.decode("utf-8", errors="replace")
        return text if keep_nul else text.replace("\0", "")

    def read_line(self, rel: str) -> str | None:
        text = self.read(rel)
        return None if text is None else text.strip()

    def read_int(self, rel: str, signed: bool = False) -> int | None:
        """A whole number; `signed` where the kernel writes -1 for "unknown" (numa_node, core_id), else never negative."""
        text = self.read_line(rel)
        if text is None:
            return None
        # what the kernel writes: decimal or 0x hex; never "6_4", "١٢" or 10**30
        value = hexadecimal(text) if text.lower().startswith("0x") else decimal(text, signed)
        if value is None:
            self.warnings.append(f"{self.display(rel)}: expected an integer, got {shown(text, 40)}; ignored")
        return value

    def read_cpuset(self, rel: str) -> CpuSet | None:
        """A CPU list ("0-3,8"); None when absent or malformed (a warning)."""
        return self._cpus(rel, CpuSet.parse)

    def read_cpumask(self, rel: str) -> CpuSet | None:
        """A hex CPU mask ("00000000,00000f0f": 32-bit words, most significant first), as old kernels write."""
        return self._cpus(rel, CpuSet.parse_mask)

    def _cpus(self, rel: str, parse: Callable[[str], CpuSet]) -> CpuSet | None:
        text = self.read_line(rel)
        if text is None:
            return None
        try:
            return parse(text)
        except CpuListError as exc:
            self.warnings.append(f"{self.display(rel)}: {exc}; ignored")
            return None

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self._resolved(rel)))
        except OSError:
            return []

    def link_name(self, rel: str) -> str | None:
        """Name of what a symlink points to (how sysfs names a driver or IOMMU group)."""
        path = PurePosixPath(rel)
        if not (self.resolve(str(path.parent)) / path.name).is_symlink():
            return None
        # The resolved name, not the raw target's last part, which may be "..".
        return self.resolve(rel).name or None

    def numbered(self, rel: str, prefix: str, most: int) -> list[int]:
        """The N of every `<prefix>N` entry in a directory, ascending; an N past `most` (the
        kernel's own bound: a "node<250 digits>" directory was a NUMA node of that id) is
        not the kernel's entry, and is ignored with a warning like any malformed number."""
        found = []
        for name in self.listdir(rel):
            match = _NUMBERED.fullmatch(name)
            if match and match.group(1) == prefix:
                number = decimal(match.group(2))
                if number is None or number > most:
                    self.warnings.append(f"{self.display(rel)}/{shown(name, 40)}: {prefix} number past {most}; ignored")
                    continue
                found.append(number)
        return sorted(found)
