"""L3 ways and memory bandwidth per slice: spec sizes -> contiguous way masks, checked against resctrl.

`cache: {l3: 8MiB, memory_bandwidth: 40}` reserves, on each L3 domain the VM's vCPUs use,
ceil(8 MiB / way size) ways (way size = L3 size / ways in info/L3/cbm_mask; at least
min_cbm_bits), and caps the vCPUs' memory bandwidth at 40% there (MBA). The emulator thread
and IOThreads stay in the host's (default) group: libvirt's <cachetune> and <memorytune>
take vCPUs only.

How the masks are laid out, and why they are the ones libvirt writes: libvirt turns a size
into ways itself, in the smallest free run of ways that fits (the first one when several
do), where free means in no resctrl group, the default group included. So per L3 domain:

- the host (the default group) keeps the lowest ways, [0, h), at least min_cbm_bits of them;
- ways that other groups hold (running slices, anyone else's groups) stay theirs;
- the new slices get their ways by libvirt's own rule, applied to what is above h in the
  order apply starts them (spec order); h is the largest that leaves every one room.

Once host-config has narrowed the default group to [0, h), libvirt starting the VMs in
spec order writes exactly these masks; a slice restarted on its own finds only its own
ways free and gets them back. Masks never overlap, and the host keeps its minimum.

>>> smallest_fit(0b1111_0000_0000, 3)  # one free run of 4 ways from bit 8: its start
1792
>>> smallest_fit(0b1100_0111_0000, 2)  # runs of 3 and of 2: the exact fit
3072
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from bmslice.errors import PlanError
from bmslice.model.plan import CacheTune, Plan, VmPlan, WayMask
from bmslice.model.spec import Spec
from bmslice.model.topology import CacheDomain, HostTopology, Resctrl, ResctrlGroup
from bmslice.topology.resctrl import group_vm


def smallest_fit(free: int, ways: int) -> int | None:
    """libvirt's choice in a free-ways mask: the first run of exactly `ways`, else the first of
    the smallest runs longer than that; the mask of the `ways` lowest ways of that run."""
    best: tuple[int, int] | None = None  # (run length, start)
    bit = 0
    while free >> bit:
        if not free >> bit & 1:
            bit += 1
            continue
        start = bit
        while free >> bit & 1:
            bit += 1
        length = bit - start
        if length == ways:
            best = (length, start)
            break
        if length > ways and (best is None or length < best[0]):
            best = (length, start)
    return None if best is None else ((1 << ways) - 1) << best[1]


@dataclass(frozen=True)
class _Domain:
    cache: CacheDomain
    way_kib: int
    total: int  # ways in cbm_mask


def _refuse(origin: str, text: str) -> PlanError:
    return PlanError(f"{origin}: {text}")


def _where(topo: HostTopology) -> str:
    return topo.source or "this host"


def _check_resctrl(topo: HostTopology, vm: str, l3: bool, bandwidth: int | None, origin: str) -> Resctrl:
    """The host's resctrl, or one line saying why the request cannot be met (never ignored)."""
    asked = "cache.l3" if l3 else "cache.memory_bandwidth"
    rc = topo.resctrl
    if rc is None:
        raise _refuse(origin, f"{vm}: {asked} needs resctrl (Intel RDT / AMD QoS), which {_where(topo)} does not show")
    if not rc.mounted:
        raise _refuse(
            origin,
            f"{vm}: {asked} needs resctrl mounted: mount -t resctrl resctrl /sys/fs/resctrl "
            "(bmslice host-config writes a mount unit for it), then plan again",
        )
    if not topo.l3_domains:
        raise _refuse(origin, f"{vm}: {asked}: {_where(topo)} does not say which CPUs share which L3 cache")
    if l3 and rc.l3 is None:
        why = (
            "is mounted with cdp (L3CODE/L3DATA); bmslice reserves unified ways: remount it without cdp"
            if rc.l3_cdp
            else "has no L3 cache allocation (no info/L3)"
        )
        raise _refuse(origin, f"{vm}: cache.l3: resctrl on {_where(topo)} {why}")
    if bandwidth is not None:
        mb = rc.mb
        if mb is None:
            raise _refuse(
                origin,
                f"{vm}: cache.memory_bandwidth: resctrl on {_where(topo)} has no memory bandwidth allocation (no info/MB)",
            )
        if not mb.percent:
            raise _refuse(
                origin,
                f"{vm}: cache.memory_bandwidth is a percentage, but this host's MB takes absolute limits "
                "(AMD: multiples of 1/8 GB/s; or resctrl mounted with mba_MBps)",
            )
        if bandwidth % mb.bandwidth_gran or bandwidth < mb.min_bandwidth:
            raise _refuse(
                origin,
                f"{vm}: cache.memory_bandwidth {bandwidth}% is not one the host can set: a multiple of "
                f"{mb.bandwidth_gran}% from {mb.min_bandwidth}%",
            )
    return rc


def _domains(topo: HostTopology, rc: Resctrl, origin: str) -> dict[int, _Domain]:
    total = rc.l3.ways if rc.l3 is not None else 0
    out = {}
    for cache in topo.l3_domains:
        if total and cache.size_kib % total:
            raise _refuse(origin, f"L3 cache {cache.id}: {cache.size_kib} KiB does not divide into {total} ways")
        out[cache.id] = _Domain(cache, cache.size_kib // total if total else 0, total)
    return out


def _vcpu_domains(topo: HostTopology, vm: VmPlan) -> tuple[int, ...]:
    found = {topo.l3_of(cpu) for cpu in vm.vcpu_pins}
    return tuple(sorted(d.id for d in found if d is not None))


def _foreign(rc: Resctrl, names: Collection[str]) -> list[ResctrlGroup]:
    """Groups neither the default one nor libvirt's for a VM this plan knows: their ways stay theirs."""
    return [g for g in rc.groups if g.name and group_vm(g.name, names) is None]


def _check_closids(rc: Resctrl, vms: Sequence[VmPlan], foreign: Sequence[ResctrlGroup], origin: str) -> None:
    tuned = [vm.name for vm in vms if vm.cache is not None]
    if 1 + len(foreign) + len(tuned) > rc.closids:
        others = f" and {len(foreign)} other group(s) ({', '.join(g.name for g in foreign)})" if foreign else ""
        raise _refuse(
            origin,
            f"{tuned[-1]}: no resctrl group left: the host gives {rc.closids} (CLOSIDs), the default group{others} "
            f"hold {1 + len(foreign)}, and {len(tuned)} slices ask for one ({', '.join(tuned)})",
        )


def _lowest(mask: int) -> int | None:
    return (mask & -mask).bit_length() - 1 if mask else None


def _lay_out(
    dom: _Domain, min_bits: int, slices: int, others: int, wants: Sequence[tuple[str, int]], held_text: str, origin: str
) -> tuple[int, dict[str, int]]:
    """(host mask, VM -> mask) on one L3 domain: the highest host boundary h that leaves every new
    slice room above it. `slices`: ways running slices hold (the host stays below them); `others`:
    ways other groups hold (libvirt counts them as taken; the kernel lets the host share them)."""
    full = (1 << dom.total) - 1
    top = _lowest(slices)
    top = dom.total if top is None else top
    for h in range(top, min_bits - 1, -1):
        free = full & ~((1 << h) - 1) & ~slices & ~others
        masks: dict[str, int] = {}
        for name, ways in wants:
            mask = smallest_fit(free, ways)
            if mask is None:
                break
            masks[name] = mask
            free &= ~mask
        else:
            return (1 << h) - 1, masks
    asked = sum(w for _, w in wants)
    left = (full & ~((1 << min_bits) - 1) & ~slices & ~others).bit_count()
    node = f" (node {dom.cache.node})" if dom.cache.node is not None else ""
    raise _refuse(
        origin,
        f"{wants[-1][0]}: the slices on L3 cache {dom.cache.id}{node} need {asked} contiguous ways of "
        f"{dom.way_kib} KiB ({', '.join(f'{n} {w}' for n, w in wants)}), only {left} are left: the host keeps "
        f"at least {min_bits}{held_text}",
    )


@dataclass(frozen=True)
class _Held:
    slices: int  # ways running slices hold
    others: int  # ways other groups hold
    text: str  # ", Blue 4, group x 2 held already"


def _held(cache_id: int, running: Sequence[VmPlan], foreign: Sequence[ResctrlGroup]) -> _Held:
    slices = others = 0
    who = []
    for vm in running:
        for way in vm.cache.ways if vm.cache is not None else ():
            if way.cache_id == cache_id:
                slices |= way.mask
                who.append(f"{vm.name} {way.ways}")
    for group in foreign:
        if group.l3_mask(cache_id):
            others |= group.l3_mask(cache_id)
            who.append(f"group {group.name} {group.l3_mask(cache_id).bit_count()}")
    return _Held(slices, others, f", {', '.join(who)} held already" if who else "")


def _ways(
    domains: dict[int, _Domain],
    planned: Sequence[VmPlan],
    new: Collection[str],
    foreign: Sequence[ResctrlGroup],
    min_bits: int,
    origin: str,
) -> tuple[dict[str, tuple[WayMask, ...]], tuple[tuple[int, int], ...]]:
    """New slices' way masks, and the host's mask on every domain where slices hold ways."""
    running = [vm for vm in planned if vm.name not in new]
    masks: dict[str, list[WayMask]] = {}
    host: list[tuple[int, int]] = []
    for cache_id, dom in sorted(domains.items()):
        held = _held(cache_id, running, foreign)
        wants = [
            (vm.name, max(min_bits, math.ceil(vm.cache.l3_kib / dom.way_kib)))
            for vm in planned
            if vm.name in new and vm.cache is not None and vm.cache.l3_kib and cache_id in vm.cache.domains
        ]
        if wants:
            host_mask, placed = _lay_out(dom, min_bits, held.slices, held.others, wants, held.text, origin)
            host.append((cache_id, host_mask))
            for name, mask in placed.items():
                masks.setdefault(name, []).append(WayMask(cache_id, mask, mask.bit_count() * dom.way_kib))
        elif held.slices:
            host.append((cache_id, (1 << (_lowest(held.slices) or 0)) - 1))
    return {name: tuple(ways) for name, ways in masks.items()}, tuple(host)


@dataclass(frozen=True)
class WayBudget:
    """For placement (`l3_placement.py`): the L3 ways each new VM needs in a domain, and the ways
    each domain has left for slices (the host's minimum and what running slices and other
    groups hold taken off). Lenient: whatever cannot be met is refused by `reserve_cache`."""

    needs: dict[str, int]
    free: dict[int, int]


def way_budget(topo: HostTopology, spec: Spec, running: Sequence[VmPlan]) -> WayBudget:
    rc = topo.resctrl
    asks = {vm.name: vm.cache.l3 for vm in spec.vms if vm.cache is not None and vm.cache.l3 is not None}
    if rc is None or rc.l3 is None or not asks or not topo.l3_domains:
        return WayBudget({}, {})
    total, min_bits = rc.l3.ways, rc.l3.min_cbm_bits
    way_kib = max(1, max(d.size_kib for d in topo.l3_domains) // total)
    kept = {vm.name for vm in running}
    needs = {name: max(min_bits, math.ceil(kib / way_kib)) for name, kib in asks.items() if name not in kept}
    foreign = _foreign(rc, kept | set(needs))
    free = {}
    for domain in topo.l3_domains:
        held = _held(domain.id, running, foreign)
        free[domain.id] = max(0, total - min_bits - (held.slices | held.others).bit_count())
    return WayBudget(needs, free)


def _bandwidth(vms: Sequence[VmPlan], new: Collection[str], origin: str) -> None:
    """Caps of the slices on one L3 domain add up to at most 100%: each may count on its share."""
    used: dict[int, list[tuple[str, int]]] = {}
    for vm in vms:
        if vm.cache is not None and vm.cache.memory_bandwidth is not None:
            for domain in vm.cache.domains:
                used.setdefault(domain, []).append((vm.name, vm.cache.memory_bandwidth))
    for domain, caps in sorted(used.items()):
        if sum(p for _, p in caps) > 100:
            late = next((n for n, _ in reversed(caps) if n in new), caps[-1][0])
            before = sum(p for n, p in caps if n != late)
            raise _refuse(
                origin,
                f"{late}: memory_bandwidth on L3 cache {domain}: the other slices there cap "
                f"{before}% ({', '.join(f'{n} {p}%' for n, p in caps if n != late)}), only {100 - before}% is left",
            )


def reserve_cache(
    topo: HostTopology, spec: Spec, vms: Sequence[VmPlan], new: Collection[str], origin: str
) -> tuple[tuple[VmPlan, ...], tuple[tuple[int, int], ...]]:
    """`vms` with their CacheTune (new ones from the spec; running ones keep theirs) and the
    default group's mask per L3 domain (empty when no slice holds ways)."""
    asks = {vm.name: vm.cache for vm in spec.vms if vm.name in new and vm.cache is not None}
    if not asks and not any(vm.cache is not None for vm in vms):
        return tuple(vms), ()
    rc = topo.resctrl
    for name, ask in asks.items():
        rc = _check_resctrl(topo, name, ask.l3 is not None, ask.memory_bandwidth, origin)
    holding = [vm.name for vm in vms if vm.cache is not None and vm.name not in asks]
    if rc is None or not rc.mounted or (rc.l3 is None and any(vm.cache and vm.cache.ways for vm in vms)):
        raise _refuse(
            origin,
            f"running slices reserve cache or memory bandwidth ({', '.join(holding)}), "
            f"but {_where(topo)} shows no mounted resctrl with what they hold",
        )
    domains = _domains(topo, rc, origin)
    planned = [
        replace(vm, cache=CacheTune(asks[vm.name].l3, asks[vm.name].memory_bandwidth, _vcpu_domains(topo, vm)))
        if vm.name in asks
        else vm
        for vm in vms
    ]
    foreign = _foreign(rc, {vm.name for vm in vms})
    _check_closids(rc, planned, foreign, origin)
    _bandwidth(planned, new, origin)
    min_bits = rc.l3.min_cbm_bits if rc.l3 is not None else 1
    masks, host = _ways(domains, planned, asks, foreign, min_bits, origin)
    out = tuple(
        replace(vm, cache=replace(vm.cache, ways=masks.get(vm.name, ())))
        if vm.cache is not None and vm.name in asks
        else vm
        for vm in planned
    )
    return out, host if any(vm.cache and vm.cache.ways for vm in out) else ()


def host_ways_conflicts(plan: Plan, resctrl: Resctrl | None, names: Sequence[str]) -> list[str]:
    """Planned ways of slices about to start that the host's default group still holds: libvirt
    would find no room for them (bmslice host-config's bmslice-resctrl.service narrows it)."""
    if resctrl is None or not resctrl.groups:
        return []
    default = resctrl.groups[0]
    out = []
    for vm in plan.vms:
        for way in vm.cache.ways if vm.cache is not None and vm.name in names else ():
            if default.l3_mask(way.cache_id) & way.mask:
                out.append(
                    f"{vm.name}: L3 ways {way.mask:x} on cache {way.cache_id} are still the host's "
                    f"(default group {default.l3_mask(way.cache_id):x})"
                )
    return out
