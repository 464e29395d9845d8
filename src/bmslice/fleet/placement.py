"""Which host, NUMA node and NICs each cluster VM gets: a pure function of fleet and topologies.

Capacity is counted the way the per-host planner counts it (`bmslice.plan.capacity`):
whole cores per NUMA node after the cores the host keeps, memory per node after the
host's share, whole PFs for passthrough and VFs per PF within `sriov_totalvfs`. So a
host the fleet fills is a host `bmslice plan` accepts.

Rules, in order of precedence for each VM:

1. a VM of an existing placement stays on its host and node (refused, never moved, when
   it no longer fits there);
2. control-plane VMs go to control hosts, workers to worker hosts;
3. at most `spread.max_per_host` VMs of one cluster and role per host;
4. with `spread.racks: spread`, the rack holding the fewest VMs of the cluster and role;
5. the fewest cross-NUMA NICs (a NIC on another node than the VM's CPUs);
6. then rack name, host name and node number, so the result is deterministic.

A VM over several NUMA nodes (`numa_nodes: k`) takes an equal share on k distinct nodes of
one host (its emulator core with the first share); its NICs count as cross-NUMA when their
node is none of the k. The per-host spec says only `numa_nodes: k` (a spec cannot pin such a
VM to nodes), so once the new VMs are placed, each host that got one is planned with the
host planner, and the placement records the nodes that planner chose: the nodes an apply of
that spec will use.

New VMs are placed control plane first, then biggest first, then in fleet order. First
come, first served is not an exact bin packing; when a VM finds no host the error says
which resource every candidate host lacks:

    blue-worker-3: no worker host left with 5 free cores and 8GiB free on one NUMA node
    and a free VF on VLAN 200 (server1: runs 1 blue worker already (max_per_host 1); ...)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations

from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.fleet import (
    ANY,
    Fleet,
    InventoryHost,
    NicAssignment,
    NicKind,
    NicRequest,
    NodeUsage,
    PlacedVm,
    Placement,
    RackSpread,
    Role,
    VmRequest,
    VmSize,
)
from bmslice.model.sizes import format_mib
from bmslice.model.spec import EmulatorPolicy
from bmslice.model.topology import Core, HostTopology, PciDevice
from bmslice.plan.allocate import Allocation, NodeRequest, allocate_node
from bmslice.plan.capacity import Load, NodeFree, vm_load
from bmslice.plan.host import reserved_cores
from bmslice.plan.planner import part_name

MESSAGE_HOSTS = 4  # per-host reasons quoted in a refusal before "and N more"


@dataclass(frozen=True)
class _Pf:
    address: str
    name: str
    interfaces: tuple[str, ...]
    numa_node: int | None
    totalvfs: int
    has_vfs: bool  # VFs already enabled: cannot be passed through whole

    def matches(self, ref: str) -> bool:
        return ref in (ANY, self.address) or ref in self.interfaces


@dataclass
class _Node:
    free: NodeFree
    cores: tuple[Core, ...]
    load: Load = field(default_factory=Load)

    def fits(self, load: Load) -> bool:
        return self.free.fits(self.load + load)

    @property
    def cores_left(self) -> int:
        split = self.free.split(self.load)
        assert split is not None
        ones_to_singles, twos_to_singles = split
        # pairs sit on twos first, as in `NodeFree.split`
        twos_left = self.free.twos - twos_to_singles
        pairs_on_twos = min(self.load.pairs, twos_left)
        ones_left = self.free.ones - ones_to_singles - 2 * (self.load.pairs - pairs_on_twos)
        return twos_left - pairs_on_twos + ones_left


@dataclass(frozen=True)
class _Option:
    cost: int
    nodes: tuple[int, ...]  # one per share: a VM over several nodes has several
    nics: tuple[NicAssignment, ...]


class _Host:
    def __init__(self, inv: InventoryHost, topo: HostTopology) -> None:
        self.inv = inv
        self.name = inv.name
        self.topo = topo
        try:
            kept = reserved_cores(topo, inv.host)
        except PlanError as exc:
            raise PlanError(f"{inv.name}: {exc}") from None
        kept_cpus = CpuSet.union(core.cpus for core in kept)
        self.nodes: dict[int, _Node] = {}
        for node in sorted(topo.numa_nodes, key=lambda n: n.id):
            if not node.cpus:
                continue
            cores = tuple(c for c in topo.cores if c.node == node.id and c.cpus.isdisjoint(kept_cpus))
            memory = node.memory_mib - inv.host.reserved_memory_per_node
            twos = sum(c.threads == 2 for c in cores)
            self.nodes[node.id] = _Node(NodeFree(node.id, twos, len(cores) - twos, memory), cores)
        self.pfs, self.excluded = _eligible_pfs(inv, topo)
        self.passed: set[str] = set()
        self.vfs_used: Counter[str] = Counter()
        self.count: Counter[tuple[str, Role]] = Counter()

    def most_free(self) -> tuple[int, int]:
        """The most free cores and, separately, the most free MiB on any one node (upper bounds)."""
        cores = max((node.cores_left for node in self.nodes.values()), default=0)
        memory = max((node.free.memory_mib - node.load.memory_mib for node in self.nodes.values()), default=0)
        return cores, memory

    def pick_nics(self, request: NicRequest, nodes: tuple[int, ...], vlan: int) -> tuple[NicAssignment, ...] | None:
        """The NICs a VM on `nodes` would get, local ones first, then by name; None when short."""
        candidates = sorted(
            (pf for pf in self.pfs if pf.matches(request.pf) and pf.address not in self.passed),
            key=lambda pf: (pf.numa_node not in nodes, pf.name),
        )
        if request.kind is NicKind.PASSTHROUGH:
            whole = [pf for pf in candidates if not pf.has_vfs and self.vfs_used[pf.address] == 0]
            if len(whole) < request.count:
                return None
            return tuple(
                NicAssignment(NicKind.PASSTHROUGH, pf.name, pf.address, pf.numa_node, vlan, 1)
                for pf in whole[: request.count]
            )
        for pf in candidates:
            if pf.totalvfs - self.vfs_used[pf.address] >= request.count:
                return (NicAssignment(NicKind.SRIOV, pf.name, pf.address, pf.numa_node, vlan, request.count),)
        return None

    def spans(self, shares: Sequence[Load]) -> Iterator[tuple[int, ...]]:
        """Every way to give each share its own node with room for it, in node order (the first
        share, which carries the emulator core, first)."""
        for first, node in self.nodes.items():
            if not node.fits(shares[0]):
                continue
            if len(shares) == 1:
                yield (first,)
                continue
            others = [n for n in self.nodes if n != first and self.nodes[n].fits(shares[-1])]
            for rest in combinations(others, len(shares) - 1):
                yield (first, *rest)

    def option(self, req: VmRequest, shares: Sequence[Load], vlan: int) -> _Option | None:
        best: _Option | None = None
        for nodes in self.spans(shares):
            nics: tuple[NicAssignment, ...] = ()
            if req.size.nic is not None:
                picked = self.pick_nics(req.size.nic, nodes, vlan)
                if picked is None:
                    continue
                nics = picked
            cost = sum(1 for n in nics if n.numa_node not in nodes)
            if best is None or cost < best.cost:
                best = _Option(cost, nodes, nics)
                if cost == 0:
                    break
        return best

    def take(
        self, req: VmRequest, shares: Sequence[Load], nodes: tuple[int, ...], nics: Iterable[NicAssignment]
    ) -> None:
        for node, load in zip(nodes, shares, strict=True):
            self.nodes[node].load = self.nodes[node].load + load
        for nic in nics:
            if nic.kind is NicKind.PASSTHROUGH:
                self.passed.add(nic.address)
            else:
                self.vfs_used[nic.address] += nic.count
        self.count[(req.cluster, req.role)] += 1


def _eligible_pfs(inv: InventoryHost, topo: HostTopology) -> tuple[tuple[_Pf, ...], dict[str, str]]:
    """NICs a tenant may get: cabled (when the inventory says where NICs are cabled), not the
    management NIC, not a bond or bridge member, not a VF. `excluded` says why the others are not."""
    pfs: list[_Pf] = []
    excluded: dict[str, str] = {}
    for dev in topo.pci_devices:
        if not dev.is_network or dev.physfn is not None:
            continue
        name = dev.interfaces[0] if dev.interfaces else dev.address
        reason = _exclusion(inv, topo, dev)
        if reason:
            for key in (dev.address, *dev.interfaces):
                excluded[key] = f"{name} {reason}"
            continue
        pfs.append(_Pf(dev.address, name, dev.interfaces, dev.numa_node, dev.sriov_totalvfs, dev.sriov_numvfs > 0))
    return tuple(sorted(pfs, key=lambda pf: pf.name)), excluded


def _exclusion(inv: InventoryHost, topo: HostTopology, dev: PciDevice) -> str | None:
    if topo.default_route_interface in dev.interfaces:
        return "carries the host's default route"
    for name in dev.interfaces:
        iface = topo.interface(name)
        if iface is not None and iface.master is not None:
            return f"is a member of {iface.master}"
    if inv.nics and not any(name in inv.nics for name in dev.interfaces):
        return "is not cabled to a switch port in the inventory"
    return None


def _shares(size: VmSize) -> list[Load]:
    """The load on each node a VM uses: one for a VM on one node; for a VM over k nodes k equal
    shares, the first with the emulator core (as the host planner splits it)."""
    k = size.numa_nodes
    dedicated = size.emulator is EmulatorPolicy.DEDICATED
    return [vm_load(size.vcpus // k, dedicated and part == 0, size.memory // k) for part in range(k)]


def _total(shares: Sequence[Load]) -> Load:
    total = Load()
    for load in shares:
        total = total + load
    return total


def spec_order(fleet: Fleet) -> dict[str, int]:
    """The order VMs are listed in a host's spec (fleet order): the planner allocates cores in it."""
    return {req.name: i for i, req in enumerate(fleet.vm_requests())}


class _Placer:
    def __init__(self, fleet: Fleet, topologies: Mapping[str, HostTopology]) -> None:
        self.fleet = fleet
        self.hosts: dict[str, _Host] = {}
        for inv in sorted(fleet.inventory, key=lambda h: h.name):
            if inv.name not in topologies:
                raise PlanError(f"{inv.name}: no topology was read for this host")
            self.hosts[inv.name] = _Host(inv, topologies[inv.name])
        self.by_role_rack: dict[Role, dict[str, list[_Host]]] = {role: defaultdict(list) for role in Role}
        for host in self.hosts.values():
            self.by_role_rack[host.inv.role][host.inv.rack].append(host)
        self.rack_count: Counter[tuple[str, Role, str]] = Counter()
        self.placed: dict[str, PlacedVm] = {}
        self.notes: list[str] = []

    # --- the VMs of an existing placement ------------------------------------------------

    def keep(self, existing: Placement, requests: Mapping[str, VmRequest]) -> None:
        for old in sorted(existing.vms, key=lambda vm: vm.name):
            req = requests.get(old.name)
            if req is None:
                self.notes.append(
                    f"{old.name} on {old.host} is no longer in the fleet: it is left out of the host's spec and "
                    "keeps running until destroyed"
                )
                continue
            host = self.hosts.get(old.host)
            several = f"s {old.nodes_text}" if old.numa_nodes else f" {old.numa_node}"
            where = f"{old.name} is placed on {old.host} NUMA node{several}"
            hint = "remove it from the placement file to let bmslice place it afresh (the VM is then rebuilt)"
            if host is None:
                raise PlanError(f"{where}, which is no longer in the inventory; {hint}")
            if host.inv.role is not req.role:
                raise PlanError(f"{where}, but {old.host} is now a {host.inv.role.value} host; {hint}")
            shares = _shares(req.size)
            if len(shares) != len(old.nodes):
                raise PlanError(f"{where}, but its size now asks for numa_nodes: {len(shares)}; {hint}")
            for node_id, load in zip(old.nodes, shares, strict=True):
                node = host.nodes.get(node_id)
                if node is None:
                    raise PlanError(f"{where}, which has no such node with CPUs; {hint}")
                if not node.fits(load):
                    share = f" (its share on node {node_id})" if old.numa_nodes else ""
                    raise PlanError(
                        f"{where} and no longer fits there: it needs {node.free.cores_needed(load)} whole cores and "
                        f"{format_mib(load.memory_mib)}{share}, the node has {node.cores_left} cores and "
                        f"{_mib(node.free.memory_mib - node.load.memory_mib)} left; {hint}"
                    )
            vlan = self.fleet.cluster(req.cluster).vlan
            nics = self._kept_nics(host, req, old, vlan)
            if nics is None:
                raise PlanError(
                    f"{where} and its NICs ({_nic_phrase(req, vlan).strip()}) are no longer free there; {hint}"
                )
            self._take(host, req, shares, old.nodes, nics)

    def _kept_nics(self, host: _Host, req: VmRequest, old: PlacedVm, vlan: int) -> tuple[NicAssignment, ...] | None:
        want = req.size.nic
        if want is None:
            return ()
        pfs = {pf.address: pf for pf in host.pfs}
        same = (
            all(n.kind is want.kind and n.address in pfs and pfs[n.address].matches(want.pf) for n in old.nics)
            and sum(n.count for n in old.nics) == want.count
            and (want.kind is NicKind.PASSTHROUGH or len(old.nics) == 1)
        )
        if same:
            taken = all(
                n.address not in host.passed and (n.kind is NicKind.SRIOV or host.vfs_used[n.address] == 0)
                for n in old.nics
            )
            fits = all(
                n.kind is NicKind.PASSTHROUGH or pfs[n.address].totalvfs - host.vfs_used[n.address] >= n.count
                for n in old.nics
            )
            if taken and fits:
                return tuple(
                    NicAssignment(n.kind, pfs[n.address].name, n.address, pfs[n.address].numa_node, vlan, n.count)
                    for n in old.nics
                )
        # The NIC request changed (kind, count or PF): pick again on the same host and node.
        return host.pick_nics(want, old.nodes, vlan)

    # --- new VMs ---------------------------------------------------------------------------

    def place_new(self, req: VmRequest) -> None:
        cluster = self.fleet.cluster(req.cluster)
        shares = _shares(req.size)
        load = shares[0]  # the largest share (all of a VM on one node)
        candidates = [h for rack in self.by_role_rack[req.role].values() for h in rack]
        if not candidates:
            raise PlanError(f"{req.name}: the inventory has no {req.role.value} host")
        most_nodes = (
            max(sorted(candidates, key=lambda h: h.name), key=lambda h: len(h.nodes))
            if len(shares) > 1
            else candidates[0]
        )
        if len(shares) > len(most_nodes.nodes):
            raise PlanError(
                f"{req.name}: numa_nodes: {len(shares)} needs a {req.role.value} host with {len(shares)} NUMA nodes "
                f"with CPUs; the most any has is {len(most_nodes.nodes)} ({most_nodes.name})"
            )
        for tier in self._tiers(req):
            best: tuple[_Host, _Option] | None = None
            for host in tier:
                if host.count[(req.cluster, req.role)] >= cluster.spread.max_per_host:
                    continue
                cores, memory = host.most_free()
                if cores < load.singles + load.pairs or memory < load.memory_mib or len(shares) > len(host.nodes):
                    continue  # cannot fit on any node: skip the exact check
                option = host.option(req, shares, cluster.vlan)
                if option is not None and (best is None or option.cost < best[1].cost):
                    best = (host, option)
                    if option.cost == 0:
                        break
            if best is not None:
                host, option = best
                self._take(host, req, shares, option.nodes, option.nics)
                return
        raise PlanError(self._refusal(req, shares, candidates))

    def _tiers(self, req: VmRequest) -> list[list[_Host]]:
        """Hosts grouped by how many VMs of the cluster and role their rack holds (fewest first)."""
        racks = self.by_role_rack[req.role]
        spread = self.fleet.cluster(req.cluster).spread.racks is RackSpread.SPREAD
        tiers: dict[int, list[_Host]] = defaultdict(list)
        for rack in sorted(racks):
            count = self.rack_count[(req.cluster, req.role, rack)] if spread else 0
            tiers[count].extend(racks[rack])
        return [tiers[count] for count in sorted(tiers)]

    def _take(
        self,
        host: _Host,
        req: VmRequest,
        shares: Sequence[Load],
        nodes: tuple[int, ...],
        nics: tuple[NicAssignment, ...],
    ) -> None:
        host.take(req, shares, nodes, nics)
        self.rack_count[(req.cluster, req.role, host.inv.rack)] += 1
        spans = nodes if len(nodes) > 1 else ()
        self.placed[req.name] = PlacedVm(
            req.name, req.cluster, req.role, req.index, host.name, nodes[0], nics, numa_nodes=spans
        )

    def settle(self, names: Iterable[str]) -> None:
        """Record, for the VMs over several nodes placed in this run, the nodes the host planner
        gives them on the spec of their host (the spec cannot name them; the fleet's own choice
        was where it found room)."""
        from bmslice.fleet.check import check_host  # the fleet's render and check sit above placement
        from bmslice.fleet.render import host_spec_data

        names = set(names)
        for host_name in sorted({self.placed[n].host for n in names}):
            host = self.hosts[host_name]
            data = host_spec_data(self.fleet, Placement(tuple(self.placed.values())), host_name)
            assert data is not None
            plan = check_host(host_name, data, host.topo, f"{host_name}/spec.yaml").plan
            new = sorted(vm.name for vm in plan.vms if vm.name in names)
            moved = [
                (vm, self.placed[vm.name])
                for vm in plan.vms
                if vm.name not in names
                and self.placed[vm.name].numa_nodes
                and vm.numa_nodes != self.placed[vm.name].nodes
            ]
            if moved:
                # A kept VM over several nodes that this fresh plan puts elsewhere: if it runs, the host
                # keeps it where it is, so the fresh plan says nothing sure about the new ones either.
                # They keep the nodes the fleet found room on around the kept VM's record.
                vm, placed = moved[0]
                self.notes.append(
                    f"{host_name}: planned afresh, the host puts {vm.name} on NUMA nodes "
                    f"{','.join(map(str, vm.numa_nodes))}, the placement keeps it on {placed.nodes_text}; "
                    f"{', '.join(new)} keep the nodes the fleet found room on, which the host planner may not "
                    "choose: check with `bmslice plan` on the host"
                )
                continue
            for planned in plan.vms:
                if planned.name in names:
                    nodes = planned.numa_nodes
                    self.placed[planned.name] = replace(self.placed[planned.name], numa_node=nodes[0], numa_nodes=nodes)
            for node in host.nodes.values():
                node.load = Load()
            for placed in self.placed.values():
                if placed.host == host_name:
                    for node_id, load in zip(placed.nodes, _shares(self._size(placed)), strict=True):
                        host.nodes[node_id].load = host.nodes[node_id].load + load

    def _size(self, vm: PlacedVm) -> VmSize:
        return self.fleet.cluster(vm.cluster).size(vm.role, vm.index)

    def _refusal(self, req: VmRequest, shares: Sequence[Load], candidates: Sequence[_Host]) -> str:
        cluster = self.fleet.cluster(req.cluster)
        role = req.role.value
        limit = cluster.spread.max_per_host
        full = [h for h in candidates if h.count[(req.cluster, req.role)] >= limit]
        if len(full) == len(candidates):
            return (
                f"{req.name}: every {role} host already runs {limit} {req.cluster} {role} VM(s) "
                f"(spread.max_per_host {limit}); add {role} hosts or raise max_per_host"
            )
        reasons = []
        for host in sorted(candidates, key=lambda h: h.name):
            if host in full:
                reasons.append(f"{host.name}: runs {limit} {req.cluster} {role} VM(s) already (max_per_host {limit})")
                continue
            reasons.append(f"{host.name}: {self._host_shortfall(host, req, shares, cluster.vlan)}")
        shown = reasons[:MESSAGE_HOSTS]
        if len(reasons) > MESSAGE_HOSTS:
            shown.append(f"and {len(reasons) - MESSAGE_HOSTS} more")
        smt = any(h.topo.smt for h in candidates)

        def cores(load: Load) -> int:
            return load.singles + load.pairs if smt else load.singles + 2 * load.pairs

        memory = format_mib(shares[0].memory_mib)
        if len(shares) == 1:
            room = f"{cores(shares[0])} free cores and {memory} free on one NUMA node"
        else:
            room = f"{cores(shares[-1])} free cores and {memory} free on each of {len(shares)} NUMA nodes"
            if cores(shares[0]) != cores(shares[-1]):
                room += f" ({cores(shares[0])} on one of them, for the emulator core)"
        return f"{req.name}: no {role} host left with {room}{_nic_phrase(req, cluster.vlan)} ({'; '.join(shown)})"

    def _host_shortfall(self, host: _Host, req: VmRequest, shares: Sequence[Load], vlan: int) -> str:
        if len(shares) > len(host.nodes):
            return f"{len(host.nodes)} NUMA node(s) with CPUs, needs {len(shares)}"
        if next(host.spans(shares), None) is None:
            if len(shares) == 1:
                cores, memory = host.most_free()
                return f"most free on one node: {cores} cores, {_mib(memory)}"
            room = ",".join(str(n) for n in host.nodes if host.nodes[n].fits(shares[-1]))
            if room.count(",") + 1 < len(shares) or not room:
                return f"room for a share on node(s) {room or 'none'}, needs {len(shares)} nodes"
            # (a node with room for the first share would have made a span with the others)
            return f"room for a share on nodes {room}, but for the first, with the emulator core, on none"
        nic = req.size.nic
        assert nic is not None  # a node fits and no NIC is asked for: the VM would have been placed
        named = [pf for pf in host.pfs if pf.matches(nic.pf)]
        if not named:
            if nic.pf != ANY and nic.pf in host.excluded:
                return host.excluded[nic.pf]
            return f"no NIC {nic.pf} it may use" if nic.pf != ANY else "no cabled NIC a tenant may use"
        if nic.kind is NicKind.PASSTHROUGH:
            free = [pf.name for pf in named if pf.address not in host.passed and not host.vfs_used[pf.address]]
            return f"{len(free)} whole NIC(s) free ({', '.join(free) or 'none'}), needs {nic.count}"
        vfs = ", ".join(
            f"{pf.name} {max(pf.totalvfs - host.vfs_used[pf.address], 0) if pf.address not in host.passed else 0}"
            for pf in named
        )
        return f"free VFs per NIC: {vfs}; needs {nic.count} on one NIC"

    # --- the result ------------------------------------------------------------------------

    def result(self) -> Placement:
        order = spec_order(self.fleet)
        vms: list[PlacedVm] = []
        usage: list[NodeUsage] = []
        for host in self.hosts.values():
            on_host = sorted((vm for vm in self.placed.values() if vm.host == host.name), key=lambda v: order[v.name])
            # each VM's allocation per share, as the planner allocates: per node, in spec order
            allocs: dict[str, dict[int, Allocation]] = {vm.name: {} for vm in on_host}
            for node_id, node in host.nodes.items():
                here = [(vm, vm.nodes.index(node_id)) for vm in on_host if node_id in vm.nodes]
                requests = [
                    NodeRequest(
                        part_name(vm.name, part) if vm.numa_nodes else vm.name,
                        self._size(vm).vcpus // len(vm.nodes),
                        self._size(vm).emulator is EmulatorPolicy.DEDICATED and part == 0,
                    )
                    for vm, part in here
                ]
                allocation = allocate_node(node.cores, requests) if requests else {}
                for (vm, part), request in zip(here, requests, strict=True):
                    allocs[vm.name][part] = allocation[request.name]
                used = sum(len(allocation[r.name].cores) for r in requests)
                usage.append(
                    NodeUsage(host.name, node_id, node.free.cores, used, node.free.memory_mib, node.load.memory_mib)
                )
            for vm in on_host:
                share = self._size(vm).vcpus // len(vm.nodes)
                parts = [allocs[vm.name][part] for part in range(len(vm.nodes))]
                # the planner's rule for the guest topology (threads=2 only on real sibling pairs)
                pairs = all(a.sibling_pairs for a in parts) and share % 2 == 0 and host.topo.smt
                cores = tuple(
                    tuple(v + i * share for v in core) for i, a in enumerate(parts) for core in _guest_cores(a)
                )
                vms.append(replace(vm, guest_threads=2 if pairs else 1, guest_cores=cores))
        vms.sort(key=lambda v: (v.host, order[v.name]))
        return Placement(tuple(vms), tuple(usage), tuple(self.notes))


def _guest_cores(alloc: Allocation) -> tuple[tuple[int, ...], ...]:
    """Guest vCPUs grouped by the host core under them, in vCPU order: ((0, 1), (2,))."""
    groups: dict[int, list[int]] = {}
    for vcpu, cpu in enumerate(alloc.vcpu_pins):
        core = next(i for i, cpus in enumerate(alloc.vcpu_cores) if cpu in cpus)
        groups.setdefault(core, []).append(vcpu)
    return tuple(tuple(vcpus) for vcpus in groups.values())


def _mib(mib: int) -> str:
    return format_mib(mib) if mib > 0 else "0MiB"


def _nic_phrase(req: VmRequest, vlan: int) -> str:
    nic = req.size.nic
    if nic is None:
        return ""
    of = "" if nic.pf == ANY else f" of {nic.pf}"
    if nic.kind is NicKind.SRIOV:
        what = "a free VF" if nic.count == 1 else f"{nic.count} free VFs"
        return f" and {what}{of} on VLAN {vlan}"
    what = "a free NIC" if nic.count == 1 else f"{nic.count} free NICs"
    return f" and {what}{'' if nic.pf == ANY else f' ({nic.pf})'} to pass through for VLAN {vlan}"


def _new_order(fleet: Fleet, requests: Sequence[VmRequest]) -> list[VmRequest]:
    order = spec_order(fleet)

    def key(req: VmRequest) -> tuple[int, int, int, int]:
        load = _total(_shares(req.size))
        return (req.role is not Role.CONTROL, -(2 * load.pairs + load.singles), -load.memory_mib, order[req.name])

    return sorted(requests, key=key)


def place(fleet: Fleet, topologies: Mapping[str, HostTopology], existing: Placement | None = None) -> Placement:
    """Place every VM of `fleet`; VMs of `existing` stay where they are. Raises PlanError naming
    the VM that found no host and what each candidate host lacks."""
    requests = {req.name: req for req in fleet.vm_requests()}
    placer = _Placer(fleet, topologies)
    if existing is not None:
        placer.keep(existing, requests)
    new = _new_order(fleet, [r for r in requests.values() if r.name not in placer.placed])
    for req in new:
        placer.place_new(req)
    placer.settle(req.name for req in new if req.size.numa_nodes > 1)
    return placer.result()
