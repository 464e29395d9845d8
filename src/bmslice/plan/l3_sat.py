"""The complete method behind l3_placement.py: the L3-domain layout put to CP-SAT.

l3_placement.py's depth-first search settles small hosts in a few steps; on an EPYC with
eight nodes of several L3 domains each and tens of VMs it can walk hundreds of thousands
of states without proving its best. This model asks the same question of CP-SAT:

- each VM goes wholly into one L3 domain of one of its candidate nodes (where it fits that
  domain alone, its L3 ways included), or into the node's split pool (cores from any of its
  domains; on a node with one domain, or none known, that is the only choice and no split);
- a domain's VMs fit its free cores and ways; the split pool's VMs fit what the domains leave,
  each domain's leftover taken the way `allocate.py` takes cores (singles on one-thread cores
  first, pairs on two-thread cores first), as `l3_placement.leftover` computes it; a node's
  VMs fit its memory;
- cost: each cross-NUMA NIC outweighs every split VM together, then one per split VM, the
  order `l3_placement._Search` minimises.

VMs that are interchangeable (same load, candidates, NIC costs and ways) are counted per
(node, domain) rather than named, so the solver never tries two orders of the same VMs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bmslice.plan.sat_model import SatModel, Terms

if TYPE_CHECKING:
    from bmslice.plan.l3_placement import NodeDomains
    from bmslice.plan.placement import Request

_NO_LIMIT = 1 << 62  # DomainFree.ways when the VMs reserve none


@dataclass(frozen=True)
class L3Answer:
    nodes: dict[str, int] | None  # request -> node; None: nothing found in the budget (or no layout)
    domains: dict[str, int | None]  # request -> L3 domain id, None for the split pool
    proven: bool  # the layout has the lowest cost (fewest cross-NUMA NICs, then fewest split VMs)


@dataclass(frozen=True)
class _Slot:
    """Where a kind of VM may go: a node, and one of its domains (index) or its split pool (None)."""

    node: int
    slot: int  # index into the nodes passed in
    domain: int | None


def _kinds(requests: Sequence[Request], ways: Mapping[str, int]) -> list[list[int]]:
    kinds: dict[object, list[int]] = {}
    for i, req in enumerate(requests):
        kinds.setdefault((req.load, req.candidates, req.costs, ways.get(req.name, 0)), []).append(i)
    return list(kinds.values())


def solve_l3(
    requests: Sequence[Request], nodes: Sequence[NodeDomains], ways: Mapping[str, int], time_limit: float
) -> L3Answer:
    """The layout of lowest cost, as `l3_placement._Search` defines it (no VM over several nodes here)."""
    from bmslice.plan.l3_placement import fits_domain, shape_of

    slot_of = {n.free.node: i for i, n in enumerate(nodes)}
    weight = len(requests) + 1
    model = SatModel()
    kinds = _kinds(requests, ways)
    count: dict[tuple[int, _Slot], int] = {}  # (kind, where) -> how many of the kind go there
    cost: list[tuple[int, int]] = []
    for k, members in enumerate(kinds):
        req = requests[members[0]]
        shape = shape_of(req.load, ways.get(req.name, 0))
        options = []
        for node, nic_cost in zip(req.candidates, req.costs, strict=True):
            slot = slot_of.get(node)
            if slot is None or not nodes[slot].free.fits(req.load):
                continue
            here = nodes[slot]
            places = [_Slot(node, slot, d) for d, dom in enumerate(here.domains) if fits_domain(dom, shape)]
            places = [*places, _Slot(node, slot, None)] if here.several else [_Slot(node, slot, None)]
            for where in places:
                count[k, where] = var = model.var(0, len(members))
                options.append((var, 1))
                split = here.several and where.domain is None
                if nic_cost * weight + split:
                    cost.append((var, nic_cost * weight + split))
        if not options:
            return L3Answer(None, {}, True)
        model.linear(options, len(members), len(members))
    for slot, here in enumerate(nodes):
        _node_fits(model, here, slot, kinds, requests, ways, count)
    model.objective(cost)
    status, values = model.solve(time_limit)
    if status in ("infeasible", "unknown"):
        return L3Answer(None, {}, status == "infeasible")
    node_of: dict[str, int] = {}
    domain_of: dict[str, int | None] = {}
    for k, members in enumerate(kinds):
        left = iter(members)  # the kind's VMs in request order, to its places in preference order
        for (kind, where), var in count.items():
            if kind != k:
                continue
            for _ in range(values[var]):
                name = requests[next(left)].name
                node_of[name] = where.node
                domain_of[name] = None if where.domain is None else nodes[where.slot].domains[where.domain].id
    return L3Answer(node_of, domain_of, status == "optimal")


def _node_fits(
    model: SatModel,
    node: NodeDomains,
    slot: int,
    kinds: Sequence[Sequence[int]],
    requests: Sequence[Request],
    ways: Mapping[str, int],
    count: Mapping[tuple[int, _Slot], int],
) -> None:
    """The node's VMs fit: its memory; each domain's cores and ways; the split pool in what is left."""
    placed = [(var, requests[kinds[k][0]], where) for (k, where), var in count.items() if where.slot == slot]
    model.linear([(var, r.load.memory_mib) for var, r, _ in placed if r.load.memory_mib], 0, node.free.memory_mib)
    split: list[tuple[int, Request]] = [(var, r) for var, r, where in placed if where.domain is None]
    split_singles: Terms = [(var, r.load.singles) for var, r in split if r.load.singles]
    split_pairs: Terms = [(var, r.load.pairs) for var, r in split if r.load.pairs]
    if not node.several:
        model.fits(split_singles, split_pairs, [], node.free.twos, [], node.free.ones)
        return
    left_twos: list[tuple[int, int]] = []  # the domains' leftovers, as linear terms plus constants
    left_ones: list[tuple[int, int]] = []
    twos_const = ones_const = 0
    for d, dom in enumerate(node.domains):
        inside = [(var, r) for var, r, where in placed if where.domain == d]
        if dom.ways < _NO_LIMIT:
            model.linear([(var, ways.get(r.name, 0)) for var, r in inside if ways.get(r.name, 0)], 0, dom.ways)
        singles: Terms = [(var, r.load.singles) for var, r in inside if r.load.singles]
        pairs: Terms = [(var, r.load.pairs) for var, r in inside if r.load.pairs]
        # allocate.py's order: singles on ones first (a), then pairs on the twos left (c)
        on_ones = model.var(0, dom.ones)
        model.minimum(on_ones, singles, 0, [], dom.ones)
        twos_after: list[tuple[int, int]] = [*((v, -c) for v, c in singles), (on_ones, 1)]  # + dom.twos
        model.linear(twos_after, -dom.twos, _NO_LIMIT)  # singles beyond the ones fit on twos
        on_twos = model.var(0, dom.twos)
        model.minimum(on_twos, pairs, 0, twos_after, dom.twos)
        ones_after = [(on_ones, -1), *((v, -2 * c) for v, c in pairs), (on_twos, 2)]  # + dom.ones
        model.linear(ones_after, -dom.ones, _NO_LIMIT)  # pairs beyond the twos fit on two ones each
        left_twos += [*twos_after, (on_twos, -1)]
        left_ones += ones_after
        twos_const += dom.twos
        ones_const += dom.ones
    model.fits(split_singles, split_pairs, left_twos, twos_const, left_ones, ones_const)
