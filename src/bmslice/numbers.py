r"""Whole numbers read from text bmslice did not write: ASCII digits only, of bounded length.

Python's `int()` reads more than the kernel, libvirt or a switch ever write: Arabic-Indic
or fullwidth digits ("١٢" is 12), `_` between digits ("6_4" is 64), surrounding
whitespace, a sign, and with base 0 the prefixes 0b and 0o. A value read from a host tree,
/proc, resctrl or libvirt XML in such a form was not written by the kernel; it is refused
like any other malformed value, never read as some other number. And a number far past
anything real (10**30 VFs, a 4,000-digit core id) is refused before any arithmetic on it.

>>> decimal("12"), decimal("-1", signed=True), hexadecimal("7f0"), hexadecimal("0x7F0")
(12, -1, 2032, 2032)
>>> decimal("١٢"), decimal("6_4"), decimal(" 5"), decimal("+5"), decimal("-1"), hexadecimal("f_f")
(None, None, None, None, None, None)
>>> decimal("1" + "0" * 30), is_decimal("0042"), is_decimal("٣")
(None, True, False)
"""

from __future__ import annotations

import re

MAX_DIGITS = 20  # 2**64 has 20 decimal digits: no counter the kernel writes is longer
MAX_HEX_DIGITS = 16384  # a 65,536-CPU mask (cpuset.MAX_CPU_ID), the widest hex value read

_DECIMAL = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_SIGNED = re.compile(rf"-?[0-9]{{1,{MAX_DIGITS}}}")
_HEX = re.compile(rf"(?:0[xX])?([0-9a-fA-F]{{1,{MAX_HEX_DIGITS}}})")


def is_decimal(text: str) -> bool:
    """ASCII digits and nothing else, at most MAX_DIGITS of them (what `str.isdigit` means to a reader
    of /proc, which it is not: it is true of "١٢" too)."""
    return _DECIMAL.fullmatch(text) is not None


def decimal(text: str, signed: bool = False) -> int | None:
    """The number `text` is in ASCII decimal (a leading '-' when `signed`); None when it is not one."""
    return int(text) if (_SIGNED if signed else _DECIMAL).fullmatch(text) else None


def hexadecimal(text: str) -> int | None:
    """The number `text` is in ASCII hex, with or without 0x; None when it is not one."""
    match = _HEX.fullmatch(text)
    return int(match.group(1), 16) if match else None
