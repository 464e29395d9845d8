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

from collections import deque
from collections.abc import Sequence
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


class _Pool:
    """Free cores of one node with the reservations that keep the split feasible."""

    def __init__(self, cores: Sequence[Core], singles_total: int, pairs_total: int, memory_mib: int) -> None:
        self.twos = deque(c.cpus for c in sorted(cores, key=lambda c: c.first) if c.threads == 2)
        self.ones = deque(c.cpus for c in sorted(cores, key=lambda c: c.first) if c.threads == 1)
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


def allocate_node(free_cores: Sequence[Core], requests: Sequence[NodeRequest]) -> dict[str, Allocation]:
    """Cores and pins for `requests` (spec order) from `free_cores` of one node."""
    singles = sum(r.vcpus % 2 + int(r.dedicated_emulator) for r in requests)
    pairs = sum(r.vcpus // 2 for r in requests)
    pool = _Pool(free_cores, singles, pairs, 0)
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
