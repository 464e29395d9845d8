"""Memory and disk sizes as users write them ("8GiB", "512MiB", "100G").

Units are binary, as libvirt's are: "G", "GB" and "GiB" all mean 2**30 bytes. The whole
value must be a size: ASCII digits, an optional fraction, an optional space and a unit
("8GiBB", "８GiB" and "8GiB\\n" are refused), at most `MAX_SIZE_MIB`.

>>> parse_size_mib("8GiB")
8192
>>> parse_size_mib("1.5G")
1536
>>> format_mib(8192)
'8GiB'
"""

from __future__ import annotations

import re
from fractions import Fraction

from bmslice.safe_text import shown

_UNITS_MIB = {
    **dict.fromkeys(("k", "kb", "ki", "kib"), Fraction(1, 1024)),
    **dict.fromkeys(("", "m", "mb", "mi", "mib"), Fraction(1)),
    **dict.fromkeys(("g", "gb", "gi", "gib"), Fraction(1024)),
    **dict.fromkeys(("t", "tb", "ti", "tib"), Fraction(1024 * 1024)),
}
# [0-9], not \d: \d would take Arabic-Indic or fullwidth digits, which float() then reads.
_SIZE_RE = re.compile(r"([0-9]+)(?:\.([0-9]+))? ?([A-Za-z]{0,3})")
GIB_KIB = 1048576  # a 1 GiB hugepage in KiB, the unit of sysfs hugepage sizes
MAX_SIZE_MIB = 1024 * 1024 * 1024  # 1 PiB: far above any memory or disk, far below an overflow


def _checked(amount: Fraction | int, value: object, unit: str = "MiB") -> int:
    if amount <= 0 or amount != int(amount):
        raise ValueError(f"size {shown(value)} must be a positive whole number of {unit}")
    mib = amount if unit == "MiB" else Fraction(amount, 1024)
    if mib > MAX_SIZE_MIB:
        raise ValueError(f"size {shown(value)} is more than the {format_mib(MAX_SIZE_MIB)} bmslice accepts")
    return int(amount)


def parse_size_mib(value: str | int) -> int:
    """A size in whole MiB; a bare integer means MiB. Raises ValueError with the reason."""
    return _checked(_size_mib(value), value)


def parse_size_kib(value: str | int) -> int:
    """A size in whole KiB (cache sizes: "1536KiB", "8MiB"); a bare integer means MiB, as elsewhere.

    >>> parse_size_kib("1536KiB"), parse_size_kib("2.5MiB"), parse_size_kib(8)
    (1536, 2560, 8192)
    """
    return _checked(_size_mib(value) * 1024, value, "KiB")


def _size_mib(value: str | int) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"expected a size such as 8GiB, got {shown(value)}")
    if isinstance(value, int):
        return Fraction(value)
    match = _SIZE_RE.fullmatch(value)
    if not match:
        raise ValueError(f"expected a size such as 8GiB or 512MiB, got {shown(value)}")
    whole, fraction, unit = match.groups()
    if len(whole.lstrip("0")) > 16 or (fraction and len(fraction) > 9):  # before int(): 4,000 digits stay text
        raise ValueError(f"size {shown(value)} is more than the {format_mib(MAX_SIZE_MIB)} bmslice accepts")
    factor = _UNITS_MIB.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown size unit {shown(unit)} in {shown(value)} (use KiB, MiB, GiB or TiB)")
    number = Fraction(int(whole)) + (Fraction(int(fraction), 10 ** len(fraction)) if fraction else 0)
    return number * factor


def format_mib(mib: int) -> str:
    for unit, factor in (("TiB", 1024 * 1024), ("GiB", 1024)):
        if mib % factor == 0:
            return f"{mib // factor}{unit}"
    return f"{mib}MiB"
