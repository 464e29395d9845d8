"""The complete method behind placement.py: the same question put to OR-Tools CP-SAT.

placement.py's depth-first search settles nearly every spec in a few hundred steps, but on a
big host an exact fit (every free core used) can send it through millions of load vectors.
CP-SAT (clause learning, LP bounds, presolve with symmetry detection) settles those in a
fraction of a second, and proves the fewest cross-NUMA NICs where the search could not.

ortools is imported only when a case needs it, and lightly (`sat_model.py`).

The model counts how many VMs of each kind (same load, candidates and costs) go to each node
(only where one alone fits):
- each request on exactly one of its candidate nodes;
- per node, the memory of its requests fits, and their singles and pairs fit its free cores:
  on a node with both kinds, `a` singles on one-thread cores and `d` pairs on two of them,
  the rest on two-thread cores (a + 2d <= ones, singles - a + pairs - d <= twos); that is
  the same test as `NodeFree.split`, which takes ones for singles first;
- the parts of a VM over several nodes on distinct nodes; under nic_numa_policy require,
  each of its NICs' node sets holds one of its parts;
- objective (when costs count): the cross-NUMA NICs, per request and node as the search
  counts them, and for a VM over several nodes one per NIC node set none of its parts is in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bmslice.plan.capacity import NodeFree
from bmslice.plan.sat_model import SatModel

if TYPE_CHECKING:
    from bmslice.plan.placement import Request


@dataclass(frozen=True)
class SatAnswer:
    nodes: dict[str, int] | None  # request name -> node; None: no layout (proven) or none found in the budget
    proven: bool  # the answer is final: no layout exists, or the layout has the fewest cross-NUMA NICs


def _capacity(model: SatModel, node: NodeFree, here: Sequence[tuple[int, Request]]) -> None:
    """The requests that go to `node` (count variable, request) fit its free cores and memory."""
    singles = [(y, r.load.singles) for y, r in here if r.load.singles]
    pairs = [(y, r.load.pairs) for y, r in here if r.load.pairs]
    both = [(y, r.load.singles + r.load.pairs) for y, r in here if r.load.singles + r.load.pairs]
    model.linear([(y, r.load.memory_mib) for y, r in here if r.load.memory_mib], 0, node.memory_mib)
    if node.ones == 0:
        model.linear(both, 0, node.twos)
    elif node.twos == 0:
        model.linear([(y, r.load.singles + 2 * r.load.pairs) for y, r in here], 0, node.ones)
    else:
        model.fits(singles, pairs, [], node.twos, [], node.ones)


def _kinds(requests: Sequence[Request]) -> list[list[int]]:
    """Requests that are interchangeable (same load, candidates and costs; not part of a VM over
    several nodes), as lists of indices: the model counts how many of a kind go to each node,
    so it never tries two orders of the same VMs."""
    kinds: dict[object, list[int]] = {}
    for i, req in enumerate(requests):
        key = (req.load, req.candidates, req.costs) if req.group is None else i
        kinds.setdefault(key, []).append(i)
    return list(kinds.values())


def solve(
    requests: Sequence[Request],
    nodes: Sequence[NodeFree],
    use_costs: bool,
    time_limit: float,
    hint: Mapping[str, int] | None = None,
    at_most: int | None = None,
) -> SatAnswer:
    """The layout with the fewest cross-NUMA NICs (any layout, when not `use_costs`).

    `time_limit`: CP-SAT's deterministic seconds (about a second of one core's work each).
    `hint`: a layout already known, which the solver starts from.
    """
    by_id = {n.node: n for n in nodes}
    model = SatModel()
    kinds = _kinds(requests)
    y: dict[tuple[int, int], int] = {}  # (kind, node) -> how many of the kind go there
    costs: list[tuple[int, int]] = []
    on_node: dict[int, list[tuple[int, Request]]] = defaultdict(list)
    for k, members in enumerate(kinds):
        req = requests[members[0]]
        options = []
        for node, cost in zip(req.candidates, req.costs, strict=True):
            free = by_id.get(node)
            if free is None or not free.fits(req.load):
                continue
            y[k, node] = var = model.var(0, len(members))
            options.append((var, 1))
            on_node[node].append((var, req))
            if use_costs and req.group is None and cost:
                costs.append((var, cost))
        if not options:
            return SatAnswer(None, True)
        model.linear(options, len(members), len(members))
    for node, here in on_node.items():
        _capacity(model, by_id[node], here)
    kind_of = {i: k for k, members in enumerate(kinds) for i in members}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, req in enumerate(requests):
        if req.group is not None:
            groups[req.group].append(kind_of[i])
    for parts in groups.values():
        req = requests[kinds[parts[0]][0]]
        for node in req.candidates:
            shares = [y[k, node] for k in parts if (k, node) in y]
            if len(shares) > 1:
                model.literals("at_most_one", shares)
        for local in req.local_sets:
            inside = [y[k, node] for k in parts for node in sorted(local) if (k, node) in y]
            if req.strict:
                if not inside:
                    return SatAnswer(None, True)
                model.literals("bool_or", inside)
            elif use_costs:
                remote = model.var(0, 1)  # this NIC is on none of the VM's nodes
                model.literals("bool_or", [remote, *inside])
                costs.append((remote, 1))
    if at_most is not None:
        model.linear(costs, 0, at_most)
    else:
        model.objective(costs)
    if hint:
        counts = {(kind_of[i], hint[r.name]): 0 for i, r in enumerate(requests)}
        for i, r in enumerate(requests):
            counts[kind_of[i], hint[r.name]] += 1
        model.hint({var: counts.get(key, 0) for key, var in y.items()})

    status, values = model.solve(time_limit)
    if status == "infeasible":
        return SatAnswer(None, True)
    if status == "unknown":
        return SatAnswer(None, False)
    chosen: dict[str, int] = {}
    for k, members in enumerate(kinds):
        # the kind's VMs in request order, to its nodes in preference order
        left = iter(members)
        for node in requests[members[0]].candidates:
            for _ in range(values[y[k, node]] if (k, node) in y else 0):
                chosen[requests[next(left)].name] = node
    return SatAnswer(chosen, status == "optimal" or not costs)
