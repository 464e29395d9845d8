"""The hugetlbfs mounts of a host, by page size, from /proc/mounts.

libvirt backs a guest's hugepages of one size with a hugetlbfs mount of that page size, and
finds the mounts (in /proc/mounts) when the daemon starts. The kernel shows each mount's page
size as `pagesize=2M` (hugetlbfs_show_options); a mount without it has the default size, the
`Hugepagesize` of /proc/meminfo.

>>> sorted(hugetlbfs_mounts(
...     "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\\n"
...     "none /dev/hugepages1G hugetlbfs rw,relatime,pagesize=1024M 0 0\\n"
...     "proc /proc proc rw 0 0\\n", default_kib=2048).items())
[(2048, ('/dev/hugepages',)), (1048576, ('/dev/hugepages1G',))]
"""

from __future__ import annotations

import re

from bmslice.model.sizes import GIB_KIB
from bmslice.numbers import decimal
from bmslice.topology.fsroot import FsRoot

_SIZE = re.compile(r"([0-9]+)([KMG])")
_UNIT_KIB = {"K": 1, "M": 1024, "G": GIB_KIB}
_HUGEPAGESIZE = re.compile(r"Hugepagesize:\s+([0-9]+) kB")


def _unescape(field: str) -> str:
    """/proc/mounts writes a space in a path as \\040 (and tab, newline, backslash likewise)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def hugetlbfs_mounts(text: str, default_kib: int | None) -> dict[int, tuple[str, ...]]:
    """{page size in KiB: mount points} of the hugetlbfs lines of a /proc/mounts text."""
    found: dict[int, list[str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "hugetlbfs":
            continue
        size = default_kib
        for option in fields[3].split(","):
            key, _, value = option.partition("=")
            match = _SIZE.fullmatch(value)
            number = decimal(match.group(1)) if match else None  # ASCII, bounded: 5,000 digits broke int()
            if key == "pagesize":  # one the kernel did not write is no size at all, not the default
                size = None if match is None or number is None else number * _UNIT_KIB[match.group(2)]
        if size is not None:
            found.setdefault(size, []).append(_unescape(fields[1]))
    return {size: tuple(points) for size, points in sorted(found.items())}


def read_hugetlbfs_mounts(fs: FsRoot) -> dict[int, tuple[str, ...]] | None:
    """The hugetlbfs mounts of the host below `fs`; None when proc/mounts cannot be read."""
    text = fs.read("proc/mounts")
    if text is None:
        return None
    meminfo = fs.read("proc/meminfo") or ""
    match = _HUGEPAGESIZE.search(meminfo)
    return hugetlbfs_mounts(text, decimal(match.group(1)) if match else None)
