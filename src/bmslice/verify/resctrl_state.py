"""A slice's resctrl group as the kernel shows it, against the plan: its L3 ways, its bandwidth
cap, and that its vCPU threads are the group's tasks. Read through FsRoot, so host trees
replay it; the comparison itself is pure.

libvirt names a VM's group `qemu-<domain id>-<machine name>-vcpus_<vCPUs>` below
/sys/fs/resctrl and writes its vCPU thread ids to the group's `tasks`. Ways of the same
size at another position than the plan's (the VMs started in another order) are a note,
not drift, as long as no other group, the host's included, holds any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bmslice.model.plan import VmPlan
from bmslice.model.topology import ResctrlGroup
from bmslice.topology.fsroot import FsRoot
from bmslice.topology.resctrl import group_vm, read_group_tasks, read_groups
from bmslice.verify.compare import thread_role
from bmslice.verify.host_state import read_processes


@dataclass(frozen=True)
class SliceResctrl:
    """What the host shows for one slice: every group (default first), its own, and its vCPU threads."""

    groups: tuple[ResctrlGroup, ...]
    group: ResctrlGroup | None
    tasks: tuple[int, ...] = ()
    vcpu_threads: dict[int, int] = field(default_factory=dict)  # vCPU -> thread id (QEMU running)


def read_slice_resctrl(fs: FsRoot, name: str) -> SliceResctrl:
    groups = read_groups(fs)
    own = next((g for g in groups if g.name and group_vm(g.name, {name}) == name), None)
    tasks = read_group_tasks(fs, own.name) if own is not None else ()
    threads: dict[int, int] = {}
    for process in read_processes(fs):
        if process.guest == name:
            for task in process.tasks:
                role = thread_role(task.comm)
                if role is not None and role[0] == "vcpu":
                    threads[role[1]] = task.tid
    return SliceResctrl(groups, own, tasks, threads)


def _overlaps(vm: str, group: ResctrlGroup, groups: Sequence[ResctrlGroup], cache_id: int) -> list[str]:
    mine = group.l3_mask(cache_id)
    out = []
    for other in groups:
        if other.name != group.name and other.l3_mask(cache_id) & mine:
            who = "the host (default group)" if not other.name else f"group {other.name}"
            out.append(
                f"{vm} L3 ways {mine:x} on cache {cache_id} overlap {who}'s {other.l3_mask(cache_id):x}: not exclusive"
            )
    return out


def compare_resctrl(vm: VmPlan, seen: SliceResctrl) -> tuple[list[str], list[str]]:
    """(drift, notes) of a running slice's resctrl group against its plan."""
    tune = vm.cache
    if tune is None:
        return [], []
    group = seen.group
    if group is None:
        return [f"{vm.name} has no resctrl group: its cachetune/memorytune did not take effect"], []
    drift: list[str] = []
    notes: list[str] = []
    for way in tune.ways:
        have = group.l3_mask(way.cache_id)
        if have.bit_count() != way.ways:
            drift.append(
                f"{vm.name} holds {have.bit_count()} L3 ways ({have:x}) on cache {way.cache_id}, "
                f"plan says {way.ways} ({way.mask:x})"
            )
            continue
        drift += _overlaps(vm.name, group, seen.groups, way.cache_id)
        if have != way.mask:
            notes.append(
                f"{vm.name} holds L3 ways {have:x} on cache {way.cache_id}, the plan laid out {way.mask:x} "
                "(libvirt started the slices in another order); as many ways, held by it alone"
            )
    mb = dict(group.mb)
    for domain in tune.domains if tune.memory_bandwidth is not None else ():
        if mb.get(domain) != tune.memory_bandwidth:
            drift.append(
                f"{vm.name} memory bandwidth on L3 cache {domain} is {mb.get(domain, 'unset')}%, "
                f"plan says {tune.memory_bandwidth}%"
            )
    for vcpu, tid in sorted(seen.vcpu_threads.items()):
        if tid not in seen.tasks:
            drift.append(f"{vm.name} vCPU {vcpu} (thread {tid}) is not in its resctrl group {group.name}")
    return drift, notes
