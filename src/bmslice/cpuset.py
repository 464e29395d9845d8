"""A typed, immutable set of host CPU numbers, parsed and formatted only at the edges.

>>> CpuSet.parse("2-11,14-23").format()
'2-11,14-23'
>>> str(CpuSet.of(4, 16, 6) | CpuSet.parse("0"))
'0,4,6,16'
>>> CpuSet.parse("0-3,^2").format()
'0-1,3'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bmslice.safe_text import shown

MAX_CPU_ID = 65535  # far above any Linux NR_CPUS; a range past it is refused before a set is built
_NUMBER = re.compile(r"[0-9]+")  # ASCII only: int() would also read Arabic-Indic or fullwidth digits
_MASK = re.compile(r"[0-9a-fA-F]+(?:,[0-9a-fA-F]+)*")  # 32-bit hex words, most significant first


class CpuListError(ValueError):
    """A CPU list string that cannot be parsed."""


@dataclass(frozen=True, order=False)
class CpuSet:
    """CPU numbers as the kernel and libvirt write them ("0-3,8,10-11")."""

    cpus: frozenset[int] = frozenset()

    @classmethod
    def of(cls, *cpus: int) -> CpuSet:
        return cls.from_iter(cpus)

    @classmethod
    def from_iter(cls, cpus: Iterable[int]) -> CpuSet:
        values = frozenset(cpus)
        for cpu in values:
            if not isinstance(cpu, int) or isinstance(cpu, bool) or cpu < 0:
                raise CpuListError(f"CPU number must be a non-negative integer, got {shown(cpu)}")
        return cls(values)

    @classmethod
    def parse(cls, text: str) -> CpuSet:
        """Parse the kernel's list format; "^N" excludes, an empty string is the empty set."""
        include: set[int] = set()
        exclude: set[int] = set()
        for raw in text.strip().split(","):
            part = raw.strip()
            if not part:
                continue
            target = include
            if part.startswith("^"):
                target, part = exclude, part[1:]
            lo_s, sep, hi_s = (s.strip() for s in part.partition("-"))
            if not _NUMBER.fullmatch(lo_s) or (sep and not _NUMBER.fullmatch(hi_s)):
                raise CpuListError(f"bad CPU list {shown(text)}: {shown(part)} is not a number or range")
            if max(len(lo_s), len(hi_s)) > len(str(MAX_CPU_ID)) or int(hi_s or lo_s) > MAX_CPU_ID:
                raise CpuListError(
                    f"bad CPU list {shown(text)}: {shown(part)} is above the largest CPU id {MAX_CPU_ID}"
                )
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
            if hi < lo:
                raise CpuListError(f"bad CPU list {shown(text)}: range {shown(part)} is empty")
            target.update(range(lo, hi + 1))
        return cls(frozenset(include - exclude))

    @classmethod
    def parse_mask(cls, text: str) -> CpuSet:
        """Parse a hex mask as in /proc/irq/*/smp_affinity ("ff,00000001")."""
        words = text.strip()
        digits = words.replace(",", "")
        if len(digits) > (MAX_CPU_ID + 1) // 4:
            raise CpuListError(f"bad CPU mask {shown(text)}: more than {MAX_CPU_ID + 1} CPUs")
        # ASCII hex words only: int(x, 16) alone would also read "١", "f_f" or "0x1"
        if words and not _MASK.fullmatch(words):
            raise CpuListError(f"bad CPU mask {shown(text)}: expected hex words such as ff,00000001")
        value = int(digits, 16) if digits else 0
        return cls(frozenset(i for i in range(value.bit_length()) if value >> i & 1))

    def format(self) -> str:
        """Compact ranges, ascending: {0,1,2,5} -> "0-2,5"."""
        out: list[str] = []
        ordered = sorted(self.cpus)
        i = 0
        while i < len(ordered):
            j = i
            while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
                j += 1
            out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
            i = j + 1
        return ",".join(out)

    def sorted(self) -> list[int]:
        return sorted(self.cpus)

    def __str__(self) -> str:
        return self.format()

    def __repr__(self) -> str:
        return f"CpuSet({self.format()!r})"

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self.cpus))

    def __len__(self) -> int:
        return len(self.cpus)

    def __contains__(self, cpu: object) -> bool:
        return cpu in self.cpus

    def __bool__(self) -> bool:
        return bool(self.cpus)

    def __or__(self, other: CpuSet) -> CpuSet:
        return CpuSet(self.cpus | other.cpus)

    def __and__(self, other: CpuSet) -> CpuSet:
        return CpuSet(self.cpus & other.cpus)

    def __sub__(self, other: CpuSet) -> CpuSet:
        return CpuSet(self.cpus - other.cpus)

    def isdisjoint(self, other: CpuSet) -> bool:
        return self.cpus.isdisjoint(other.cpus)

    def issubset(self, other: CpuSet) -> bool:
        return self.cpus <= other.cpus

    @staticmethod
    def union(sets: Iterable[CpuSet]) -> CpuSet:
        out: frozenset[int] = frozenset()
        for s in sets:
            out |= s.cpus
        return CpuSet(out)

    def min(self) -> int:
        return min(self.cpus)
