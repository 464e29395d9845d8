"""Which volumes are bmslice's: a mark of ownership carried inside the volume's own bytes.

A volume's name or path is no proof: anyone may have made `<vm>.qcow2` before bmslice
ran, and deleting it would lose their data. So every volume bmslice creates carries a
mark, written by bmslice right after libvirt creates the volume, and checked before the
volume is reused or deleted. The design, and why:

* **Where the mark lives: in the volume.** A host-side registry (/var/lib/bmslice) cannot
  be read over qemu+ssh:// through libvirt alone, and a record kept only in the domain's
  metadata is lost with the domain (a run killed before `define`, a domain undefined by
  hand). The volume's bytes travel with it and libvirt's storage API reads them on any
  transport (`virStorageVolDownload`), in bounded pieces.
  - qcow2 disk: a qcow2 *header extension* of bmslice's own type (0x626d736c, "bmsl").
    The qcow2 format lets a writer add extensions of unknown type: readers skip them and
    QEMU keeps them when it rewrites the header. The guest never sees them.
  - seed ISO: the *Application Use* field of the ISO's primary volume descriptor, 512
    bytes that ECMA-119 leaves to the application. cloud-init and the kernel ignore it.
* **What the mark says**: `{"bmslice":1,"vm":..,"uuid":..,"pool":..,"volume":..}` — the
  slice, its domain UUID, and the pool and name the volume was made under, so a copy of
  a bmslice volume under another name or pool is not taken for the original. A seed's
  mark adds `files` (sha256 of the files it carries: user-data, meta-data, seed files) and
  `image` (sha256 of the whole ISO with the mark field blank), so a seed is reused only
  when it carries exactly what this run would put on it *and* arrived whole: a truncated
  or zero-filled upload fails the image hash. ISO builders stamp the build time, so the
  files hash, not a byte comparison with a fresh build, says "same content".
* **The gap between create and mark.** libvirt creates a volume and bmslice marks it in
  the next call; a run killed in between leaves an unmarked volume. Apply defines the
  slice's domain *before* it creates the volumes, so the domain (an atomic libvirt write)
  records the intent: an unmarked volume under a path that a bmslice domain of that name
  lists is taken as bmslice's unfinished work only when it holds no data at all (a raw
  volume of zeros; a qcow2 volume whose L1 table is empty and that has no snapshots).
  Anything else unmarked is someone else's: apply refuses it, destroy leaves it in place.
* What the mark does not do: it is not a secret (anyone with write access to the pool can
  forge one — they can also delete the volume), and it does not tell two hosts apart that
  share one storage pool and a VM name.

Everything here is pure (bytes in, bytes out); storage.py does the libvirt I/O.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace

from bmslice.errors import ApplyError, SpecError
from bmslice.model.input_file import parse_json

MARK_VERSION = 1


@dataclass(frozen=True)
class Mark:
    vm: str
    uuid: str
    pool: str
    volume: str
    files: str = ""  # seed only: files_digest() of what the seed carries
    image: str = ""  # seed only: sha256 of the ISO with the mark field blank

    def encode(self) -> bytes:
        fields: dict[str, object] = {"bmslice": MARK_VERSION, "vm": self.vm, "uuid": self.uuid}
        fields.update(pool=self.pool, volume=self.volume)
        if self.files:
            fields.update(files=self.files, image=self.image)
        return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Mark | None:
        """The mark in `raw`, or None when `raw` is not a bmslice mark (anything else is no mark)."""
        try:  # the strict reader: a header of 5,000 "[" was a RecursionError out of json.loads
            fields = parse_json(raw.decode(), "mark")
        except (UnicodeDecodeError, SpecError):
            return None
        if not isinstance(fields, dict) or fields.get("bmslice") != MARK_VERSION:
            return None
        values = {k: fields.get(k, "") for k in ("vm", "uuid", "pool", "volume", "files", "image")}
        if not all(isinstance(v, str) for v in values.values()):
            return None
        return cls(**values)

    def owner(self) -> tuple[str, str, str, str]:
        """What the mark says the volume is: (vm, domain uuid, pool, volume name)."""
        return (self.vm, self.uuid, self.pool, self.volume)


def files_digest(files: Mapping[str, str]) -> str:
    """sha256 over the seed's files, names and contents length-prefixed so no two sets collide."""
    digest = hashlib.sha256()
    for name, text in sorted(files.items()):
        for part in (name.encode(), text.encode()):
            digest.update(struct.pack(">Q", len(part)))
            digest.update(part)
    return digest.hexdigest()


# --- qcow2: a header extension of bmslice's own type -----------------------------------
# Header (big-endian): magic 'QFI\xfb', version, backing_file_offset (u64 @8), backing_file_size
# (u32 @16), cluster_bits (u32 @20), ..., l1_size (u32 @36), l1_table_offset (u64 @40), ...,
# nb_snapshots (u32 @60), and for version 3 header_length (u32 @100). Extensions follow the
# header: (type u32, length u32, data padded to 8 bytes), ending with type 0. All of it, and
# the backing file name, sits in the first cluster.

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_MARK_TYPE = 0x626D736C  # "bmsl"
QCOW2_HEAD_BYTES = 65536  # what is read of a volume to find its mark: the first (default-size) cluster


@dataclass(frozen=True)
class Qcow2Head:
    version: int
    cluster_size: int
    header_length: int
    backing_offset: int
    backing_size: int
    l1_size: int
    l1_offset: int
    snapshots: int
    extensions: tuple[tuple[int, bytes], ...]
    extensions_end: int  # offset just past the end-of-extensions entry


def read_qcow2_head(head: bytes) -> Qcow2Head | None:
    """The header of a qcow2 image from its first bytes, or None when they are not one."""
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        return None
    version, backing_offset, backing_size, cluster_bits = struct.unpack_from(">IQII", head, 4)
    l1_size, l1_offset = struct.unpack_from(">IQ", head, 36)
    (snapshots,) = struct.unpack_from(">I", head, 60)
    if version not in (2, 3) or not 9 <= cluster_bits <= 21:
        return None
    header_length = struct.unpack_from(">I", head, 100)[0] if version == 3 and len(head) >= 104 else 72
    limit = min(len(head), 1 << cluster_bits, backing_offset or len(head))
    extensions: list[tuple[int, bytes]] = []
    offset = header_length
    while True:
        if offset + 8 > limit:
            return None  # no end marker inside the header cluster: not something we may edit
        kind, length = struct.unpack_from(">II", head, offset)
        if kind == 0:
            break
        end = offset + 8 + length
        if end > limit:
            return None
        extensions.append((kind, head[offset + 8 : end]))
        offset += 8 + (length + 7) // 8 * 8
    return Qcow2Head(
        version,
        1 << cluster_bits,
        header_length,
        backing_offset,
        backing_size,
        l1_size,
        l1_offset,
        snapshots,
        tuple(extensions),
        offset + 8,
    )


def qcow2_mark(head: bytes) -> Mark | None:
    parsed = read_qcow2_head(head)
    if parsed is None:
        return None
    for kind, data in parsed.extensions:
        if kind == QCOW2_MARK_TYPE:
            return Mark.decode(data)
    return None


def qcow2_with_mark(head: bytes, mark: Mark) -> bytes:
    """The first bytes of the image rewritten to carry `mark`; upload them at offset 0.

    The extensions are rewritten with ours added (any earlier bmslice mark replaced) and the
    backing file name moved behind them; nothing past the rewritten bytes changes.
    """
    parsed = read_qcow2_head(head)
    if parsed is None or parsed.version != 3:
        raise ApplyError("the volume is not a qcow2 version 3 image; cannot mark it as bmslice's")
    backing = (
        head[parsed.backing_offset : parsed.backing_offset + parsed.backing_size] if parsed.backing_offset else b""
    )
    if len(backing) != parsed.backing_size:
        raise ApplyError("the qcow2 backing file name lies outside the header cluster; cannot mark the volume")
    kept = [(k, d) for k, d in parsed.extensions if k != QCOW2_MARK_TYPE]
    body = b"".join(_qcow2_extension(k, d) for k, d in [*kept, (QCOW2_MARK_TYPE, mark.encode())])
    body += struct.pack(">II", 0, 0)
    new_backing_offset = parsed.header_length + len(body) if backing else 0
    old_end = max(parsed.extensions_end, parsed.backing_offset + parsed.backing_size)
    new_end = parsed.header_length + len(body) + len(backing)
    if new_end > min(parsed.cluster_size, len(head)):
        raise ApplyError("no room in the qcow2 header cluster for bmslice's mark")
    header = bytearray(head[: parsed.header_length])
    struct.pack_into(">Q", header, 8, new_backing_offset)
    out = bytes(header) + body + backing
    return out + bytes(max(old_end, new_end) - len(out))  # clear what the old layout left behind


def _qcow2_extension(kind: int, data: bytes) -> bytes:
    padding = (len(data) + 7) // 8 * 8 - len(data)
    return struct.pack(">II", kind, len(data)) + data + bytes(padding)


def qcow2_is_blank(head: Qcow2Head, l1_table: bytes) -> bool:
    """No guest data and no snapshots: every L1 entry is zero (`l1_table` holds all l1_size entries)."""
    return head.snapshots == 0 and len(l1_table) == head.l1_size * 8 and not any(l1_table)


# --- ISO 9660 seed: the primary volume descriptor's Application Use field ------------------

SECTOR = 2048
PVD_OFFSET = 16 * SECTOR  # the first volume descriptor; for the seeds we build, the primary one
_APP_USE = slice(883, 883 + 512)


def _is_pvd(sector: bytes) -> bool:
    return len(sector) == SECTOR and sector[:6] == b"\x01CD001"


def _blank_app_use(image: bytes) -> bytes:
    patched = bytearray(image)
    patched[PVD_OFFSET + _APP_USE.start : PVD_OFFSET + _APP_USE.stop] = b" " * 512
    return bytes(patched)


def image_digest(image: bytes) -> str:
    """sha256 of the ISO with its mark field blank (what the mark's `image` records)."""
    return hashlib.sha256(_blank_app_use(image)).hexdigest()


def iso_with_mark(image: bytes, mark: Mark) -> bytes:
    """`image` (an ISO whose first descriptor is the primary one) carrying `mark` with its image hash."""
    if not _is_pvd(image[PVD_OFFSET : PVD_OFFSET + SECTOR]):
        raise ApplyError("the seed image has no primary volume descriptor at sector 16")
    raw = replace(mark, image=image_digest(image)).encode()
    if len(raw) > 512:
        raise ApplyError(f"names too long for the seed's ownership mark ({len(raw)} bytes, 512 fit)")
    patched = bytearray(image)
    patched[PVD_OFFSET + _APP_USE.start : PVD_OFFSET + _APP_USE.stop] = raw.ljust(512, b" ")
    return bytes(patched)


def iso_mark(pvd: bytes) -> Mark | None:
    """The mark in the ISO's primary volume descriptor (the sector at PVD_OFFSET), if any."""
    if not _is_pvd(pvd):
        return None
    return Mark.decode(pvd[_APP_USE].rstrip(b" \0"))


def iso_is_whole(image: bytes, mark: Mark) -> bool:
    """The image arrived whole: its hash (mark field blank) is the one the mark records."""
    return bool(mark.image) and image_digest(image) == mark.image
