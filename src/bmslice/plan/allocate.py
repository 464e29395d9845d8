"""Turn "these VMs go to this node" into concrete cores and 1:1 vCPU pins.

Within a node, VMs take cores in spec order, lowest CPU number first: the dedicated
emulator core, then one SMT core per guest vCPU pair, then a core for an odd last vCPU.
Guest vCPUs 2i and 2i+1 land on the two threads of one host core, so the guest sees
real sibling pairs. On the design note's server, Red on node 0 gets emulator 2,14 and
vCPUs 4,16,6,18,8,20,10,22.

The split between one-thread and two-thread cores follows `NodeFree.split`, so any load
the placement search accepted is allocated here without running short.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.topology import Core
from bmslice.plan.capacity import Load, NodeFree


@dataclass(frozen=True)
class NodeRequest:
    name: str
    vcpus: int
    dedicated_emulator: bool


@dataclass(frozen=True)
class Allocation:
    vcpu_pins: tuple[int, ...]
    vcpu_cores: tuple[CpuSet, ...]
    emulator_core: CpuSet | None
    sibling_pairs: bool  # every guest vCPU pair sits on one host SMT core

    @property
    def cores(self) -> tuple[CpuSet, ...]:
        head = (self.emulator_core,) if self.emulator_core is not None else ()
        return tuple(sorted(head + self.vcpu_cores, key=CpuSet.min))


def lowest_first(core: Core) -> tuple[int, ...]:
    return (core.first,)


class _Pool:
    """Free cores of one node with the reservations that keep the split feasible."""

    def __init__(
        self,
        cores: Sequence[Core],
        singles_total: int,
        pairs_total: int,
        memory_mib: int,
        order: Callable[[Core], tuple[int, ...]] = lowest_first,
    ) -> None:
        self.twos = deque(c.cpus for c in sorted(cores, key=order) if c.threads == 2)
        self.ones = deque(c.cpus for c in sorted(cores, key=order) if c.threads == 1)
        free = NodeFree(-1, len(self.twos), len(self.ones), memory_mib)
        split = free.split(Load(singles_total, pairs_total, 0))
        if split is None:
            raise PlanError("internal: allocation asked for more cores than the node has")
        self.ones_for_singles, self.twos_for_singles = split

    def single(self) -> CpuSet:
        if self.ones_for_singles > 0:
            self.ones_for_singles -= 1
            return self.ones.popleft()
        self.twos_for_singles -= 1
        return self.twos.popleft()

    def pair(self) -> tuple[CpuSet, ...]:
        if len(self.twos) > self.twos_for_singles:
            return (self.twos.popleft(),)
        return (self.ones.popleft(), self.ones.popleft())


def allocate_node(
    free_cores: Sequence[Core],
    requests: Sequence[NodeRequest],
    order: Callable[[Core], tuple[int, ...]] = lowest_first,
) -> dict[str, Allocation]:
    """Cores and pins for `requests` (spec order) from `free_cores` of one node, taken in `order`."""
    singles = sum(r.vcpus % 2 + int(r.dedicated_emulator) for r in requests)
    pairs = sum(r.vcpus // 2 for r in requests)
    pool = _Pool(free_cores, singles, pairs, 0, order)
    out: dict[str, Allocation] = {}
    for req in requests:
        emulator = pool.single() if req.dedicated_emulator else None
        pins: list[int] = []
        cores: list[CpuSet] = []
        siblings = True
        for _ in range(req.vcpus // 2):
            taken = pool.pair()
            cores.extend(taken)
            if len(taken) == 1:
                pins.extend(taken[0].sorted())
            else:
                siblings = False
                pins.extend(core.min() for core in taken)
        if req.vcpus % 2:
            last = pool.single()
            cores.append(last)
            pins.append(last.min())
            siblings = False
        out[req.name] = Allocation(tuple(pins), tuple(cores), emulator, siblings)
    return out


def allocate_node_l3(
    free_cores: Sequence[Core],
    requests: Sequence[NodeRequest],
    domains: Mapping[str, int | None],
    l3_of: Callable[[Core], int | None],
) -> dict[str, Allocation]:
    """Like `allocate_node`, for a node whose VMs were given L3 domains (`l3_placement.py`).

    A VM given a domain takes its cores there; the others then take what is left, the
    domain with the most left first, so a VM that has to span domains spans few. With one
    domain (or none known) this is `allocate_node` itself.
    """
    out: dict[str, Allocation] = {}
    for domain in sorted({d for d in domains.values() if d is not None}):
        inside = [r for r in requests if domains.get(r.name) == domain]
        out.update(allocate_node([c for c in free_cores if l3_of(c) == domain], inside))
    taken = CpuSet.union(core for a in out.values() for core in a.cores)
    rest = [c for c in free_cores if c.cpus.isdisjoint(taken)]
    left = Counter(l3_of(c) for c in rest)

    def most_left_first(core: Core) -> tuple[int, ...]:
        domain = l3_of(core)
        return (-left[domain], -1 if domain is None else domain, core.first)

    spread = [r for r in requests if domains.get(r.name) is None]
    out.update(allocate_node(rest, spread, most_left_first))
    return out
