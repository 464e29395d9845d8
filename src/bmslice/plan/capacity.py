"""Whole-core capacity of a NUMA node and what a VM asks of it.

Cores are whole: a VM owns every online thread of each core it uses, so siblings are
never split between owners. A node's free cores come in two kinds: "twos" (both SMT
threads online) and "ones" (no SMT, or a sibling offline). A VM asks for
`pairs` (two vCPUs that can sit on one SMT core) and `singles` (an odd last vCPU, or the
dedicated emulator core, either of which needs one core of any kind).

Whether a set of VMs fits a node depends only on the sums, which makes placement a
search over sums rather than over individual cores:

>>> NodeFree(node=0, twos=5, ones=0, memory_mib=30720).fits(Load(singles=1, pairs=4, memory_mib=8192))
True
>>> NodeFree(node=0, twos=4, ones=0, memory_mib=30720).fits(Load(singles=1, pairs=4, memory_mib=8192))
False
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    """What one or more VMs take from a node."""

    singles: int = 0
    pairs: int = 0
    memory_mib: int = 0

    def __add__(self, other: Load) -> Load:
        return Load(self.singles + other.singles, self.pairs + other.pairs, self.memory_mib + other.memory_mib)


@dataclass(frozen=True)
class NodeFree:
    """Free whole cores and memory of one NUMA node (after the host and kept slices)."""

    node: int
    twos: int
    ones: int
    memory_mib: int
    smt: bool = True  # the host has SMT: a vCPU pair is one core

    @property
    def cores(self) -> int:
        return self.twos + self.ones

    def split(self, load: Load) -> tuple[int, int] | None:
        """(ones, twos) given to singles, or None when the load does not fit.

        Ones go to singles first: a one serving a single saves a whole two, while two
        ones serving a pair save only one.
        """
        if load.memory_mib > self.memory_mib:
            return None
        ones_to_singles = min(self.ones, load.singles)
        twos_to_singles = load.singles - ones_to_singles
        if twos_to_singles > self.twos:
            return None
        pair_capacity = (self.twos - twos_to_singles) + (self.ones - ones_to_singles) // 2
        if pair_capacity < load.pairs:
            return None
        return ones_to_singles, twos_to_singles

    def fits(self, load: Load) -> bool:
        return self.split(load) is not None

    def left_after(self, load: Load) -> NodeFree | None:
        """What the node has free after `load` (taken as `allocate.py` takes cores), or None."""
        split = self.split(load)
        if split is None:
            return None
        ones_to_singles, twos_to_singles = split
        twos, ones = self.twos - twos_to_singles, self.ones - ones_to_singles
        pairs_on_twos = min(load.pairs, twos)
        ones -= 2 * (load.pairs - pairs_on_twos)
        return NodeFree(self.node, twos - pairs_on_twos, ones, self.memory_mib - load.memory_mib, self.smt)

    def cores_needed(self, load: Load) -> int:
        """Whole cores `load` takes on a uniform node: a pair is one SMT core, or two cores without SMT."""
        pair_is_one_core = self.twos > 0 or (self.ones == 0 and self.smt)
        return load.singles + (load.pairs if pair_is_one_core else 2 * load.pairs)

    @property
    def vcpu_room(self) -> int:
        """The most vCPUs one more VM could have here: a pair per two-thread core, one per one-thread core."""
        return 2 * self.twos + self.ones

    @property
    def uniform(self) -> bool:
        return self.ones == 0 or self.twos == 0

    def need_text(self, load: Load) -> str:
        """What `load` asks of this node, in whole cores where that is exact."""
        if self.uniform:
            return plural(self.cores_needed(load), "whole core")
        return f"{plural(load.pairs, 'two-thread core')} and {plural(load.singles, 'single core')}"

    def free_text(self) -> str:
        if self.uniform:
            return f"only {self.cores} {'is' if self.cores == 1 else 'are'} free"
        return f"only {self.twos} two-thread and {self.ones} one-thread (sibling offline) are free"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def vm_load(vcpus: int, dedicated_emulator: bool, memory_mib: int) -> Load:
    """The load of one VM. On a node without SMT a pair takes two ones (see `split`)."""
    pairs, odd = divmod(vcpus, 2)
    return Load(singles=odd + int(dedicated_emulator), pairs=pairs, memory_mib=memory_mib)


def room_order(free: Sequence[NodeFree], load: Load) -> Callable[[int], tuple[int, ...]]:
    """A node's rank as a home for `load` by the room it leaves (lower first).

    Best fit: the node with the least room left after taking `load` comes first, so the nodes
    with the most room keep it for a bigger VM that comes later. Room is counted in vCPUs a VM
    could still get there (`vcpu_room`: a one-thread core left by an offline sibling holds
    one vCPU, a two-thread core two), then in memory; nodes that `load` does not fit on alone
    come last.

    >>> rank = room_order([NodeFree(0, 8, 0, 8192), NodeFree(1, 4, 0, 8192)], Load(0, 2, 1024))
    >>> sorted([0, 1], key=rank)
    [1, 0]
    """
    by_id = {n.node: n for n in free}

    def rank(node: int) -> tuple[int, ...]:
        have = by_id.get(node)
        left = None if have is None else have.left_after(load)
        if have is None or left is None:
            return (1, 0, 0, 0)
        # ties on the room left go to the fuller node (an offline sibling's core used first)
        return (0, left.vcpu_room, have.vcpu_room, left.memory_mib)

    return rank
