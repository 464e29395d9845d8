"""Which NUMA node each VM goes to: an exact search, not first-fit.

First-fit refuses specs that another assignment would satisfy (a big VM arriving after
small ones have fragmented every node). This search is exact: memoised depth-first
search over per-node load sums returns an assignment whenever one exists, and among
those the one with the fewest cross-NUMA NICs; ties go to the earliest candidate node
in each VM's preference order, so the result is deterministic.

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


class _Search:
    def __init__(self, requests: Sequence[Request], nodes: Sequence[NodeFree]) -> None:
        self.requests = requests
        self.nodes = {n.node: n for n in nodes}
        self.index = {n.node: i for i, n in enumerate(nodes)}
        self.memo: dict[tuple[int, tuple[Load, ...]], tuple[int, int | None]] = {}
        self.steps = 0
        self.lower_bound = [0] * (len(requests) + 1)
        for i in range(len(requests) - 1, -1, -1):
            self.lower_bound[i] = self.lower_bound[i + 1] + requests[i].min_cost

    def best(self, i: int, loads: tuple[Load, ...]) -> int:
        """Fewest cross-NUMA NICs for requests[i:], or _INFEASIBLE."""
        if i == len(self.requests):
            return 0
        key = (i, loads)
        if key in self.memo:
            return self.memo[key][0]
        self.steps += 1
        if self.steps > STEP_LIMIT:
            raise PlanError(
                f"placement search gave up after {STEP_LIMIT} steps; pin some VMs with numa_node to narrow it"
            )
        req = self.requests[i]
        best_cost, best_node = _INFEASIBLE, None
        for node, cost in zip(req.candidates, req.costs, strict=True):
            slot = self.index.get(node)
            if slot is None:
                continue
            new_load = loads[slot] + req.load
            if not self.nodes[node].fits(new_load):
                continue
            rest = self.best(i + 1, (*loads[:slot], new_load, *loads[slot + 1 :]))
            if rest != _INFEASIBLE and cost + rest < best_cost:
                best_cost, best_node = cost + rest, node
                if best_cost == self.lower_bound[i]:
                    break  # cannot do better than the bound
        self.memo[key] = (best_cost, best_node)
        return best_cost

    def assignment(self) -> dict[str, int] | None:
        loads = tuple(Load() for _ in self.nodes)
        if self.best(0, loads) == _INFEASIBLE:
            return None
        out: dict[str, int] = {}
        for i, req in enumerate(self.requests):
            node = self.memo[(i, loads)][1]
            assert node is not None
            out[req.name] = node
            slot = self.index[node]
            loads = (*loads[:slot], loads[slot] + req.load, *loads[slot + 1 :])
        return out


def place(requests: Sequence[Request], nodes: Sequence[NodeFree]) -> dict[str, int] | None:
    """VM name -> node for every request, or None when no assignment fits.

    Requests are searched biggest first (fails fast); the answer does not depend on the
    order the caller lists them in beyond tie-breaking by name.
    """
    ordered = sorted(
        requests,
        key=lambda r: (len(r.candidates), -(2 * r.load.pairs + r.load.singles), -r.load.memory_mib, r.name),
    )
    return _Search(ordered, nodes).assignment()
