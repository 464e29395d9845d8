"""What a (partial) layout takes: load per NUMA node, VFs and whole PFs per host, VMs per host
and per rack. The first pass grows one as it places VMs; refusals read what is left."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping

from bmslice.fleet.placement.problem import Host, Nodes, Problem, Spot, shares
from bmslice.model.fleet import NicKind, Role
from bmslice.plan.capacity import Load

# A VM as the host planner's no-goods name it: its class's key (("fixed", name) for a VM that
# stays where it is), nodes and PFs.
Item = tuple[tuple[object, ...], Nodes, tuple[str, ...]]


class Tally:
    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.load: defaultdict[tuple[str, int], Load] = defaultdict(Load)
        self.vfs: Counter[tuple[str, str]] = Counter()  # (host, PF address) -> VFs taken
        self.passed: dict[tuple[str, str], str] = {}  # (host, PF address) -> VM
        self.per_host: Counter[tuple[str, str, Role]] = Counter()  # (host, cluster, role)
        self.per_rack: Counter[tuple[str, Role, str]] = Counter()  # (cluster, role, rack)
        self.items: defaultdict[str, Counter[Item]] = defaultdict(Counter)  # host -> its VMs as items
        self.spots: dict[str, Spot] = {}

    @classmethod
    def of(cls, problem: Problem, layout: Mapping[str, Spot]) -> Tally:
        tally = cls(problem)
        for name, spot in layout.items():
            tally.add(name, spot)
        return tally

    def item(self, name: str, spot: Spot) -> Item:
        cls = self.problem.class_of.get(name)
        key = cls.key if cls is not None else self.problem.fixed_keys.get(name, ("fixed", name))
        return (key, spot.nodes, spot.pfs)

    def add(self, name: str, spot: Spot) -> None:
        req = self.problem.requests[name]
        host = self.problem.host(spot.host)
        for node, load in zip(spot.nodes, shares(req.size), strict=True):
            self.load[(spot.host, node)] = self.load[(spot.host, node)] + load
        for nic in spot.nics:
            if nic.kind is NicKind.PASSTHROUGH:
                self.passed[(spot.host, nic.address)] = name
            else:
                self.vfs[(spot.host, nic.address)] += nic.count
        self.per_host[(spot.host, req.cluster, req.role)] += 1
        self.per_rack[(req.cluster, req.role, host.rack)] += 1
        self.items[spot.host][self.item(name, spot)] += 1
        self.spots[name] = spot

    def fits(self, host: Host, nodes: Nodes, loads: tuple[Load, ...]) -> bool:
        name = host.name
        for node, load in zip(nodes, loads, strict=True):
            if not host.node(node).free.fits(self.load[(name, node)] + load):
                return False
        return True

    def cores_left(self, host: Host, node_id: int) -> int:
        """Whole cores still free on a node (pairs sit on two-thread cores first, as the planner
        splits them)."""
        free = host.node(node_id).free
        load = self.load[(host.name, node_id)]
        split = free.split(load)
        if split is None:
            return 0
        ones_to_singles, twos_to_singles = split
        twos_left = free.twos - twos_to_singles
        pairs_on_twos = min(load.pairs, twos_left)
        ones_left = free.ones - ones_to_singles - 2 * (load.pairs - pairs_on_twos)
        return twos_left - pairs_on_twos + ones_left

    def memory_left(self, host: Host, node_id: int) -> int:
        return host.node(node_id).free.memory_mib - self.load[(host.name, node_id)].memory_mib

    def vfs_left(self, host: Host, address: str) -> int:
        if (host.name, address) in self.passed:
            return 0
        return host.pf(address).vf_cap - self.vfs[(host.name, address)]

    def whole_free(self, host: Host, address: str) -> bool:
        return (host.name, address) not in self.passed and self.vfs[(host.name, address)] == 0
