"""Which NUMA node each VM goes to: an exact search, not first-fit.

First-fit refuses specs that another assignment would satisfy (a big VM arriving after
small ones have fragmented every node). This search is exact: a depth-first search over
per-node load sums returns an assignment whenever one exists, and among those the one
with the fewest cross-NUMA NICs; ties go to the earliest candidate node in each VM's
preference order, so the result is deterministic.

What keeps it fast on big hosts:
- VMs with a node preference (NICs) go first, then the biggest: the first leaf reached is
  usually optimal, and the search stops as soon as a leaf meets the lower bound;
- nodes that are interchangeable (same free capacity, same load so far, same cost for
  every VM) are tried once, and states are memoised up to such swaps;
- a state whose remaining VMs need more threads or memory than all nodes have left is cut.

>>> nodes = (NodeFree(0, 5, 0, 10000), NodeFree(1, 5, 0, 10000))
>>> small = Request("small", Load(1, 1, 100), (0, 1), (0, 0))
>>> big = Request("big", Load(1, 4, 100), (0, 1), (0, 0))
>>> place([small, big], nodes)
{'big': 0, 'small': 1}
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from bmslice.errors import PlanError
from bmslice.plan.capacity import Load, NodeFree

STEP_LIMIT = 2_000_000
_INFEASIBLE = sys.maxsize


@dataclass(frozen=True)
class Request:
    """One VM to place: its load, candidate nodes (preferred first), cross-NUMA cost per candidate."""

    name: str
    load: Load
    candidates: tuple[int, ...]
    costs: tuple[int, ...]

    @property
    def min_cost(self) -> int:
        return min(self.costs) if self.costs else 0


def _threads(load: Load) -> int:
    return 2 * load.pairs + load.singles


class _Search:
    def __init__(self, requests: Sequence[Request], nodes: Sequence[NodeFree]) -> None:
        self.requests = requests
        self.nodes = list(nodes)
        self.slot = {n.node: i for i, n in enumerate(nodes)}
        # Interchangeable nodes share a class: same capacity and the same cost for every VM.
        signature = {
            n.node: (n.twos, n.ones, n.memory_mib, n.smt, tuple(self._cost(r, n.node) for r in requests)) for n in nodes
        }
        classes: dict[object, int] = {}
        self.node_class = [classes.setdefault(signature[n.node], len(classes)) for n in nodes]
        self.memo: dict[tuple[int, tuple[object, ...]], tuple[int, tuple[int, Load] | None]] = {}
        self.steps = 0
        n = len(requests)
        self.lower_bound = [0] * (n + 1)
        self.threads_left = [0] * (n + 1)
        self.memory_left = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            self.lower_bound[i] = self.lower_bound[i + 1] + requests[i].min_cost
            self.threads_left[i] = self.threads_left[i + 1] + _threads(requests[i].load)
            self.memory_left[i] = self.memory_left[i + 1] + requests[i].load.memory_mib

    @staticmethod
    def _cost(req: Request, node: int) -> int | None:
        for candidate, cost in zip(req.candidates, req.costs, strict=True):
            if candidate == node:
                return cost
        return None

    def _key(self, i: int, loads: tuple[Load, ...]) -> tuple[int, tuple[object, ...]]:
        """The state up to swaps of interchangeable nodes."""
        by_class: dict[int, list[Load]] = {}
        for slot, load in enumerate(loads):
            by_class.setdefault(self.node_class[slot], []).append(load)
        canonical = tuple(
            (cls, tuple(sorted(ls, key=lambda x: (x.singles, x.pairs, x.memory_mib))))
            for cls, ls in sorted(by_class.items())
        )
        return (i, canonical)

    def _hopeless(self, i: int, loads: tuple[Load, ...]) -> bool:
        """Even ignoring node boundaries, the rest does not fit in what is left."""
        threads = sum(2 * n.twos + n.ones - _threads(load) for n, load in zip(self.nodes, loads, strict=True))
        memory = sum(n.memory_mib - load.memory_mib for n, load in zip(self.nodes, loads, strict=True))
        return threads < self.threads_left[i] or memory < self.memory_left[i]

    def best(self, i: int, loads: tuple[Load, ...]) -> int:
        """Fewest cross-NUMA NICs for requests[i:], or _INFEASIBLE."""
        if i == len(self.requests):
            return 0
        key = self._key(i, loads)
        if key in self.memo:
            return self.memo[key][0]
        self.steps += 1
        if self.steps > STEP_LIMIT:
            raise PlanError(
                f"placement search gave up after {STEP_LIMIT} steps; pin some VMs with numa_node to narrow it"
            )
        best_cost: int = _INFEASIBLE
        best_choice: tuple[int, Load] | None = None
        if not self._hopeless(i, loads):
            req = self.requests[i]
            tried: set[tuple[int, Load]] = set()
            for node, cost in zip(req.candidates, req.costs, strict=True):
                slot = self.slot.get(node)
                if slot is None:
                    continue
                choice = (self.node_class[slot], loads[slot])
                if choice in tried:
                    continue  # an interchangeable node in the same state was tried already
                tried.add(choice)
                new_load = loads[slot] + req.load
                if not self.nodes[slot].fits(new_load):
                    continue
                rest = self.best(i + 1, (*loads[:slot], new_load, *loads[slot + 1 :]))
                if rest != _INFEASIBLE and cost + rest < best_cost:
                    best_cost, best_choice = cost + rest, choice
                    if best_cost == self.lower_bound[i]:
                        break  # cannot do better than the bound
        self.memo[key] = (best_cost, best_choice)
        return best_cost

    def assignment(self) -> dict[str, int] | None:
        loads = tuple(Load() for _ in self.nodes)
        if self.best(0, loads) == _INFEASIBLE:
            return None
        out: dict[str, int] = {}
        for i, req in enumerate(self.requests):
            choice = self.memo[self._key(i, loads)][1]
            assert choice is not None
            # the first candidate node in this state that matches the memoised choice
            slot = next(
                self.slot[node]
                for node in req.candidates
                if node in self.slot and (self.node_class[self.slot[node]], loads[self.slot[node]]) == choice
            )
            out[req.name] = self.nodes[slot].node
            loads = (*loads[:slot], loads[slot] + req.load, *loads[slot + 1 :])
        return out


def place(requests: Sequence[Request], nodes: Sequence[NodeFree]) -> dict[str, int] | None:
    """VM name -> node for every request, or None when no assignment fits.

    Search order: VMs bound to fewer nodes first, then VMs with a node preference, then the
    biggest (fails fast), then by name; the answer depends on the requests, not their order.
    """
    ordered = sorted(
        requests,
        key=lambda r: (
            len(r.candidates),
            -(max(r.costs) - min(r.costs) if r.costs else 0),
            -(2 * r.load.pairs + r.load.singles),
            -r.load.memory_mib,
            r.name,
        ),
    )
    return _Search(ordered, nodes).assignment()
