"""A slice's volumes: whose each one is, and the steps that create, reuse, finish or rebuild them.

A volume under a slice's disk or seed name is one of:
- missing: apply creates it (marked as bmslice's, ownership.py);
- bmslice's: its mark names this slice and this pool/volume. The disk is reused; the seed
  is reused only when it carries exactly this run's files and arrived whole, else rebuilt;
- unfinished: no mark, but the slice's bmslice domain lists it and it holds no data — a
  run was killed between creating and marking it. Apply finishes it, destroy removes it;
- someone else's: anything else. Apply refuses it for a new slice, before any change;
  a slice already defined on it (by an older bmslice, or the file was swapped) goes on
  using it untouched, with a warning. Destroy leaves it in place.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bmslice.apply import storage
from bmslice.apply.ownership import Mark, iso_is_whole
from bmslice.apply.seed import Seed
from bmslice.apply.storage import VolumeInfo
from bmslice.apply.transaction import Step, uninterrupted
from bmslice.errors import ApplyError
from bmslice.model.spec import DiskSpec, VmSpec
from bmslice.render.domain_model import domain_uuid

DEFAULT_POOL = "default"


def disk_name(vm: str) -> str:
    return f"{vm}.qcow2"


def seed_name(vm: str) -> str:
    return f"{vm}-seed.iso"


@dataclass(frozen=True)
class Slot:
    """Where one of a slice's volumes lives (or will)."""

    vm: str
    pool: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.pool}/{self.name}"

    def mark(self) -> Mark:
        return Mark(self.vm, domain_uuid(self.vm), self.pool, self.name)


def disk_slot(vm_spec: VmSpec) -> Slot | None:
    return Slot(vm_spec.name, vm_spec.disk.pool, disk_name(vm_spec.name)) if vm_spec.disk is not None else None


def seed_slot(vm_spec: VmSpec) -> Slot | None:
    if vm_spec.cloud_init is None:
        return None
    pool_name = vm_spec.disk.pool if vm_spec.disk is not None else DEFAULT_POOL
    return Slot(vm_spec.name, pool_name, seed_name(vm_spec.name))


class Owner(enum.Enum):
    MISSING = "missing"
    OURS = "bmslice's"
    UNFINISHED = "unfinished"
    FOREIGN = "someone else's"


@dataclass(frozen=True)
class Found:
    owner: Owner
    vol: Any | None = None
    info: VolumeInfo | None = None
    why: str = ""  # for a foreign volume: why it is not bmslice's


def examine(vol: Any | None, slot: Slot, listed: bool) -> Found:
    """Whose the volume is; `listed`: the slice's bmslice domain names this volume as its own."""
    if vol is None:
        return Found(Owner.MISSING)
    info = storage.inspect(vol)
    if info.mark is not None:
        if info.mark.owner() == slot.mark().owner():
            return Found(Owner.OURS, vol, info)
        other = info.mark
        return Found(Owner.FOREIGN, vol, info, f"its bmslice mark is for {other.vm}'s {other.pool}/{other.volume}")
    if listed and storage.holds_no_data(vol, info):
        return Found(Owner.UNFINISHED, vol, info)
    return Found(Owner.FOREIGN, vol, info, "it carries no bmslice mark")


def examine_slot(pool_obj: Any, slot: Slot, listed: bool) -> Found:
    return examine(storage.find_volume(pool_obj, slot.name), slot, listed)


def refusal(slot: Slot, found: Found) -> ApplyError:
    return ApplyError(
        f"volume {slot.label} already exists and bmslice did not create it ({found.why}); bmslice neither "
        "adopts nor deletes it: move it out of the way or give the VM another name"
    )


def _not_ours(slot: Slot, found: Found, new_slice: bool, warn: Callable[[str], None]) -> list[Step]:
    if new_slice:
        raise refusal(slot, found)
    warn(
        f"volume {slot.label} is not bmslice's ({found.why}): the slice goes on using it; "
        "bmslice does not change it, and destroy keeps it"
    )
    return []


def _delete_step_undo(pool_obj: Any, slot: Slot) -> None:
    """Undo a creation of this run: the volume goes (already gone is fine, an error is raised)."""
    vol = storage.find_volume(pool_obj, slot.name)
    if vol is not None:
        storage.delete_volume(vol)


def disk_steps(
    pool_obj: Any,
    slot: Slot,
    disk: DiskSpec,
    listed: bool,
    new_slice: bool,
    warn: Callable[[str], None],
    running: bool = False,
) -> list[Step]:
    """`running`: the slice runs now; a disk gone from under it is not replaced by an empty one."""
    found = examine_slot(pool_obj, slot, listed)
    if found.owner is Owner.FOREIGN:
        return _not_ours(slot, found, new_slice, warn)
    if found.owner is Owner.MISSING and running:  # QEMU still holds the old file; a new one would hide that
        warn(f"volume {slot.label} is gone from under the running {slot.vm}; stop it, then apply creates an empty one")
        return []
    if found.owner is Owner.OURS:
        return [Step(f"reuse volume {slot.label}", lambda: None)] if new_slice else []
    if found.owner is Owner.UNFINISHED:
        vol = found.vol
        return [
            Step(
                f"mark volume {slot.label} as bmslice's (an interrupted run left it unmarked)",
                lambda: storage.mark_disk(vol, slot.mark()),
            )
        ]
    backing = f" backed by {disk.image}" if disk.image else ""
    return [
        Step(
            f"create volume {slot.label} ({disk.size} MiB qcow2{backing})",
            lambda: storage.create_disk(pool_obj, slot.name, disk, slot.mark()),
            lambda: _delete_step_undo(pool_obj, slot),
            f"delete volume {slot.label}",
        )
    ]


def seed_steps(
    pool_obj: Any, slot: Slot, seed: Seed, listed: bool, new_slice: bool, warn: Callable[[str], None]
) -> list[Step]:
    found = examine_slot(pool_obj, slot, listed)
    image = seed.image(slot.mark())
    if found.owner is Owner.FOREIGN:
        return _not_ours(slot, found, new_slice, warn)
    if found.owner is Owner.MISSING:
        return [
            Step(
                f"create cloud-init seed {slot.label}",
                lambda: storage.create_seed(pool_obj, slot.name, image),
                lambda: _delete_step_undo(pool_obj, slot),
                f"delete seed {slot.label}",
            )
        ]
    assert found.vol is not None and found.info is not None
    why = _seed_fault(found, seed, image)
    if why is None:
        return [Step(f"reuse seed {slot.label}", lambda: None)] if new_slice else []
    return [_rebuild_seed_step(pool_obj, slot, found, image, why)]


def _seed_fault(found: Found, seed: Seed, image: bytes) -> str | None:
    """Why the existing seed cannot stay, or None when it is exactly what this run builds."""
    info = found.info
    mark = info.mark if info is not None else None
    if found.owner is Owner.UNFINISHED or info is None or mark is None:
        return "an interrupted run left it empty"
    if mark.files != seed.digest:
        return "its content differs from this run's"
    if info.capacity != len(image) or not iso_is_whole(storage.download(found.vol, 0, info.capacity), mark):
        return "it is incomplete: an interrupted upload"
    return None


def _rebuild_seed_step(pool_obj: Any, slot: Slot, found: Found, image: bytes, why: str) -> Step:
    assert found.info is not None
    capacity = found.info.capacity
    old: list[bytes] = []

    def rebuild() -> None:
        if capacity > storage.BLANK_SCAN_MAX:
            raise ApplyError(f"seed {slot.label} is larger than {storage.BLANK_SCAN_MAX >> 20} MiB; not replacing it")
        old.append(storage.download(found.vol, 0, capacity))  # to put back if this run fails
        storage.delete_volume(found.vol)
        try:
            storage.create_seed(pool_obj, slot.name, image)
        except BaseException as exc:
            with uninterrupted():
                try:
                    storage.create_seed(pool_obj, slot.name, old[0])
                except Exception as lost:
                    raise ApplyError(f"{exc}; and the previous seed could not be put back: {lost}") from exc
            raise

    def restore() -> None:
        _delete_step_undo(pool_obj, slot)
        if old:
            storage.create_seed(pool_obj, slot.name, old[0])

    return Step(
        f"rebuild cloud-init seed {slot.label} ({why})", rebuild, restore, f"put back the previous seed {slot.label}"
    )
