"""An independent exhaustive oracle for fleet placement (small fleets), and checks of any placement.

It shares no code with `bmslice.fleet.placement`. From the public inputs only (the `Fleet`,
each host's `HostTopology`, `bmslice.plan.host.reserved_cores` for the cores a host keeps)
it rebuilds what the placement contract (the hard rules H1-H8 and preferences O1-O3)
talks about, then decides a small fleet by trying every assignment.

Capacity (H4), counted per NUMA node with CPUs:
- whole cores from the raw CPU list: a core is a CPU's online sibling set; the cores
  `reserved_cores` names stay with the host; the rest are "twos" (two online threads)
  or "ones" (no SMT, or a sibling offline);
- memory: the node's memory less the host's `reserved_memory_per_node` (hugepages come out
  of this memory; the host planner asks for them at boot, so memory is the bound);
- a VM share takes `pairs` (two vCPUs that may share a two-thread core) and `singles` (an
  odd last vCPU, and the dedicated emulator core on the first share); a set of shares fits
  a node when some number of singles on ones leaves room for the pairs, each on a two or on
  two ones (every split is tried, see `NodeRoom.fits`).

NICs (H6): a PF is a network function that is not a VF, does not carry the default route
(or a management address, unless the host section allows it), is not a bond or bridge
member and is cabled (when the inventory lists the host's `nics`, only those). It may be
passed through whole when it has no VFs enabled and every other device of its IOMMU group
that the host still drives goes to the same VM (the planner's IOMMU rule); at most one VM
passes through devices of one IOMMU group. It serves VFs up to `sriov_totalvfs`, never
while passed through.

Kept VMs (H7, O1): a VM of the kept placement stays on its host, its nodes in order (a
running VM's guest cell i stays on host node i, its emulator core with the first share) and
its NICs; with `allow_move` any change of these is a move, which O1 counts.

The search (`solve`), exact and exhaustive, in two stages. VMs are grouped into kinds:
new VMs of one cluster, role and size are interchangeable; a kept VM is a kind of its own.
1. Per host: every content (how many VMs of each kind) the host can hold under H2, H3's host
   half, H4-H6 and H7, with the least (O1, O3) of placing those VMs on its nodes and NICs:
   a depth-first search over every option (nodes, PFs) of each VM, memoised on the node
   loads and PF use. Contents grow one VM at a time; one that does not fit is not grown.
2. Over the hosts, rack by rack: one content per host so that together they are exactly the
   VMs asked for, with H3's rack half, and O2 added as each rack closes (sum over clusters
   and roles of the rack's count squared); memoised on (host, VMs still to place, counts in
   the open rack).
O2 depends only on which host holds a VM, and (O1, O3) only on where on its host, so the
sum is the lexicographic optimum. An optimal assignment is read back by replaying the
memoised optima. Exponential, but fast for fleets of a few hosts and about ten VMs.

The checks (`violations`, `objective`) read any `Placement` and judge it by the same
rules; H8 runs the host planner on each host's generated spec.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import msgspec

from bmslice.errors import PlanError, SpecError
from bmslice.fleet.check import check_host
from bmslice.fleet.render import host_spec_data
from bmslice.model.fields import as_data
from bmslice.model.fleet import (
    ANY,
    Fleet,
    InventoryHost,
    NicAssignment,
    NicKind,
    NicRequest,
    PlacedVm,
    Placement,
    RackSpread,
    Role,
)
from bmslice.model.spec import EmulatorPolicy
from bmslice.model.topology import HostTopology, PciDevice
from bmslice.plan.host import reserved_cores

PARKED_DRIVERS = frozenset({None, "vfio-pci", "pci-stub"})  # drivers that mean "not the host's"

Cost = tuple[int, int, int]  # (O1 moved, O2 rack spread, O3 cross-NUMA NICs), compared lexicographically
ZERO: Cost = (0, 0, 0)


# --- what a host offers ----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRoom:
    """Free whole cores and memory of one NUMA node."""

    node: int
    twos: int
    ones: int
    memory_mib: int

    def fits(self, singles: int, pairs: int, memory_mib: int) -> bool:
        """Whether shares totalling `singles`, `pairs` and `memory_mib` fit: some number of singles
        on ones (the rest of them on twos) leaves enough twos, or pairs of ones, for the pairs."""
        if memory_mib > self.memory_mib:
            return False
        for on_ones in range(min(self.ones, singles) + 1):
            on_twos = singles - on_ones
            if on_twos <= self.twos and pairs <= (self.twos - on_twos) + (self.ones - on_ones) // 2:
                return True
        return False


@dataclass(frozen=True)
class Pf:
    """A NIC a tenant VM may get on one host."""

    address: str
    name: str  # its interface name (its address when it has none), as a spec names it
    interfaces: tuple[str, ...]
    node: int | None
    totalvfs: int
    whole: bool  # may be passed through whole
    needs: frozenset[str]  # other PFs of its IOMMU group that must go to the same VM
    group: int | None

    def matches(self, ref: str) -> bool:
        return ref in (ANY, self.address) or ref in self.interfaces


@dataclass(frozen=True)
class Host:
    name: str
    role: Role
    rack: str
    nodes: tuple[NodeRoom, ...]  # nodes with CPUs, by id
    pfs: tuple[Pf, ...]  # by name
    nic_local_only: bool  # host.nic_numa_policy: require

    def room(self, node: int) -> NodeRoom:
        return next(n for n in self.nodes if n.node == node)

    def pf(self, address: str) -> Pf | None:
        return next((p for p in self.pfs if p.address == address), None)


def _cores(topo: HostTopology) -> list[tuple[frozenset[int], int | None]]:
    """Physical cores as (online CPUs, node), rebuilt from each CPU's sibling list."""
    online = {cpu.id for cpu in topo.cpus if cpu.online}
    seen: set[frozenset[int]] = set()
    out = []
    for cpu in sorted(topo.cpus, key=lambda c: c.id):
        if not cpu.online:
            continue
        core = frozenset((set(cpu.siblings) & online) | {cpu.id})
        if core not in seen:
            seen.add(core)
            out.append((core, cpu.node))
    return out


def _excluded(inv: InventoryHost, topo: HostTopology, dev: PciDevice) -> bool:
    if not dev.class_code.startswith("0x02") or dev.physfn is not None:
        return True
    if topo.default_route_interface is not None and topo.default_route_interface in dev.interfaces:
        return True
    if not inv.host.allow_management_nic and set(dev.interfaces) & set(topo.management_interfaces):
        return True
    masters = {i.name: i.master for i in topo.net_interfaces}
    if any(masters.get(name) for name in dev.interfaces):
        return True
    return bool(inv.nics) and not any(name in inv.nics for name in dev.interfaces)


def _pfs(inv: InventoryHost, topo: HostTopology) -> tuple[Pf, ...]:
    eligible = [d for d in topo.pci_devices if not _excluded(inv, topo, d)]
    by_address = {d.address: d for d in eligible}
    needs: dict[str, frozenset[str]] = {}
    for dev in eligible:
        members = [d for d in topo.pci_devices if dev.iommu_group is not None and d.iommu_group == dev.iommu_group]
        needs[dev.address] = frozenset(
            m.address
            for m in members
            if m.address != dev.address and not m.class_code.startswith("0x0604") and m.driver not in PARKED_DRIVERS
        )
    # whole: no VFs enabled and every device it needs is itself a PF that may go whole (a fixpoint)
    whole = {d.address for d in eligible if d.sriov_numvfs == 0}
    changed = True
    while changed:
        changed = False
        for address in sorted(whole):
            if not needs[address] <= whole:
                whole.discard(address)
                changed = True
    pfs = [
        Pf(
            d.address,
            d.interfaces[0] if d.interfaces else d.address,
            d.interfaces,
            d.numa_node,
            d.sriov_totalvfs,
            d.address in whole,
            needs[d.address] if d.address in whole else frozenset(),
            d.iommu_group,
        )
        for d in by_address.values()
    ]
    return tuple(sorted(pfs, key=lambda p: (p.name, p.address)))


def build_host(inv: InventoryHost, topo: HostTopology) -> Host:
    """What `inv` offers tenants, counted from its topology."""
    kept = {cpu for core in reserved_cores(topo, inv.host) for cpu in core.cpus}
    cores = _cores(topo)
    nodes = []
    for numa in sorted(topo.numa_nodes, key=lambda n: n.id):
        if not numa.cpus:
            continue
        free = [cpus for cpus, node in cores if node == numa.id and not cpus & kept]
        twos = sum(len(c) == 2 for c in free)
        nodes.append(NodeRoom(numa.id, twos, len(free) - twos, numa.memory_mib - inv.host.reserved_memory_per_node))
    local_only = inv.host.nic_numa_policy.value == "require"
    return Host(inv.name, inv.role, inv.rack, tuple(nodes), _pfs(inv, topo), local_only)


# --- what the fleet asks ---------------------------------------------------------------------


Share = tuple[int, int, int]  # (singles, pairs, memory MiB) on one node


@dataclass(frozen=True)
class Vm:
    name: str
    cluster: str
    role: Role
    index: int
    shares: tuple[Share, ...]  # one per node it spans, the emulator core with the first
    nic: NicRequest | None
    vlan: int
    kind: str  # identical VMs (same cluster, role, size) share it


def vms_of(fleet: Fleet) -> list[Vm]:
    out = []
    for req in fleet.vm_requests():
        size = req.size
        k = size.numa_nodes
        shares = []
        for part in range(k):
            pairs, odd = divmod(size.vcpus // k, 2)
            dedicated = size.emulator is EmulatorPolicy.DEDICATED and part == 0
            shares.append((odd + int(dedicated), pairs, size.memory // k))
        cluster = fleet.cluster(req.cluster)
        kind = f"{req.cluster}/{req.role.value}/{msgspec.json.encode(as_data(size)).decode()}"
        out.append(Vm(req.name, req.cluster, req.role, req.index, tuple(shares), size.nic, cluster.vlan, kind))
    return out


@dataclass(frozen=True, order=True)
class Choice:
    """Where one VM goes: a host, its nodes (the first share's first) and its PFs by address."""

    host: str
    nodes: tuple[int, ...]
    pfs: tuple[str, ...] = ()


def control_planes_apart(fleet: Fleet, cluster: str) -> bool:
    """H3 applies unless the cluster opts out (`spread: {control_planes: any}`; a model without the
    field has no opt-out)."""
    value = getattr(fleet.cluster(cluster).spread, "control_planes", "apart")
    return str(getattr(value, "value", value)) != "any"


def racks_apart(fleet: Fleet, cluster: str) -> bool:
    """H3's rack half: the control hosts span at least as many racks as the cluster has control planes."""
    racks = {h.rack for h in fleet.inventory if h.role is Role.CONTROL}
    return len(racks) >= len(fleet.cluster(cluster).control_plane)


def _node_tuples(host: Host, vm: Vm, old: PlacedVm | None = None) -> list[tuple[int, ...]]:
    """Every way to give `vm`'s shares distinct nodes, one tuple per way the nodes' loads differ.
    A kept VM's own tuple (`old` on this host) stands for every order that loads the nodes
    alike: the same nodes in another order are a move (O1, H7), the same load."""
    ids = [n.node for n in host.nodes]
    k = len(vm.shares)
    if k == 1:
        return [(n,) for n in ids]
    if vm.shares[0] == vm.shares[1]:  # equal shares: which one is "first" changes nothing
        tuples = list(combinations(ids, k))
    else:
        tuples = [(first, *rest) for first in ids for rest in combinations([n for n in ids if n != first], k - 1)]
    if old is None or old.host != host.name:
        return tuples
    mine = _loads(vm, old.nodes)
    return [old.nodes if _loads(vm, nodes) == mine else nodes for nodes in tuples]


def _loads(vm: Vm, nodes: Sequence[int]) -> list[tuple[int, Share]]:
    """Which share each node carries: what the order of a VM's nodes changes about its load."""
    return sorted(zip(nodes, vm.shares, strict=True))


def _nic_choices(host: Host, vm: Vm) -> list[tuple[str, ...]]:
    want = vm.nic
    if want is None:
        return [()]
    named = [p for p in host.pfs if p.matches(want.pf)]
    if want.kind is NicKind.SRIOV:
        return [(p.address,) for p in named if p.totalvfs >= want.count]
    whole = [p for p in named if p.whole]
    return [
        tuple(p.address for p in chosen)
        for chosen in combinations(whole, want.count)
        if all(p.needs <= {c.address for c in chosen} for p in chosen)
    ]


def cross_numa(host: Host, nodes: Sequence[int], pfs: Iterable[str]) -> int:
    """O3 of one VM: its NIC entries whose PF is on none of its nodes (unknown node: cross)."""
    out = 0
    for address in pfs:
        pf = host.pf(address)
        if pf is None or pf.node is None or pf.node not in nodes:
            out += 1
    return out


def options(host: Host, vm: Vm, old: PlacedVm | None = None) -> list[Choice]:
    """Every place for `vm` on `host` that the host could hold were it empty (H1, H4 per share, H5, H6);
    `old`: where the VM is in the kept placement (its own order of nodes is among them)."""
    if host.role is not vm.role or len(vm.shares) > len(host.nodes):
        return []
    out = []
    nic_choices = _nic_choices(host, vm)
    for nodes in _node_tuples(host, vm, old):
        if not all(host.room(n).fits(*share) for n, share in zip(nodes, vm.shares, strict=True)):
            continue
        for pfs in nic_choices:
            if host.nic_local_only and any(
                (pf := host.pf(a)) is not None and pf.node is not None and pf.node not in nodes for a in pfs
            ):
                continue
            out.append(Choice(host.name, nodes, pfs))
    return out


def moved(old: PlacedVm, host: str, nodes: Sequence[int], pfs: Iterable[str]) -> bool:
    """O1: a kept VM moved when it changed host, nodes or NICs (each rebuilds it). Nodes in
    order: a running VM's guest cell i stays on host node i, its emulator core with the first
    share, so the same nodes in another order are a move too."""
    return old.host != host or tuple(old.nodes) != tuple(nodes) or sorted(pfs) != _pfs_of(old)


def _pfs_of(vm: PlacedVm) -> list[str]:
    return sorted(n.address for n in vm.nics)


# --- the search ------------------------------------------------------------------------------


@dataclass
class Solution:
    """The oracle's answer: infeasible (`cost` None), or the optimum and one assignment reaching it."""

    cost: Cost | None
    assignment: dict[str, Choice] = field(default_factory=dict)
    states: int = 0  # memoised states visited (the work done)

    @property
    def feasible(self) -> bool:
        return self.cost is not None


@dataclass(frozen=True)
class Kind:
    """Interchangeable VMs: new VMs of one cluster, role and size; a kept VM is a kind of its own."""

    vms: tuple[Vm, ...]  # in fleet order: the names an assignment hands out
    old: PlacedVm | None = None  # the kept VM's place

    @property
    def vm(self) -> Vm:
        return self.vms[0]


Content = tuple[int, ...]  # VMs of each kind on one host


class _HostSearch:
    """Which contents one host can hold, and at what least (O1, O3): every VM of the content
    tried on every option of the host, memoised on the node loads and PF use."""

    def __init__(self, fleet: Fleet, host: Host, kinds: Sequence[Kind], allow_move: bool) -> None:
        self.fleet = fleet
        self.host = host
        self.kinds = kinds
        self.choices: list[list[Choice]] = []
        self.move: list[list[int]] = []
        for kind in kinds:
            allowed = sorted(options(host, kind.vm, kind.old))
            if kind.old is not None and not allow_move:
                allowed = kept_choices(kind.old, allowed)
            self.choices.append(allowed)
            self.move.append([int(kind.old is not None and moved(kind.old, c.host, c.nodes, c.pfs)) for c in allowed])
        self.nodes = [n.node for n in host.nodes]
        self.pfs = [p.address for p in host.pfs]
        self.states = 0

    def content_allowed(self, content: Content) -> bool:
        """H2 and H3's host half for a content."""
        per_group: Counter[tuple[str, Role]] = Counter()
        for kind, n in zip(self.kinds, content, strict=True):
            per_group[(kind.vm.cluster, kind.vm.role)] += n
        for (cluster, role), n in per_group.items():
            if n > self.fleet.cluster(cluster).spread.max_per_host:
                return False
            if role is Role.CONTROL and n > 1 and control_planes_apart(self.fleet, cluster):
                return False
        return True

    def solve(self, content: Content) -> tuple[tuple[int, int] | None, list[tuple[int, Choice]]]:
        """The least (O1, O3) of the content on this host (None: it does not fit) and the
        options of its VMs (kind index, option) reaching it."""
        slots = [k for k, n in enumerate(content) for _ in range(n)]
        loads = {node: (0, 0, 0) for node in self.nodes}
        use = dict.fromkeys(self.pfs, 0)  # VFs used; -1: passed through whole
        memo: dict[tuple[Any, ...], tuple[int, int] | None] = {}

        def fits(vm: Vm, choice: Choice) -> bool:
            for node, (singles, pairs, mib) in zip(choice.nodes, vm.shares, strict=True):
                s, p, m = loads[node]
                if not self.host.room(node).fits(s + singles, p + pairs, m + mib):
                    return False
            if vm.nic is None:
                return True
            if vm.nic.kind is NicKind.SRIOV:
                pf = self.host.pf(choice.pfs[0])
                assert pf is not None
                return use[pf.address] >= 0 and use[pf.address] + vm.nic.count <= pf.totalvfs
            for address in choice.pfs:
                pf = self.host.pf(address)
                assert pf is not None
                if use[address] != 0:
                    return False
                if pf.group is not None and any(q.group == pf.group and use[q.address] < 0 for q in self.host.pfs):
                    return False  # another VM passes through a device of this IOMMU group
            return True

        def take(vm: Vm, choice: Choice, sign: int) -> None:
            for node, (singles, pairs, mib) in zip(choice.nodes, vm.shares, strict=True):
                s, p, m = loads[node]
                loads[node] = (s + sign * singles, p + sign * pairs, m + sign * mib)
            if vm.nic is not None:
                for address in choice.pfs:
                    use[address] += sign * (vm.nic.count if vm.nic.kind is NicKind.SRIOV else -1)

        def steps(i: int) -> Iterable[tuple[int, tuple[int, int], tuple[int, int] | None]]:
            k = slots[i]
            vm = self.kinds[k].vm
            for j, choice in enumerate(self.choices[k]):
                if fits(vm, choice):
                    take(vm, choice, +1)
                    try:
                        yield j, (self.move[k][j], cross_numa(self.host, choice.nodes, choice.pfs)), best(i + 1)
                    finally:
                        take(vm, choice, -1)

        def best(i: int) -> tuple[int, int] | None:
            if i == len(slots):
                return (0, 0)
            key = (i, tuple(loads.values()), tuple(use.values()))
            if key not in memo:
                found: tuple[int, int] | None = None
                for _, step, rest in steps(i):
                    if rest is not None:
                        total = (step[0] + rest[0], step[1] + rest[1])
                        found = total if found is None or total < found else found
                memo[key] = found
            return memo[key]

        cost = best(0)
        self.states += len(memo)
        if cost is None:
            return None, []
        picked: list[tuple[int, Choice]] = []
        for i, k in enumerate(slots):  # replay the optimum
            target = best(i)
            j = next(
                j for j, step, rest in steps(i) if rest is not None and target == (step[0] + rest[0], step[1] + rest[1])
            )
            picked.append((k, self.choices[k][j]))
            take(self.kinds[k].vm, self.choices[k][j], +1)
        return cost, picked

    def contents(self, demand: Content) -> dict[Content, tuple[tuple[int, int], list[tuple[int, Choice]]]]:
        """Every content within `demand` this host can hold, with its least (O1, O3). Grown one VM
        at a time: a content that does not fit is never grown (nothing bigger fits either)."""
        out = {}
        todo = [tuple(0 for _ in demand)]
        seen = set(todo)
        while todo:
            content = todo.pop()
            cost, picked = self.solve(content)
            if cost is None:
                continue
            out[content] = (cost, picked)
            for k, n in enumerate(content):
                more = (*content[:k], n + 1, *content[k + 1 :])
                if n < demand[k] and more not in seen and self.content_allowed(more):
                    seen.add(more)
                    if self.choices[k]:
                        todo.append(more)
        return out


def hosts_of(fleet: Fleet, topologies: Mapping[str, HostTopology]) -> dict[str, Host]:
    return {inv.name: build_host(inv, topologies[inv.name]) for inv in fleet.inventory}


def kept_choices(old: PlacedVm, allowed: list[Choice]) -> list[Choice]:
    """A kept VM's own place (H7): its host, nodes and PFs (none when they no longer answer its request)."""
    return [c for c in allowed if not moved(old, c.host, c.nodes, c.pfs)]


def kinds_of(fleet: Fleet, existing: Placement | None, only: Iterable[str] | None) -> list[Kind]:
    old = {vm.name: vm for vm in existing.vms} if existing is not None else {}
    wanted = None if only is None else set(only)
    kinds: dict[str, list[Vm]] = {}
    out = []
    for vm in vms_of(fleet):
        if vm.name in old:
            out.append(Kind((vm,), old[vm.name]))
        elif wanted is None or vm.name in wanted:
            kinds.setdefault(vm.kind, []).append(vm)
    return out + [Kind(tuple(vms)) for vms in kinds.values()]


def solve(
    fleet: Fleet,
    topologies: Mapping[str, HostTopology],
    existing: Placement | None = None,
    *,
    allow_move: bool = False,
    only: Iterable[str] | None = None,
) -> Solution:
    """The least (O1, O2, O3) over every assignment of the fleet's VMs satisfying H1-H7.

    `existing`: VMs of it still in the fleet keep their host, nodes and NICs, or with
    `allow_move` may move at O1 cost 1. `only`: place just these new VMs (with every kept VM),
    to ask whether a set of VMs can be placed together.

    Two stages, both exhaustive. Per host (`_HostSearch.contents`): every content (how many
    VMs of each kind) that fits it under H2, H3's host half, H4-H6 and H7, with the least
    (O1, O3) of its VMs' nodes and NICs there. Then over the hosts, rack by rack: one content
    per host, together exactly the VMs asked for, H3's rack half, and O2 from each rack's
    counts; memoised on (host, VMs still to place, the counts in the current rack). O2 does
    not depend on where on a host a VM goes, so the sum of the hosts' least (O1, O3) and the
    contents' O2 is the exact lexicographic optimum.
    """
    hosts = hosts_of(fleet, topologies)
    kinds = kinds_of(fleet, existing, only)
    demand = tuple(len(k.vms) for k in kinds)
    order = sorted(hosts.values(), key=lambda h: (h.rack, h.name))
    per_host = [_HostSearch(fleet, h, kinds, allow_move) for h in order]
    contents = [search.contents(demand) for search in per_host]
    groups = sorted({(k.vm.cluster, k.vm.role) for k in kinds})
    spread = [fleet.cluster(c).spread.racks is RackSpread.SPREAD for c, _ in groups]
    rack_rule = [r is Role.CONTROL and control_planes_apart(fleet, c) and racks_apart(fleet, c) for c, r in groups]
    of_group = [groups.index((k.vm.cluster, k.vm.role)) for k in kinds]
    memo: dict[tuple[Any, ...], Cost | None] = {}

    def rack_cost(counts: tuple[int, ...]) -> int:
        return sum(n * n for n, on in zip(counts, spread, strict=True) if on)

    def steps(j: int, left: Content, counts: tuple[int, ...]) -> Iterable[tuple[Content, Cost, Cost | None]]:
        for content, ((o1, o3), _) in contents[j].items():
            if any(n > m for n, m in zip(content, left, strict=True)):
                continue
            here = list(counts)
            for k, n in enumerate(content):
                here[of_group[k]] += n
            if any(rule and n > 1 for rule, n in zip(rack_rule, here, strict=True)):
                continue  # H3: two control planes of a cluster in one rack
            rest_left = tuple(m - n for m, n in zip(left, content, strict=True))
            closing = j + 1 == len(order) or order[j + 1].rack != order[j].rack
            o2 = rack_cost(tuple(here)) if closing else 0
            after = best(j + 1, rest_left, tuple(0 for _ in groups) if closing else tuple(here))
            yield content, (o1, o2, o3), after

    def best(j: int, left: Content, counts: tuple[int, ...]) -> Cost | None:
        if j == len(order):
            return ZERO if not any(left) else None
        key = (j, left, counts)
        if key not in memo:
            found: Cost | None = None
            for _, step, rest in steps(j, left, counts):
                if rest is not None:
                    total = (step[0] + rest[0], step[1] + rest[1], step[2] + rest[2])
                    found = total if found is None or total < found else found
            memo[key] = found
        return memo[key]

    start = tuple(0 for _ in groups)
    cost = best(0, demand, start)
    states = len(memo) + sum(s.states for s in per_host)
    if cost is None:
        return Solution(None, states=states)
    assignment: dict[str, Choice] = {}
    names = [list(k.vms) for k in kinds]
    left, counts = demand, start
    for j in range(len(order)):  # replay the optimum, host by host
        target = best(j, left, counts)
        content = next(
            c for c, step, rest in steps(j, left, counts) if rest is not None and target == _plus(step, rest)
        )
        for k, choice in contents[j][content][1]:
            assignment[names[k].pop(0).name] = choice
        here = list(counts)
        for k, n in enumerate(content):
            here[of_group[k]] += n
        left = tuple(m - n for m, n in zip(left, content, strict=True))
        closing = j + 1 == len(order) or order[j + 1].rack != order[j].rack
        counts = start if closing else tuple(here)
    return Solution(cost, assignment, states)


def _plus(a: Cost, b: Cost) -> Cost:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


# --- any placement, judged -------------------------------------------------------------------


def to_placement(fleet: Fleet, topologies: Mapping[str, HostTopology], assignment: Mapping[str, Choice]) -> Placement:
    """A `Placement` of an assignment (the oracle's, or a reference model's), in fleet order."""
    hosts = hosts_of(fleet, topologies)
    placed = []
    for vm in vms_of(fleet):
        if vm.name not in assignment:
            continue
        choice = assignment[vm.name]
        host = hosts[choice.host]
        nics = []
        for address in choice.pfs:
            pf = host.pf(address)
            assert pf is not None and vm.nic is not None
            count = vm.nic.count if vm.nic.kind is NicKind.SRIOV else 1
            nics.append(NicAssignment(vm.nic.kind, pf.name, pf.address, pf.node, vm.vlan, count))
        spans = choice.nodes if len(choice.nodes) > 1 else ()
        placed.append(
            PlacedVm(
                vm.name, vm.cluster, vm.role, vm.index, choice.host, choice.nodes[0], tuple(nics), numa_nodes=spans
            )
        )
    return Placement(tuple(placed))


def objective(
    fleet: Fleet, topologies: Mapping[str, HostTopology], placement: Placement, existing: Placement | None = None
) -> Cost:
    """(O1, O2, O3) of a placement; O1 counts VMs of `existing` that changed host, nodes (in
    order) or NICs."""
    hosts = hosts_of(fleet, topologies)
    old = {vm.name: vm for vm in existing.vms} if existing is not None else {}
    o1 = sum(1 for vm in placement.vms if vm.name in old and moved(old[vm.name], vm.host, vm.nodes, _pfs_of(vm)))
    racks = Counter(
        (vm.cluster, vm.role, hosts[vm.host].rack)
        for vm in placement.vms
        if fleet.cluster(vm.cluster).spread.racks is RackSpread.SPREAD
    )
    o2 = sum(n * n for n in racks.values())
    o3 = sum(cross_numa(hosts[vm.host], vm.nodes, [n.address for n in vm.nics]) for vm in placement.vms)
    return (o1, o2, o3)


def moved_vms(placement: Placement, existing: Placement | None) -> set[str]:
    if existing is None:
        return set()
    old = {vm.name: vm for vm in existing.vms}
    return {vm.name for vm in placement.vms if vm.name in old and moved(old[vm.name], vm.host, vm.nodes, _pfs_of(vm))}


def violations(
    fleet: Fleet,
    topologies: Mapping[str, HostTopology],
    placement: Placement,
    existing: Placement | None = None,
    *,
    allow_move: bool = False,
    planner: bool = True,
) -> list[str]:
    """Every hard rule H1-H8 the placement breaks, one line each (empty: it holds them all).
    `planner`: also run the host planner on each host's generated spec (H8)."""
    hosts = hosts_of(fleet, topologies)
    vms = {vm.name: vm for vm in vms_of(fleet)}
    out: list[str] = []
    names = [vm.name for vm in placement.vms]
    if sorted(names) != sorted(vms) or len(set(names)) != len(names):
        out.append(f"placed {sorted(names)}, the fleet asks for {sorted(vms)}")
    placed = [vm for vm in placement.vms if vm.name in vms]
    loads: dict[tuple[str, int], Share] = {}
    vfs: Counter[tuple[str, str]] = Counter()
    whole: dict[tuple[str, str], str] = {}
    groups: dict[tuple[str, int], str] = {}
    per_host = Counter((vm.cluster, vm.role, vm.host) for vm in placed)
    for vm in placed:
        want = vms[vm.name]
        host = hosts.get(vm.host)
        if host is None:
            out.append(f"{vm.name}: on {vm.host}, not in the inventory")
            continue
        if (vm.cluster, vm.role, vm.index) != (want.cluster, want.role, want.index):
            out.append(f"{vm.name}: recorded as {vm.cluster} {vm.role.value} {vm.index}")
        if host.role is not want.role:
            out.append(f"H1 {vm.name}: a {want.role.value} VM on {host.role.value} host {host.name}")
        nodes = vm.nodes
        ids = {n.node for n in host.nodes}
        if len(nodes) != len(want.shares) or len(set(nodes)) != len(nodes) or not set(nodes) <= ids:
            out.append(f"H5 {vm.name}: on nodes {list(nodes)} of {host.name}, needs {len(want.shares)} distinct nodes")
            continue
        for node, (singles, pairs, mib) in zip(nodes, want.shares, strict=True):
            s, p, m = loads.get((host.name, node), (0, 0, 0))
            loads[(host.name, node)] = (s + singles, p + pairs, m + mib)
        out.extend(_nic_violations(vm, want, host, vfs, whole, groups))
    for (host_name, node), (s, p, m) in sorted(loads.items()):
        if not hosts[host_name].room(node).fits(s, p, m):
            room = hosts[host_name].room(node)
            out.append(
                f"H4 {host_name} node {node}: {s} singles, {p} pairs, {m} MiB asked; "
                f"{room.twos} two-thread and {room.ones} one-thread cores, {room.memory_mib} MiB free"
            )
    for (host_name, address), count in sorted(vfs.items()):
        pf = hosts[host_name].pf(address)
        assert pf is not None
        if (host_name, address) in whole:
            out.append(
                f"H6 {host_name} {pf.name}: passed through whole to {whole[(host_name, address)]} and serves VFs"
            )
        if count > pf.totalvfs:
            out.append(f"H6 {host_name} {pf.name}: {count} VFs, sriov_totalvfs {pf.totalvfs}")
    for (cluster, role, host_name), count in sorted(per_host.items()):
        limit = fleet.cluster(cluster).spread.max_per_host
        if count > limit:
            out.append(f"H2 {host_name}: {count} {cluster} {role.value} VMs, max_per_host {limit}")
    out.extend(_apart_violations(fleet, hosts, placed))
    out.extend(_kept_violations(placement, existing, allow_move))
    if planner:
        out.extend(planner_violations(fleet, topologies, placement))
    return out


def _nic_violations(
    vm: PlacedVm,
    want: Vm,
    host: Host,
    vfs: Counter[tuple[str, str]],
    whole: dict[tuple[str, str], str],
    groups: dict[tuple[str, int], str],
) -> list[str]:
    out = []
    request = want.nic
    if request is None:
        return [f"H6 {vm.name}: NICs {vm.nics} given, none asked"] if vm.nics else []
    if request.kind is NicKind.SRIOV and (len(vm.nics) != 1 or vm.nics[0].count != request.count):
        out.append(f"H6 {vm.name}: {request.count} VFs of one PF asked, got {vm.nics}")
    if request.kind is NicKind.PASSTHROUGH and (
        len(vm.nics) != request.count or len({n.address for n in vm.nics}) != request.count
    ):
        out.append(f"H6 {vm.name}: {request.count} whole PFs asked, got {vm.nics}")
    mine = {n.address for n in vm.nics}
    for nic in vm.nics:
        pf = host.pf(nic.address)
        if pf is None:
            out.append(f"H6 {vm.name}: {nic.pf} ({nic.address}) is no NIC a tenant may use on {host.name}")
            continue
        if nic.kind is not request.kind or not pf.matches(request.pf) or nic.vlan != want.vlan:
            out.append(f"H6 {vm.name}: {nic} does not answer {request} on VLAN {want.vlan}")
        if nic.pf != pf.name or nic.numa_node != pf.node:
            out.append(f"H6 {vm.name}: {nic} names {pf.name} on node {pf.node} wrongly")
        if nic.kind is NicKind.SRIOV:
            vfs[(host.name, pf.address)] += nic.count
            continue
        if not pf.whole or not pf.needs <= mine:
            out.append(f"H6 {vm.name}: {pf.name} on {host.name} may not be passed through whole (with {sorted(mine)})")
        if (host.name, pf.address) in whole:
            out.append(f"H6 {host.name} {pf.name}: passed through to {whole[(host.name, pf.address)]} and {vm.name}")
        whole[(host.name, pf.address)] = vm.name
        if pf.group is not None:
            owner = groups.setdefault((host.name, pf.group), vm.name)
            if owner != vm.name:
                out.append(f"H6 {host.name}: IOMMU group {pf.group} passed through to {owner} and {vm.name}")
    return out


def _apart_violations(fleet: Fleet, hosts: Mapping[str, Host], placed: Sequence[PlacedVm]) -> list[str]:
    out = []
    for cluster in fleet.clusters:
        if not control_planes_apart(fleet, cluster.name):
            continue
        cps = [vm for vm in placed if vm.cluster == cluster.name and vm.role is Role.CONTROL and vm.host in hosts]
        stacked = Counter(vm.host for vm in cps)
        for host_name, n in sorted(stacked.items()):
            if n > 1:
                out.append(f"H3 {cluster.name}: {n} control planes stacked on {host_name}")
        if racks_apart(fleet, cluster.name):
            racked = Counter(hosts[vm.host].rack for vm in cps)
            for rack, n in sorted(racked.items()):
                if n > 1:
                    out.append(f"H3 {cluster.name}: {n} control planes in rack {rack}")
    return out


def _kept_violations(placement: Placement, existing: Placement | None, allow_move: bool) -> list[str]:
    if existing is None or allow_move:
        return []
    now = {vm.name: vm for vm in placement.vms}
    out = []
    for old in existing.vms:
        new = now.get(old.name)
        if new is None:
            continue
        same_nics = sorted((n.kind, n.address, n.count) for n in new.nics) == sorted(
            (n.kind, n.address, n.count) for n in old.nics
        )
        if moved(old, new.host, new.nodes, _pfs_of(new)) or not same_nics:
            out.append(f"H7 {old.name}: was on {old.host} nodes {old.nodes_text}, now {new.host} {new.nodes_text}")
    return out


def planner_violations(fleet: Fleet, topologies: Mapping[str, HostTopology], placement: Placement) -> list[str]:
    """H8: the host planner accepts each host's generated spec."""
    out = []
    for host in sorted({vm.host for vm in placement.vms}):
        data = host_spec_data(fleet, placement, host)
        if data is None or host not in topologies:
            continue
        try:
            check_host(host, data, topologies[host], f"{host}/spec.yaml")
        except (PlanError, SpecError) as exc:
            out.append(f"H8 {exc}")
    return out


def named_vms(message: str, fleet: Fleet) -> set[str]:
    """The fleet's VM names a refusal mentions: whole names (red-worker-1 is not red-worker-10),
    and ranges written "red-worker-1 .. red-worker-4"."""
    names = {req.name for req in fleet.vm_requests()}
    edge = "(?<![A-Za-z0-9-])"
    out = {name for name in names if re.search(rf"{edge}{re.escape(name)}(?![A-Za-z0-9-])", message)}
    for match in re.finditer(rf"{edge}([a-z0-9-]+)-([0-9]+)\s*(?:\.\.|…)\s*\1-([0-9]+)(?![A-Za-z0-9-])", message):
        prefix, first, last = match.group(1), int(match.group(2)), int(match.group(3))
        out |= {f"{prefix}-{i}" for i in range(first, last + 1)} & names
    return out
