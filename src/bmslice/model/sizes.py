"""Memory and disk sizes as users write them ("8GiB", "512MiB", "100G").

Units are binary, as libvirt's are: "G" and "GiB" both mean 2**30 bytes.

>>> parse_size_mib("8GiB")
8192
>>> parse_size_mib("1.5G")
1536
>>> format_mib(8192)
'8GiB'
"""

from __future__ import annotations

import re

_UNITS_MIB = {
    "k": 1 / 1024,
    "ki": 1 / 1024,
    "kib": 1 / 1024,
    "m": 1,
    "mi": 1,
    "mib": 1,
    "g": 1024,
    "gi": 1024,
    "gib": 1024,
    "t": 1024 * 1024,
    "ti": 1024 * 1024,
    "tib": 1024 * 1024,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size_mib(value: str | int) -> int:
    """A size in whole MiB; a bare integer means MiB. Raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 8GiB, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"size must be positive, got {value}")
        return value
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"expected a size such as 8GiB or 512MiB, got {value!r}")
    number, unit = float(match.group(1)), match.group(2).lower().removesuffix("b") if match.group(2) else "m"
    if unit == "":
        unit = "m"  # a trailing "B" alone ("512B") would mean bytes: refuse below
    if unit not in _UNITS_MIB or match.group(2).lower() == "b":
        raise ValueError(f"unknown size unit {match.group(2)!r} in {value!r} (use KiB, MiB, GiB or TiB)")
    mib = number * _UNITS_MIB[unit]
    if mib <= 0 or mib != int(mib):
        raise ValueError(f"size {value!r} must be a positive whole number of MiB")
    return int(mib)


def format_mib(mib: int) -> str:
    for unit, factor in (("TiB", 1024 * 1024), ("GiB", 1024)):
        if mib % factor == 0:
            return f"{mib // factor}{unit}"
    return f"{mib}MiB"
