"""Volumes through libvirt's storage API: the VM's qcow2 disk and its cloud-init seed ISO.

Going through the API (not the filesystem) keeps remote hosts (qemu+ssh://) working: the
seed is uploaded through a libvirt stream.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from bmslice.apply.libvirt_conn import LibvirtError, reason
from bmslice.errors import ApplyError
from bmslice.model.spec import DiskSpec

_Sub = etree.SubElement


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
    try:
        return pool_obj.storageVolLookupByName(name)
    except LibvirtError:
        return None


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


def create_disk(pool_obj: Any, name: str, disk: DiskSpec) -> Any:
    if disk.image is not None and not disk.image.is_absolute():
        raise ApplyError(f"disk image {disk.image} must be an absolute path on the host")
    try:
        return pool_obj.createXML(disk_volume_xml(name, disk), 0)
    except LibvirtError as exc:
        raise ApplyError(f"cannot create volume {name} in pool {pool_obj.name()}: {reason(exc)}") from None


def upload_seed(conn: Any, pool_obj: Any, name: str, data: bytes) -> Any:
    vol_el = etree.Element("volume")
    _Sub(vol_el, "name").text = name
    _Sub(vol_el, "capacity", unit="bytes").text = str(len(data))
    _Sub(_Sub(vol_el, "target"), "format", type="raw")
    try:
        vol = pool_obj.createXML(etree.tostring(vol_el, encoding="unicode"), 0)
    except LibvirtError as exc:
        raise ApplyError(f"cannot create seed volume {name}: {reason(exc)}") from None
    try:
        stream = conn.newStream(0)
        vol.upload(stream, 0, len(data), 0)
        stream.send(data)
        stream.finish()
    except LibvirtError as exc:
        vol.delete(0)
        raise ApplyError(f"cannot upload seed volume {name}: {reason(exc)}") from None
    return vol


def delete_volume(pool_obj: Any, name: str) -> bool:
    vol = find_volume(pool_obj, name)
    if vol is None:
        return False
    vol.delete(0)
    return True
