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
>>> place([small, big], nodes).nodes
{'big': 0, 'small': 1}
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from math import gcd

from bmslice.errors import PlanError
from bmslice.plan.capacity import Load, NodeFree

STEP_LIMIT = 300  # the depth-first search's steps before CP-SAT takes over (feasibility)
COST_STEP_LIMIT = 300  # the same for the fewest cross-NUMA NICs
SAT_TIME_LIMIT = 20.0  # CP-SAT's deterministic seconds: a bound on a pathological case, not a cut-off
_INFEASIBLE = sys.maxsize


class _OutOfSteps(Exception):
    pass


@dataclass(frozen=True)
class Placement:
    nodes: dict[str, int]  # VM name -> NUMA node
    numa_optimal: bool  # proven to have the fewest cross-NUMA NICs (else: the best found in the budget)


@dataclass(frozen=True)
class Request:
    """One VM to place: its load, candidate nodes (preferred first), cross-NUMA cost per candidate.

    A VM over several nodes (numa_nodes) is one request per part, `part` 0.. of `parts`,
    sharing `group` (the VM's name): its parts go to distinct nodes, and its NICs cost what
    the whole set of nodes leaves remote — each of `local_sets` (the nodes that make one NIC
    local) that none of the parts' nodes is in — counted at the last part. `strict`
    (nic_numa_policy require): a layout that leaves any of them remote is no layout at all,
    in the feasibility search too, so the search stays exact under require.
    """

    name: str
    load: Load
    candidates: tuple[int, ...]
    costs: tuple[int, ...]
    group: str | None = None
    part: int = 0
    parts: int = 1
    local_sets: tuple[frozenset[int], ...] = ()
    strict: bool = False

    @property
    def label(self) -> str:
        """How messages name it: the VM, or the VM's share on one of its nodes."""
        return self.name if self.group is None else f"{self.group} (its share {self.part + 1} of {self.parts})"

    @property
    def min_cost(self) -> int:
        if self.group is not None:
            return group_min_cost(self) if self.part == self.parts - 1 else 0
        return min(self.costs) if self.costs else 0

    def group_cost(self, nodes: frozenset[int]) -> int:
        return sum(1 for local in self.local_sets if not local & nodes)


def group_min_cost(req: Request) -> int:
    """The fewest remote NICs any choice of `parts` distinct candidate nodes leaves."""
    if not req.local_sets:
        return 0
    return min(
        (req.group_cost(frozenset(nodes)) for nodes in combinations(req.candidates, req.parts)),
        default=len(req.local_sets),
    )


def _used_threads(node: NodeFree, load: Load) -> int:
    """Threads `load` takes on `node`: a single on a two-thread core takes both."""
    on_ones = min(node.ones, load.singles)
    return on_ones + 2 * (load.singles - on_ones) + 2 * load.pairs


class _Search:
    """Depth-first search; with `use_costs=False` only feasibility counts (all NIC preferences equal)."""

    def __init__(
        self,
        requests: Sequence[Request],
        nodes: Sequence[NodeFree],
        use_costs: bool = True,
        step_limit: int = STEP_LIMIT,
    ) -> None:
        if not use_costs:  # a strict request keeps its NIC nodes: they decide what fits
            requests = [
                replace(r, costs=tuple(0 for _ in r.costs), local_sets=r.local_sets if r.strict else ())
                for r in requests
            ]
        self.use_costs = use_costs
        self.requests = requests
        self.step_limit = step_limit
        self.nodes = list(nodes)
        self.slot = {n.node: i for i, n in enumerate(nodes)}
        # Interchangeable nodes share a class: same capacity and the same cost for every VM.
        signature = {
            n.node: (
                n.twos,
                n.ones,
                n.memory_mib,
                n.smt,
                tuple(self._cost(r, n.node) for r in requests),
                tuple(n.node in local for r in requests for local in r.local_sets),
            )
            for n in nodes
        }
        classes: dict[object, int] = {}
        self.node_class = [classes.setdefault(signature[n.node], len(classes)) for n in nodes]
        self.memo: dict[tuple[int, tuple[object, ...]], tuple[int, tuple[int, Load] | None]] = {}
        # The slot of each earlier part of a request's group is barred for its later parts.
        self.continues = [
            i + 1 < len(requests) and r.group is not None and requests[i + 1].group == r.group
            for i, r in enumerate(requests)
        ]
        self.steps = 0
        n = len(requests)
        all_smt = all(node.ones == 0 for node in nodes)

        def demand(load: Load) -> int:  # threads a VM takes at the least, on any node of this host
            return 2 * (load.pairs + load.singles) if all_smt else 2 * load.pairs + load.singles

        # Bounds on what requests[i:] need: totals, smallest VM, and the gcd of their sizes.
        self.lower_bound = [0] * (n + 1)
        self.threads_left = [0] * (n + 1)
        self.memory_left = [0] * (n + 1)
        self.smallest_threads = [sys.maxsize] * (n + 1)
        self.smallest_memory = [sys.maxsize] * (n + 1)
        self.threads_gcd = [0] * (n + 1)
        self.memory_gcd = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            load = requests[i].load
            self.lower_bound[i] = self.lower_bound[i + 1] + (requests[i].min_cost if use_costs else 0)
            self.threads_left[i] = self.threads_left[i + 1] + demand(load)
            self.memory_left[i] = self.memory_left[i + 1] + load.memory_mib
            self.smallest_threads[i] = min(self.smallest_threads[i + 1], demand(load))
            self.smallest_memory[i] = min(self.smallest_memory[i + 1], load.memory_mib)
            self.threads_gcd[i] = gcd(self.threads_gcd[i + 1], demand(load))
            self.memory_gcd[i] = gcd(self.memory_gcd[i + 1], load.memory_mib)

    @staticmethod
    def _cost(req: Request, node: int) -> int | None:
        for candidate, cost in zip(req.candidates, req.costs, strict=True):
            if candidate == node:
                return cost
        return None

    def _key(self, i: int, loads: tuple[Load, ...], used: frozenset[int]) -> tuple[int, tuple[object, ...]]:
        """The state up to swaps of interchangeable nodes (`used`: slots the group's earlier parts took)."""
        by_class: dict[int, list[tuple[bool, Load]]] = {}
        for slot, load in enumerate(loads):
            by_class.setdefault(self.node_class[slot], []).append((slot in used, load))
        canonical = tuple(
            (cls, tuple(sorted(ls, key=lambda x: (x[0], x[1].singles, x[1].pairs, x[1].memory_mib))))
            for cls, ls in sorted(by_class.items())
        )
        return (i, canonical)

    def _choice_cost(self, req: Request, node: int, cost: int, used: frozenset[int]) -> int:
        if req.group is None:
            return cost
        if req.part < req.parts - 1:
            return 0
        return req.group_cost(frozenset(self.nodes[slot].node for slot in used) | {node})

    def _hopeless(self, i: int, loads: tuple[Load, ...]) -> bool:
        """Even ignoring node boundaries, the rest does not fit in what is left.

        A node that cannot take even the smallest remaining VM is wasted space, and of a
        node's free threads only a multiple of the VMs' common size (gcd) can ever be used:
        on exact fits and one-VM-too-many specs this cuts the search at once.
        """
        threads = memory = 0
        for node, load in zip(self.nodes, loads, strict=True):
            free_threads = 2 * node.twos + node.ones - _used_threads(node, load)
            free_memory = node.memory_mib - load.memory_mib
            if free_threads < self.smallest_threads[i] or free_memory < self.smallest_memory[i]:
                continue
            threads += free_threads - free_threads % (self.threads_gcd[i] or 1)
            memory += free_memory - free_memory % (self.memory_gcd[i] or 1)
        return threads < self.threads_left[i] or memory < self.memory_left[i]

    def best(self, i: int, loads: tuple[Load, ...], used: frozenset[int] = frozenset()) -> int:
        """Fewest cross-NUMA NICs for requests[i:], or _INFEASIBLE."""
        if i == len(self.requests):
            return 0
        key = self._key(i, loads, used)
        if key in self.memo:
            return self.memo[key][0]
        self.steps += 1
        if self.steps > self.step_limit:
            raise _OutOfSteps
        best_cost: int = _INFEASIBLE
        best_choice: tuple[int, Load] | None = None
        if not self._hopeless(i, loads):
            req = self.requests[i]
            tried: set[tuple[int, Load]] = set()
            for node, cost in zip(req.candidates, req.costs, strict=True):
                slot = self.slot.get(node)
                if slot is None or slot in used:
                    continue
                choice = (self.node_class[slot], loads[slot])
                if choice in tried:
                    continue  # an interchangeable node in the same state was tried already
                tried.add(choice)
                new_load = loads[slot] + req.load
                if not self.nodes[slot].fits(new_load):
                    continue
                cost = self._choice_cost(req, node, cost, used)
                if req.strict and req.group is not None and cost:
                    continue  # require: a NIC left on none of the VM's nodes
                if not self.use_costs:
                    cost = 0
                after = used | {slot} if self.continues[i] else frozenset()
                rest = self.best(i + 1, (*loads[:slot], new_load, *loads[slot + 1 :]), after)
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
        used: frozenset[int] = frozenset()
        for i, req in enumerate(self.requests):
            choice = self.memo[self._key(i, loads, used)][1]
            assert choice is not None
            # the first candidate node in this state that matches the memoised choice
            slot = next(
                self.slot[node]
                for node in req.candidates
                if node in self.slot
                and self.slot[node] not in used
                and (self.node_class[self.slot[node]], loads[self.slot[node]]) == choice
            )
            out[req.name] = self.nodes[slot].node
            loads = (*loads[:slot], loads[slot] + req.load, *loads[slot + 1 :])
            used = used | {slot} if self.continues[i] else frozenset()
        return out


def _order(requests: Sequence[Request]) -> list[Request]:
    """VMs bound to fewer nodes first, then VMs with a node preference, then the biggest; the
    parts of a VM over several nodes stay together, in part order."""
    units: dict[str, list[Request]] = {}
    for req in requests:
        units.setdefault(req.group or req.name, []).append(req)

    def key(unit: list[Request]) -> tuple[object, ...]:
        first = unit[0]
        spread = max(first.costs) - min(first.costs) if first.costs else 0
        return (
            len(first.candidates) - len(unit) + 1,
            -(spread + len(first.local_sets)),
            -sum(2 * r.load.pairs + r.load.singles for r in unit),
            -sum(r.load.memory_mib for r in unit),
            first.group or first.name,
        )

    return [req for unit in sorted(units.values(), key=key) for req in sorted(unit, key=lambda r: r.part)]


def _cost(requests: Sequence[Request], nodes: dict[str, int]) -> int:
    total = 0
    for req in requests:
        if req.group is None:
            total += dict(zip(req.candidates, req.costs, strict=True))[nodes[req.name]]
        elif req.part == req.parts - 1:
            total += req.group_cost(frozenset(nodes[r.name] for r in requests if r.group == req.group))
    return total


def place(requests: Sequence[Request], nodes: Sequence[NodeFree]) -> Placement | None:
    """VM name -> node for every request, or None when no assignment fits.

    First the depth-first search, within a small budget: whether any layout exists (NIC
    preferences ignored, so all nodes of one shape are interchangeable and the answer is
    quick), then the layout with the fewest cross-NUMA NICs. Where either runs out of steps,
    CP-SAT (`placement_sat.py`) answers the same question completely. A spec is refused only
    when no layout exists, and never because the search for fewer cross-NUMA NICs ran long
    (the best layout found is kept, and the Placement says it is not proven the fewest).
    """
    ordered = _order(requests)
    try:
        feasible = _Search(ordered, nodes, use_costs=False).assignment()
    except _OutOfSteps:
        return _complete(ordered, nodes)
    if feasible is None:
        return None
    if _cost(ordered, feasible) == sum(r.min_cost for r in ordered):
        return Placement(feasible, True)
    try:
        best = _Search(ordered, nodes, use_costs=True, step_limit=COST_STEP_LIMIT).assignment()
    except _OutOfSteps:
        return _complete(ordered, nodes, feasible)
    assert best is not None  # a feasible layout exists
    return Placement(best, True)


def _complete(
    requests: Sequence[Request], nodes: Sequence[NodeFree], found: dict[str, int] | None = None
) -> Placement | None:
    """CP-SAT's answer where the search ran out of steps (`found`: a layout the search has, if any).

    First a layout with no more cross-NUMA NICs than the lower bound, which is usually there and
    quick to find (and then the fewest there can be); failing that, the layout with the fewest.
    """
    from bmslice.plan.placement_sat import solve

    bound = sum(r.min_cost for r in requests)
    answer = solve(requests, nodes, use_costs=True, time_limit=SAT_TIME_LIMIT, at_most=bound)
    if answer.nodes is not None:
        return Placement(answer.nodes, True)
    if not any(any(r.costs) or (r.local_sets and not r.strict) for r in requests) and answer.proven:
        return None  # nothing to count: that was the feasibility question itself
    answer = solve(requests, nodes, use_costs=True, time_limit=SAT_TIME_LIMIT, hint=found)
    if answer.nodes is not None:
        if found is not None and _cost(requests, found) <= _cost(requests, answer.nodes):
            return Placement(found, answer.proven)
        return Placement(answer.nodes, answer.proven)
    if found is not None:
        return Placement(found, False)
    if answer.proven:
        return None
    raise PlanError(
        f"placement search gave up after {SAT_TIME_LIMIT:g} s of CP-SAT's work without settling whether the VMs "
        "fit; pin some VMs with numa_node to narrow it"
    )
