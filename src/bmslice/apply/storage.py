"""Volumes through libvirt's storage API: the VM's qcow2 disk and its cloud-init seed ISO.

Going through the API (not the filesystem) keeps remote hosts (qemu+ssh://) working:
content moves through libvirt streams, in pieces well under libvirt's per-message limit
(32 MiB), so a seed of any size uploads, and a download reads only the bytes it asks for.
Every volume created here is marked as bmslice's at once (ownership.py says how and why).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from bmslice.apply import ownership
from bmslice.apply.libvirt_conn import NO_VOLUME, LibvirtError, reason
from bmslice.apply.ownership import Mark
from bmslice.apply.transaction import checkpoint
from bmslice.errors import ApplyError
from bmslice.model.spec import DiskSpec

_Sub = etree.SubElement

CHUNK = 1 << 20  # bytes per stream message: far below libvirt's 32 MiB limit, few round trips
L1_TABLE_MAX = 1 << 20  # a qcow2 L1 table larger than this (an 8 PiB disk) is not read to prove it blank
BLANK_SCAN_MAX = 256 << 20  # a raw volume larger than this is not read to prove it blank


def pool(conn: Any, name: str) -> Any:
    try:
        found = conn.storagePoolLookupByName(name)
    except LibvirtError as exc:
        raise ApplyError(f"storage pool {name!r}: {reason(exc)}") from None
    if not found.isActive():
        raise ApplyError(f"storage pool {name!r} is not active (virsh pool-start {name})")
    return found


def pool_path(pool_obj: Any) -> str:
    target = etree.fromstring(pool_obj.XMLDesc(0).encode()).findtext("target/path")
    if not target:
        raise ApplyError(f"storage pool {pool_obj.name()!r} has no target path")
    return str(target)


def find_volume(pool_obj: Any, name: str) -> Any | None:
    """The volume, or None when the pool has none of that name (any other error is raised)."""
    try:
        return pool_obj.storageVolLookupByName(name)
    except LibvirtError as exc:
        if exc.get_error_code() == NO_VOLUME:
            return None
        raise ApplyError(f"cannot look up volume {pool_obj.name()}/{name}: {reason(exc)}") from None


# --- streams ------------------------------------------------------------------------------


def download(vol: Any, offset: int, length: int) -> bytes:
    """Up to `length` bytes of the volume from `offset` (fewer when the volume ends first)."""
    stream = vol.connect().newStream(0)
    chunks: list[bytes] = []
    try:
        vol.download(stream, offset, length, 0)
        got = 0
        while got < length:
            data = stream.recv(min(CHUNK, length - got))
            if not isinstance(data, bytes) or not data:
                break
            chunks.append(data)
            got += len(data)
        stream.finish()
    except BaseException:
        with contextlib.suppress(LibvirtError):
            stream.abort()
        raise
    return b"".join(chunks)


def upload(vol: Any, data: bytes, offset: int = 0) -> None:
    """Write `data` into the volume at `offset`, one piece per message; a pending signal stops it."""
    stream = vol.connect().newStream(0)
    try:
        vol.upload(stream, offset, len(data), 0)
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            checkpoint()
            count = stream.send(bytes(view[sent : sent + CHUNK]))
            if count <= 0:
                raise ApplyError(f"libvirt accepted no data for volume {vol.name()}")
            sent += count
        stream.finish()
    except BaseException:
        with contextlib.suppress(LibvirtError):
            stream.abort()
        raise


# --- what a volume is ---------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    path: str
    format: str  # "qcow2", "raw", "iso", ...
    capacity: int  # bytes
    mark: Mark | None


def inspect(vol: Any) -> VolumeInfo:
    """The volume's format and size, and the bmslice mark it carries (if any)."""
    desc = etree.fromstring(vol.XMLDesc(0).encode())
    fmt = desc.find("target/format")
    kind = fmt.get("type", "raw") if fmt is not None else "raw"
    capacity = int(vol.info()[1])
    mark = None
    if kind == "qcow2":
        mark = ownership.qcow2_mark(download(vol, 0, ownership.QCOW2_HEAD_BYTES))
    elif kind in ("raw", "iso") and capacity >= ownership.PVD_OFFSET + ownership.SECTOR:
        mark = ownership.iso_mark(download(vol, ownership.PVD_OFFSET, ownership.SECTOR))
    return VolumeInfo(vol.name(), vol.path(), kind, capacity, mark)


def holds_no_data(vol: Any, info: VolumeInfo) -> bool:
    """Provably empty: a qcow2 with no data clusters and no snapshots, or a raw volume of zeros."""
    if info.format == "qcow2":
        head = ownership.read_qcow2_head(download(vol, 0, ownership.QCOW2_HEAD_BYTES))
        if head is None or head.l1_size * 8 > L1_TABLE_MAX:
            return False
        return ownership.qcow2_is_blank(head, download(vol, head.l1_offset, head.l1_size * 8))
    if info.format in ("raw", "iso") and info.capacity <= BLANK_SCAN_MAX:
        return _all_zero(vol, info.capacity)
    return False


def _all_zero(vol: Any, length: int) -> bool:
    for offset in range(0, length, CHUNK):
        piece = download(vol, offset, min(CHUNK, length - offset))
        if any(piece) or len(piece) < min(CHUNK, length - offset):
            return False
    return True


# --- creating and deleting ------------------------------------------------------------------


def disk_volume_xml(name: str, disk: DiskSpec, backing_format: str = "qcow2") -> str:
    """A qcow2 volume; with an image it is a thin overlay on it, never a full copy."""
    vol = etree.Element("volume")
    _Sub(vol, "name").text = name
    _Sub(vol, "capacity", unit="MiB").text = str(disk.size)
    target = _Sub(vol, "target")
    _Sub(target, "format", type="qcow2")
    _Sub(target, "compat").text = "1.1"
    if disk.image is not None:
        backing = _Sub(vol, "backingStore")
        _Sub(backing, "path").text = str(disk.image)
        _Sub(backing, "format", type=backing_format)
    return etree.tostring(vol, encoding="unicode")


def create_disk(pool_obj: Any, name: str, disk: DiskSpec, mark: Mark) -> Any:
    if disk.image is not None and not disk.image.is_absolute():
        raise ApplyError(f"disk image {disk.image} must be an absolute path on the host")
    try:
        vol = pool_obj.createXML(disk_volume_xml(name, disk), 0)
    except LibvirtError as exc:
        raise ApplyError(f"cannot create volume {name} in pool {pool_obj.name()}: {reason(exc)}") from None
    _or_delete(vol, lambda: mark_disk(vol, mark))
    return vol


def mark_disk(vol: Any, mark: Mark) -> None:
    """Write `mark` into the qcow2 volume's header (bmslice's own header extension)."""
    upload(vol, ownership.qcow2_with_mark(download(vol, 0, ownership.QCOW2_HEAD_BYTES), mark))


def create_seed(pool_obj: Any, name: str, image: bytes) -> Any:
    """A raw volume holding `image` (a marked seed ISO); its mark is written before the rest."""
    vol_el = etree.Element("volume")
    _Sub(vol_el, "name").text = name
    _Sub(vol_el, "capacity", unit="bytes").text = str(len(image))
    _Sub(vol_el, "allocation", unit="bytes").text = "0"  # sparse: the upload fills it, no zeros written first
    _Sub(_Sub(vol_el, "target"), "format", type="raw")
    try:
        vol = pool_obj.createXML(etree.tostring(vol_el, encoding="unicode"), 0)
    except LibvirtError as exc:
        raise ApplyError(f"cannot create seed volume {name}: {reason(exc)}") from None
    pvd = slice(ownership.PVD_OFFSET, ownership.PVD_OFFSET + ownership.SECTOR)

    def fill() -> None:
        upload(vol, image[pvd], ownership.PVD_OFFSET)  # the mark first: a cut upload is still known as ours
        upload(vol, image)

    _or_delete(vol, fill)
    return vol


def _or_delete(vol: Any, finish: Callable[[], None]) -> None:
    """Finish a volume just created; on any failure (a signal included) delete it again."""
    try:
        finish()
    except LibvirtError as exc:
        _delete_quietly(vol)
        raise ApplyError(f"cannot write volume {vol.name()}: {reason(exc)}") from None
    except BaseException:
        _delete_quietly(vol)
        raise


def _delete_quietly(vol: Any) -> None:
    with contextlib.suppress(LibvirtError):  # the original failure is the one to report
        vol.delete(0)


def delete_volume(vol: Any) -> None:
    vol.delete(0)
