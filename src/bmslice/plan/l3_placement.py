"""Which L3 cache domain each VM's cores come from: the fewest VMs split over two or more.

On AMD EPYC (one L3 per CCX or CCD) a NUMA node holds several L3 domains. A VM whose cores
share one L3 keeps its working set in one cache; a VM split over two pays for every line
one half of it shares with the other. So after NUMA placement decides *whether* the spec
fits, this search decides *how*: among all layouts with the fewest cross-NUMA NICs (that
order first, as before), the one with the fewest split VMs.

What counts for a VM's span: every whole core it owns, its vCPU cores and its dedicated
emulator core alike (emulator=host owns none). The emulator thread and IOThreads move
the guest's virtio data through the cache the vCPUs use; counting the core keeps the rule
simple and checkable ("the VM's cores share one L3").

The search is exact, like NUMA placement. Each VM goes either wholly into one L3 domain of
a node, or into the node's "split pool" (cores from any domain: counted as split when the
node has two or more domains). A domain takes what fits its free cores; the split pool
takes what fits the node's cores left over once the domains took theirs (the leftover of a
domain is what `allocate.py` leaves: singles take one-thread cores first, pairs two-thread
cores first, which is never worse for what comes after). A memoised depth-first search over
these load sums, with interchangeable domains and nodes tried once, returns the layout of
lowest cost (cross-NUMA NICs, then split VMs); it stops early at a lower bound.

>>> node = NodeDomains(NodeFree(0, 8, 0, 10**6), (DomainFree(0, 4, 0), DomainFree(2, 4, 0)))
>>> vms = [Request(n, Load(1, 2, 1), (0,), (0,)) for n in ("a", "b")]  # 4 vCPUs + emulator: 3 cores
>>> layout = place_in_l3(vms, [node], Placement({"a": 0, "b": 0}, True))
>>> layout.domains, layout.splits
({'a': 0, 'b': 2}, 0)
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.plan import VmPlan
from bmslice.model.topology import Core, HostTopology
from bmslice.plan.capacity import Load, NodeFree
from bmslice.plan.placement import Placement, Request

L3_STEP_LIMIT = 300  # the depth-first search's steps before CP-SAT takes over (`l3_sat.py`)
L3_SAT_TIME_LIMIT = 10.0  # CP-SAT's deterministic seconds; past them the best found, and the plan says so
_NONE = sys.maxsize

Shape = tuple[int, int, int, int]  # (singles, pairs, memory MiB, L3 ways) of a load, hashable and ordered
_ZERO: Shape = (0, 0, 0, 0)


class _OutOfSteps(Exception):
    pass


@dataclass(frozen=True)
class DomainFree:
    """Free whole cores of one L3 domain within one NUMA node."""

    id: int
    twos: int
    ones: int
    ways: int = _NONE  # L3 ways left for slices that reserve some (`cache.l3`)


@dataclass(frozen=True)
class NodeDomains:
    """A node's free capacity, and the same cores split by L3 domain."""

    free: NodeFree
    domains: tuple[DomainFree, ...]

    @property
    def several(self) -> bool:
        return len(self.domains) > 1


@dataclass(frozen=True)
class L3Layout:
    nodes: dict[str, int]  # VM -> NUMA node
    domains: dict[str, int | None]  # VM -> the one L3 domain holding its cores; None: any of its node's
    splits: int  # VMs placed over several domains of a node that has several
    optimal: bool  # proven the fewest split VMs (else: the best found in the search budget)
    numa_optimal: bool  # proven the fewest cross-NUMA NICs


def shape_of(load: Load, ways: int) -> Shape:
    return (load.singles, load.pairs, load.memory_mib, ways)


def _add(a: Shape, b: Shape) -> Shape:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])


def _fits(twos: int, ones: int, load: Shape) -> bool:
    return NodeFree(-1, twos, ones, _NONE).fits(Load(load[0], load[1], 0))


def fits_domain(dom: DomainFree, load: Shape) -> bool:
    """Cores, and the L3 ways of the VMs that reserve some (a VM wholly in a domain needs them there)."""
    return load[3] <= dom.ways and _fits(dom.twos, dom.ones, load)


def leftover(twos: int, ones: int, load: Shape) -> tuple[int, int]:
    """(twos, ones) a domain keeps after `load`, taken the way `allocate.py` takes cores.

    >>> leftover(3, 1, (2, 1, 0, 0))  # a single on the one, a single and a pair on twos
    (1, 0)
    """
    singles, pairs = load[0], load[1]
    on_ones = min(ones, singles)
    twos -= singles - on_ones
    ones -= on_ones
    on_twos = min(pairs, twos)
    return twos - on_twos, ones - 2 * (pairs - on_twos)


NodeState = tuple[Shape, tuple[Shape, ...]]  # (split pool load, load of each domain)
Canonical = tuple[int, Shape, tuple[tuple[tuple[int, int, int], Shape], ...]]  # a node state up to swaps


@dataclass(frozen=True)
class _Choice:
    cost: int
    slot: int
    domain: int | None  # index into the node's domains; None: the split pool


class _Search:
    def __init__(
        self, requests: Sequence[Request], nodes: Sequence[NodeDomains], ways: Mapping[str, int], step_limit: int
    ) -> None:
        self.requests = list(requests)
        self.nodes = list(nodes)
        self.step_limit = step_limit
        self.steps = 0
        self.weight = len(requests) + 1  # one cross-NUMA NIC outweighs every split VM
        slot_of = {n.free.node: i for i, n in enumerate(nodes)}
        self.shapes = [shape_of(r.load, ways.get(r.name, 0)) for r in requests]
        self.choices: list[list[_Choice]] = []
        for req, shape in zip(self.requests, self.shapes, strict=True):
            options = []
            for rank, (node, nic_cost) in enumerate(zip(req.candidates, req.costs, strict=True)):
                slot = slot_of.get(node)
                if slot is None:
                    continue
                base = nic_cost * self.weight
                if self.nodes[slot].several:
                    for d, dom in enumerate(self.nodes[slot].domains):
                        if fits_domain(dom, shape):
                            options.append((base, rank, d, _Choice(base, slot, d)))
                    options.append((base + 1, rank, _NONE, _Choice(base + 1, slot, None)))
                else:
                    options.append((base, rank, _NONE, _Choice(base, slot, None)))
            self.choices.append([c for *_, c in sorted(options, key=lambda o: o[:3])])
        self.lower_bound = [0] * (len(requests) + 1)
        for i in range(len(requests) - 1, -1, -1):
            cheapest = min((c.cost for c in self.choices[i]), default=_NONE)
            self.lower_bound[i] = min(_NONE, self.lower_bound[i + 1] + cheapest)
        self.domain_class = [[(d.twos, d.ones, d.ways) for d in n.domains] for n in nodes]
        signature = {
            slot: (
                n.free.twos,
                n.free.ones,
                n.free.memory_mib,
                n.free.smt,
                tuple(sorted(self.domain_class[slot])),
                tuple(self._cost(i, slot) for i in range(len(requests))),
            )
            for slot, n in enumerate(nodes)
        }
        classes: dict[object, int] = {}
        self.node_class = [classes.setdefault(signature[slot], len(classes)) for slot in range(len(nodes))]
        self.memo: dict[object, tuple[int, object]] = {}

    def _cost(self, i: int, slot: int) -> tuple[int, ...]:
        return tuple(sorted({c.cost for c in self.choices[i] if c.slot == slot}))

    # --- state -------------------------------------------------------------------------------

    def _canonical(self, slot: int, state: NodeState) -> Canonical:
        split, loads = state
        return (self.node_class[slot], split, tuple(sorted(zip(self.domain_class[slot], loads, strict=True))))

    def _key(self, i: int, states: tuple[NodeState, ...]) -> object:
        return (i, tuple(sorted(self._canonical(slot, s) for slot, s in enumerate(states))))

    def _node_fits(self, slot: int, state: NodeState) -> bool:
        node = self.nodes[slot]
        split, loads = state
        if split[2] + sum(load[2] for load in loads) > node.free.memory_mib:
            return False
        if not node.several:
            return _fits(node.free.twos, node.free.ones, split)
        twos = ones = 0
        for dom, load in zip(node.domains, loads, strict=True):
            if not fits_domain(dom, load):
                return False
            left = leftover(dom.twos, dom.ones, load)
            twos, ones = twos + left[0], ones + left[1]
        return _fits(twos, ones, split)

    def _after(self, states: tuple[NodeState, ...], choice: _Choice, shape: Shape) -> NodeState:
        split, loads = states[choice.slot]
        if choice.domain is None:
            return (_add(split, shape), loads)
        d = choice.domain
        return (split, (*loads[:d], _add(loads[d], shape), *loads[d + 1 :]))

    def _abstract(self, states: tuple[NodeState, ...], choice: _Choice) -> object:
        """The choice up to swaps of interchangeable nodes and domains."""
        slot = choice.slot
        where = (
            None if choice.domain is None else (self.domain_class[slot][choice.domain], states[slot][1][choice.domain])
        )
        return (self._canonical(slot, states[slot]), where)

    # --- search ------------------------------------------------------------------------------

    def best(self, i: int, states: tuple[NodeState, ...]) -> int:
        """Lowest cost of placing requests[i:], or _NONE."""
        if i == len(self.requests):
            return 0
        key = self._key(i, states)
        if key in self.memo:
            return self.memo[key][0]
        self.steps += 1
        if self.steps > self.step_limit:
            raise _OutOfSteps
        best_cost, best_choice = _NONE, None
        tried: set[object] = set()
        for choice in self.choices[i]:
            if choice.cost + self.lower_bound[i + 1] >= best_cost:
                break  # choices come cheapest first: nothing later can do better
            abstract = self._abstract(states, choice)
            if abstract in tried:
                continue
            tried.add(abstract)
            state = self._after(states, choice, self.shapes[i])
            if not self._node_fits(choice.slot, state):
                continue
            rest = self.best(i + 1, (*states[: choice.slot], state, *states[choice.slot + 1 :]))
            if rest != _NONE and choice.cost + rest < best_cost:
                best_cost, best_choice = choice.cost + rest, abstract
                if best_cost == self.lower_bound[i]:
                    break
        self.memo[key] = (best_cost, best_choice)
        return best_cost

    def layout(self) -> tuple[dict[str, int], dict[str, int | None], int] | None:
        """(VM -> node, VM -> domain id or None, cost), or None when nothing fits."""
        states: tuple[NodeState, ...] = tuple((_ZERO, tuple(_ZERO for _ in n.domains)) for n in self.nodes)
        cost = self.best(0, states)
        if cost == _NONE:
            return None
        nodes: dict[str, int] = {}
        domains: dict[str, int | None] = {}
        for i, req in enumerate(self.requests):
            wanted = self.memo[self._key(i, states)][1]
            # the first choice, in preference order, that this state's memoised choice stands for
            choice = next(c for c in self.choices[i] if self._abstract(states, c) == wanted)
            node = self.nodes[choice.slot]
            nodes[req.name] = node.free.node
            domains[req.name] = None if choice.domain is None else node.domains[choice.domain].id
            states = (
                *states[: choice.slot],
                self._after(states, choice, self.shapes[i]),
                *states[choice.slot + 1 :],
            )
        return nodes, domains, cost


def _split_count(
    nodes: Mapping[str, int], domains: Mapping[str, int | None], by_node: Mapping[int, NodeDomains]
) -> int:
    return sum(1 for name, node in nodes.items() if domains[name] is None and by_node[node].several)


def _per_node(
    requests: Sequence[Request], nodes: Sequence[NodeDomains], ways: Mapping[str, int], placed: Mapping[str, int]
) -> dict[str, int | None]:
    """Fallback with the NUMA placement fixed: one small search per node (the fewest splits on
    each node for that placement, unless even that runs long)."""
    domains: dict[str, int | None] = {}
    for node in nodes:
        own = [Request(r.name, r.load, (node.free.node,), (0,)) for r in requests if placed[r.name] == node.free.node]
        try:
            found = _Search(own, [node], ways, L3_STEP_LIMIT).layout() if own else ({}, {}, 0)
        except _OutOfSteps:
            from bmslice.plan.l3_sat import solve_l3  # imported only when a case needs it (ortools)

            answer = solve_l3(own, [node], ways, L3_SAT_TIME_LIMIT)
            found = None if answer.nodes is None else (answer.nodes, answer.domains, 0)
        if found is None:  # nothing found in the budget: every VM of the node takes cores wherever they are free
            domains.update(dict.fromkeys((r.name for r in own), None))
        else:
            domains.update(found[1])
    return domains


def place_in_l3(
    requests: Sequence[Request], nodes: Sequence[NodeDomains], placed: Placement, ways: Mapping[str, int] | None = None
) -> L3Layout:
    """Node and L3 domain of every request; `placed` (a feasible NUMA placement) is the fallback.

    `ways`: the L3 ways each VM that reserves some needs in a domain (`cache_ways.way_needs`);
    a VM placed wholly in a domain takes them from its `DomainFree.ways`. (A VM that spans
    domains needs them in each; `cache_ways.reserve_cache` checks that after allocation.)
    Hosts with one L3 domain per node have nothing to choose: `placed` is kept as it is.
    """
    ways = dict(ways or {})
    # each share of a VM over several nodes needs the VM's ways in the domain it sits in
    ways.update({r.name: ways[r.group] for r in requests if r.group is not None and r.group in ways})
    by_node = {n.free.node: n for n in nodes}
    if not any(n.several for n in nodes):
        return L3Layout(dict(placed.nodes), dict.fromkeys(placed.nodes, None), 0, True, placed.numa_optimal)
    if any(r.group is not None for r in requests):
        # A VM over several nodes: its shares keep the NUMA placement's nodes, and each node's
        # VMs and shares get the fewest split L3 domains that node allows.
        # (No split at all is the fewest there can be; otherwise the plan says it is per node.)
        domains = _per_node(requests, nodes, ways, placed.nodes)
        split = _split_count(placed.nodes, domains, by_node)
        return L3Layout(dict(placed.nodes), domains, split, split == 0, placed.numa_optimal)
    ordered = sorted(requests, key=lambda r: (len(r.candidates), -(2 * r.load.pairs + r.load.singles), r.name))
    try:
        found = _Search(ordered, nodes, ways, L3_STEP_LIMIT).layout()
    except _OutOfSteps:
        return _complete(ordered, nodes, placed, ways)
    if found is None:
        raise PlanError("internal: no L3 layout for a feasible NUMA placement")
    node_of, domains, _ = found
    return L3Layout(node_of, domains, _split_count(node_of, domains, by_node), True, True)


def _nic_cost(requests: Sequence[Request], node_of: Mapping[str, int]) -> int:
    return sum(dict(zip(r.candidates, r.costs, strict=True))[node_of[r.name]] for r in requests)


def _complete(
    requests: Sequence[Request], nodes: Sequence[NodeDomains], placed: Placement, ways: Mapping[str, int]
) -> L3Layout:
    """CP-SAT's layout where the search ran out of steps; failing a proof, the better of its best and
    the NUMA placement kept with the fewest split VMs on each node."""
    from bmslice.plan.l3_sat import solve_l3  # imported only when a case needs it (ortools)

    by_node = {n.free.node: n for n in nodes}
    answer = solve_l3(requests, nodes, ways, L3_SAT_TIME_LIMIT)
    if answer.nodes is not None and answer.proven:
        return L3Layout(answer.nodes, answer.domains, _split_count(answer.nodes, answer.domains, by_node), True, True)
    domains = _per_node(requests, nodes, ways, placed.nodes)
    kept = L3Layout(
        dict(placed.nodes), domains, _split_count(placed.nodes, domains, by_node), False, placed.numa_optimal
    )
    if answer.nodes is None:
        return kept
    weight = len(requests) + 1
    splits = _split_count(answer.nodes, answer.domains, by_node)
    mine, theirs = _nic_cost(requests, answer.nodes), _nic_cost(requests, placed.nodes)
    if (mine * weight + splits, 0) < (theirs * weight + kept.splits, 1):
        return L3Layout(answer.nodes, answer.domains, splits, False, placed.numa_optimal and mine == theirs)
    return kept


def core_l3(topo: HostTopology) -> Callable[[Core], int | None]:
    """A core's L3 domain id (its threads share one), or None when the host does not say."""

    def l3_of(core: Core) -> int | None:
        domain = topo.l3_of(core.first)
        return None if domain is None else domain.id

    return l3_of


def node_domains(
    free: Sequence[NodeFree],
    free_cores: Sequence[Core],
    l3_of: Callable[[Core], int | None],
    ways: Mapping[int, int] | None = None,
) -> list[NodeDomains]:
    """Each node's free cores (and L3 ways, `cache_ways.free_ways`) by L3 domain; a node with a core
    of unknown L3 counts as one domain."""
    out = []
    for node in free:
        cores = [c for c in free_cores if c.node == node.node]
        known = [(core, l3) for core in cores if (l3 := l3_of(core)) is not None]
        domains: tuple[DomainFree, ...] = ()
        if len(known) == len(cores):
            domains = tuple(
                DomainFree(
                    i,
                    sum(1 for core, l3 in known if l3 == i and core.threads == 2),
                    sum(1 for core, l3 in known if l3 == i and core.threads == 1),
                    (ways or {}).get(i, _NONE),
                )
                for i in sorted({l3 for _, l3 in known})
            )
        out.append(NodeDomains(node, domains))
    return out


def l3_ids(topo: HostTopology, cores: Sequence[CpuSet]) -> tuple[int, ...]:
    """The L3 domains `cores` sit in, ascending."""
    found = {topo.l3_of(core.min()) for core in cores}
    return tuple(sorted(d.id for d in found if d is not None))


def with_split_notes(topo: HostTopology, vms: Sequence[VmPlan], reserved: CpuSet) -> tuple[VmPlan, ...]:
    """VMs whose cores span L3 domains carry a warning that says so, and why.

    The why depends on the host alone (never on other VMs), so a running slice reads the same
    on every re-plan.
    """
    l3_of = core_l3(topo)
    cores_in = Counter((core.node, l3_of(core)) for core in topo.cores if core.cpus.isdisjoint(reserved))
    out = []
    for vm in vms:
        if len(vm.l3_domains) > 1 and len(vm.numa_nodes) == 1:  # over several nodes: split by request
            node = vm.numa_nodes[0]
            room = max((n for (where, l3), n in cores_in.items() if where == node and l3 is not None), default=0)
            why = (
                f"more cores than one L3 cache of node {node} has outside the host's ({room})"
                if len(vm.cores) > room
                else "no layout of the whole plan keeps every VM inside one L3 cache"
            )
            where = ", ".join(map(str, vm.l3_domains))
            vm = replace(
                vm, warnings=(*vm.warnings, f"{vm.name}: its {len(vm.cores)} cores span L3 caches {where} ({why})")
            )
        out.append(vm)
    return tuple(out)
