"""Where a PF's VFs will sit, from the SR-IOV capability in its PCI config space.

Kernels before 4.16 (Ubuntu 18.04's 4.15, the design note's server) show `sriov_totalvfs`
in sysfs but not `sriov_offset`/`sriov_stride`. Root reads the same two registers from
`/sys/bus/pci/devices/<addr>/config`: the SR-IOV extended capability (ID 0x0010) holds First
VF Offset at +0x14 and VF Stride at +0x16, both 16-bit little-endian. Extended capabilities
start at 0x100; each header is a 32-bit little-endian word, capability ID in bits 0-15,
version in 16-19 and the next header's offset in 20-31 (0 ends the list). Anyone but root
reads only the first 64 bytes of config, so the answer is then None.

>>> config = bytearray(4096)
>>> config[0x100:0x104] = (0x0001 | 2 << 16 | 0x160 << 20).to_bytes(4, "little")  # AER, next at 0x160
>>> config[0x160:0x164] = (0x0010 | 1 << 16).to_bytes(4, "little")  # SR-IOV, last
>>> config[0x174:0x178] = (0x80).to_bytes(2, "little") + (2).to_bytes(2, "little")
>>> sriov_routing(bytes(config))
SriovRouting(offset=128, stride=2)
>>> sriov_routing(bytes(64)) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass

EXTENDED_CAPS = 0x100
SRIOV_CAP_ID = 0x0010
FIRST_VF_OFFSET = 0x14
VF_STRIDE = 0x16
_SRIOV_CAP_SIZE = 0x40


@dataclass(frozen=True)
class SriovRouting:
    """VF n of a PF has routing ID `PF + offset + n * stride` (bus << 8 | device << 3 | function)."""

    offset: int
    stride: int


def _u16(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 2], "little")


def sriov_routing(config: bytes) -> SriovRouting | None:
    """First VF Offset and VF Stride of the SR-IOV capability; None without one (or without the bytes)."""
    pos = EXTENDED_CAPS
    seen: set[int] = set()
    # A corrupt list may point back at itself; each header is visited at most once.
    while pos >= EXTENDED_CAPS and pos not in seen and pos + 4 <= len(config):
        seen.add(pos)
        header = int.from_bytes(config[pos : pos + 4], "little")
        if header in (0, 0xFFFFFFFF):  # no extended capabilities, or a function that is gone
            return None
        if header & 0xFFFF == SRIOV_CAP_ID:
            if pos + _SRIOV_CAP_SIZE > len(config):
                return None
            offset, stride = _u16(config, pos + FIRST_VF_OFFSET), _u16(config, pos + VF_STRIDE)
            # The kernel refuses SR-IOV on such a PF too (sriov_init: -EIO).
            return SriovRouting(offset, stride) if offset and stride else None
        pos = (header >> 20) & 0xFFC  # the two low bits are reserved
    return None
