"""An independent brute-force oracle for the planner's layout rules (small hosts only).

It shares no code with bmslice.plan: physical cores are rebuilt from the raw Cpu list
(package, die, core id), the host's reserved cores are recomputed, and every way of
handing each free core to "unused", "VM k vCPU core" or "VM k emulator core" is tried.

Rules of a valid layout (the planner's contract, docs/design + faults.md):
- a VM sits on one NUMA node and owns whole cores (every online thread of each core);
- the host keeps the lowest `reserved_cores_per_node` cores of each node plus CPU 0's core;
- emulator=dedicated: exactly one extra whole core of the VM's node; emulator=host: none;
- vCPUs pin 1:1 to distinct CPUs of the VM's vCPU cores, every vCPU core carries at
  least one vCPU, and a thread may stay idle only when the VM has an odd vCPU count
  (at most one idle thread in all);
- per node, the VMs' memory fits node memory - host.reserved_memory_per_node;
- a VM's numa_node, if given, is where it goes; with nic_numa_policy require, every NIC
  with a known NUMA node must be on the VM's node.

A VM with numa_nodes = k > 1 is k shares, each held to the rules above as if it were a VM
of vcpus/k vCPUs and memory/k MiB: the shares sit on k distinct nodes, share 0 (guest cell
0) carries the dedicated emulator core (emulator=host: the host CPUs of share 0's node), and
a NIC counts as cross-NUMA only when its node is none of the k; under require each NIC with
a known node must be on one of them.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from bmslice.model.plan import Plan, VmPlan
from bmslice.model.spec import Spec
from bmslice.model.topology import HostTopology


@dataclass(frozen=True)
class OCore:
    cpus: frozenset[int]
    node: int

    @property
    def threads(self) -> int:
        return len(self.cpus)

    @property
    def first(self) -> int:
        return min(self.cpus)


@dataclass(frozen=True)
class OVm:
    name: str
    vcpus: int
    dedicated: bool
    memory_mib: int
    numa_node: int | None
    nic_nodes: tuple[int | None, ...]
    cells: int = 1  # numa_nodes: the VM's shares, each on its own node

    def share(self, part: int) -> OVm:
        """Share `part` of a VM over several nodes, as a one-node VM (the emulator core with share 0)."""
        return OVm(
            f"{self.name}/{part}",
            self.vcpus // self.cells,
            self.dedicated and part == 0,
            self.memory_mib // self.cells,
            None,
            (),
        )


@dataclass(frozen=True)
class OLayout:
    """One valid layout: VM name (a share of a VM over several nodes: "name/part") -> (node,
    vCPU cores, emulator core or None)."""

    vms: dict[str, tuple[int, tuple[OCore, ...], OCore | None]]
    cross_numa: int


def physical_cores(topo: HostTopology) -> list[OCore]:
    """Online CPUs grouped by (package, die, core id); node of a core = node of its lowest CPU."""
    groups: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
    for cpu in topo.cpus:
        if cpu.online:
            groups[(cpu.package, cpu.die, cpu.core)].append((cpu.id, cpu.node if cpu.node is not None else 0))
    cores = []
    for members in groups.values():
        members.sort()
        cores.append(OCore(frozenset(cpu for cpu, _ in members), members[0][1]))
    return sorted(cores, key=lambda c: c.first)


def host_cores(topo: HostTopology, per_node: int) -> list[OCore]:
    cores = physical_cores(topo)
    kept: list[OCore] = []
    for node in {c.node for c in cores}:
        kept.extend([c for c in cores if c.node == node][:per_node])
    kept.extend(c for c in cores if 0 in c.cpus and c not in kept)
    return sorted(kept, key=lambda c: c.first)


def reserved_cpus(topo: HostTopology, per_node: int) -> frozenset[int]:
    return frozenset(cpu for core in host_cores(topo, per_node) for cpu in core.cpus)


def vms_of(topo: HostTopology, spec: Spec) -> list[OVm]:
    out = []
    for vm in spec.vms:
        nic_nodes = []
        for nic in vm.nics:
            ref = nic.passthrough
            assert ref is not None, "oracle cases use whole-device passthrough only"
            dev = next(
                (d for d in topo.pci_devices if (d.address == ref if ":" in ref else ref in d.interfaces)),
                None,
            )
            assert dev is not None, f"oracle cases name only existing NICs, not {ref!r}"
            nic_nodes.append(dev.numa_node)
        dedicated = vm.emulator.value == "dedicated"
        out.append(OVm(vm.name, vm.vcpus, dedicated, vm.memory, vm.numa_node, tuple(nic_nodes), vm.numa_nodes))
    return out


def node_choices(vm: OVm, node_ids: Sequence[int], strict: bool) -> list[tuple[int, ...]]:
    """Every way to give `vm` its nodes, share 0's first: one node, or `cells` distinct ones
    (the shares after the first are alike, so their nodes are a set)."""
    out = []
    for first in node_ids:
        for rest in itertools.combinations([n for n in node_ids if n != first], vm.cells - 1):
            nodes = (first, *rest)
            if vm.numa_node is not None and nodes != (vm.numa_node,):
                continue
            if strict and any(n is not None and n not in nodes for n in vm.nic_nodes):
                continue
            out.append(nodes)
    return out


def remote_nics(vm: OVm, nodes: Sequence[int]) -> int:
    """NICs of `vm` on a known node that is none of `nodes`."""
    return sum(1 for n in vm.nic_nodes if n is not None and n not in nodes)


def vcpu_cores_ok(vcpus: int, cores: Sequence[OCore]) -> bool:
    """Can `vcpus` be pinned 1:1 onto `cores`, each core used, idle threads only as allowed?"""
    capacity = sum(c.threads for c in cores)
    idle = capacity - vcpus
    return len(cores) <= vcpus <= capacity and idle <= vcpus % 2


def _node_layout(
    cores: Sequence[OCore], vms: Sequence[OVm]
) -> dict[str, tuple[tuple[OCore, ...], OCore | None]] | None:
    """Brute force: each free core of the node -> unused / VM k vCPU core / VM k emulator core."""
    if not vms:
        return {}
    options: list[tuple[str, int] | None] = [None]
    options += [("v", k) for k in range(len(vms))] + [("e", k) for k in range(len(vms))]
    for choice in itertools.product(options, repeat=len(cores)):
        vcpu_cores: list[list[OCore]] = [[] for _ in vms]
        emu_cores: list[list[OCore]] = [[] for _ in vms]
        for core, owner in zip(cores, choice, strict=True):
            if owner is not None:
                (vcpu_cores if owner[0] == "v" else emu_cores)[owner[1]].append(core)
        if all(
            len(emu_cores[k]) == int(vm.dedicated) and vcpu_cores_ok(vm.vcpus, vcpu_cores[k])
            for k, vm in enumerate(vms)
        ):
            return {
                vm.name: (tuple(vcpu_cores[k]), emu_cores[k][0] if emu_cores[k] else None) for k, vm in enumerate(vms)
            }
    return None


def _what_is_free(
    topo: HostTopology, spec: Spec, running: Sequence[VmPlan]
) -> tuple[list[OCore], list[int], dict[int, int], list[OVm], bool]:
    """(free cores, node ids, memory left per node, VMs to place, nic_numa_policy require) around `running`."""
    reserved = reserved_cpus(topo, spec.host.reserved_cores_per_node)
    taken = reserved | {cpu for vm in running for core in vm.cores for cpu in core}
    free = [c for c in physical_cores(topo) if c.cpus.isdisjoint(taken)]
    node_ids = sorted(n.id for n in topo.numa_nodes)
    node_mem = {n.id: n.memory_mib - spec.host.reserved_memory_per_node for n in topo.numa_nodes}
    for vm in running:
        for cell in vm.cells:  # a VM over several nodes: its memory share on each
            node_mem[cell.node] -= cell.memory_mib
        if not vm.cells:
            node_mem[vm.numa_nodes[0]] -= vm.memory_mib
    kept = {vm.name for vm in running}
    vms = [vm for vm in vms_of(topo, spec) if vm.name not in kept]
    return free, node_ids, node_mem, vms, spec.host.nic_numa_policy.value == "require"


def best_layout(topo: HostTopology, spec: Spec, running: Sequence[VmPlan] = ()) -> OLayout | None:
    """A valid layout with the fewest cross-NUMA NICs, or None when none exists.

    `running` VMs keep their cores and memory; only the spec's other VMs are placed (their
    NICs' cross-NUMA count is what is minimised).
    """
    free, node_ids, node_mem, vms, strict = _what_is_free(topo, spec, running)
    # What lands on a node: (VM index, share) pairs; a VM over several nodes puts one share on each.
    Member = tuple[int, int]
    cache: dict[tuple[int, tuple[Member, ...]], dict[str, tuple[tuple[OCore, ...], OCore | None]] | None] = {}

    def unit(member: Member) -> OVm:
        vm = vms[member[0]]
        return vm if vm.cells == 1 else vm.share(member[1])

    def node_fit(node: int, members: tuple[Member, ...]) -> dict[str, tuple[tuple[OCore, ...], OCore | None]] | None:
        key = (node, members)
        if key not in cache:
            group = [unit(m) for m in members]
            if sum(vm.memory_mib for vm in group) > node_mem[node]:
                cache[key] = None
            else:
                cache[key] = _node_layout([c for c in free if c.node == node], group)
        return cache[key]

    best: OLayout | None = None
    for choice in itertools.product(*(node_choices(vm, node_ids, strict) for vm in vms)):
        layout: dict[str, tuple[int, tuple[OCore, ...], OCore | None]] = {}
        for node in node_ids:
            members = tuple((k, nodes.index(node)) for k, nodes in enumerate(choice) if node in nodes)
            fit = node_fit(node, members)
            if fit is None:
                break
            layout.update({name: (node, vc, emu) for name, (vc, emu) in fit.items()})
        else:
            cross = sum(remote_nics(vm, nodes) for vm, nodes in zip(vms, choice, strict=True))
            if best is None or cross < best.cross_numa:
                best = OLayout(layout, cross)
    return best


# --- L3 cache domains ---------------------------------------------------------------------
#
# Cores of one L3 domain with the same number of threads are interchangeable, so a node's
# free cores are counted per (domain, one or two threads) and each VM takes a count of each:
# every way of doing so is tried (vCPU cores as vcpu_cores_ok says, plus the emulator core),
# which is the brute force over cores without its repeats. A VM is split when its cores
# (vCPU and emulator) lie in two or more L3 domains.


def l3_of_core(topo: HostTopology, core: OCore) -> int | None:
    cpu = min(core.cpus)
    return next((d.id for d in topo.l3_domains if cpu in d.cpus), None)


def _spreads(total: int, caps: Sequence[int]) -> list[tuple[int, ...]]:
    """Every way to take `total` items from bins with `caps` free."""
    if not caps:
        return [()] if total == 0 else []
    out = []
    for first in range(min(total, caps[0]) + 1):
        out += [(first, *rest) for rest in _spreads(total - first, caps[1:])]
    return out


def _vm_options(vm: OVm, caps: Sequence[tuple[int, int]]) -> list[tuple[tuple[tuple[int, int], ...], int]]:
    """(cores taken per domain as (twos, ones), domains touched) for every valid way `vm` fits `caps`."""
    out = []
    free_twos, free_ones = sum(t for t, _ in caps), sum(o for _, o in caps)
    for twos in range(min(free_twos, vm.vcpus) + 1):
        for ones in range(min(free_ones, vm.vcpus) + 1):
            cores = [OCore(frozenset({0, 1}), 0)] * twos + [OCore(frozenset({0}), 0)] * ones
            if not vcpu_cores_ok(vm.vcpus, cores):
                continue
            for two_split in _spreads(twos, [t for t, _ in caps]):
                for one_split in _spreads(ones, [o for _, o in caps]):
                    used = [(a, b) for a, b in zip(two_split, one_split, strict=True)]
                    emulators: list[tuple[int, int] | None] = [None]
                    if vm.dedicated:
                        emulators = [(d, k) for d in range(len(caps)) for k in (0, 1)]
                    for emu in emulators:
                        taken = list(used)
                        if emu is not None:
                            d, k = emu
                            taken[d] = (taken[d][0] + (k == 0), taken[d][1] + (k == 1))
                        if all(a <= t and b <= o for (a, b), (t, o) in zip(taken, caps, strict=True)):
                            touched = sum(1 for a, b in taken if a + b)
                            out.append((tuple(taken), touched))
    return out


def node_min_splits(caps: tuple[tuple[int, int], ...], vms: Sequence[OVm]) -> int | None:
    """Fewest split VMs when `vms` share a node whose free cores per L3 domain are `caps`."""
    memo: dict[tuple[int, tuple[tuple[int, int], ...]], int | None] = {}

    def go(i: int, left: tuple[tuple[int, int], ...]) -> int | None:
        if i == len(vms):
            return 0
        if (i, left) not in memo:
            best = None
            for taken, touched in _vm_options(vms[i], left):
                rest = go(i + 1, tuple((t - a, o - b) for (t, o), (a, b) in zip(left, taken, strict=True)))
                if rest is not None and (best is None or rest + (touched > 1) < best):
                    best = rest + (touched > 1)
            memo[(i, left)] = best
        return memo[(i, left)]

    return go(0, caps)


def literal_min_splits(cores: Sequence[OCore], l3: Sequence[int], vms: Sequence[OVm]) -> int | None:
    """node_min_splits core by core (tiny nodes only): every free core -> unused / VM k vCPU / VM k emulator."""
    best = None
    options: list[tuple[str, int] | None] = [None, *(("v", k) for k in range(len(vms)))]
    options += [("e", k) for k in range(len(vms))]
    for choice in itertools.product(options, repeat=len(cores)):
        splits = 0
        for k, vm in enumerate(vms):
            vcores = [c for c, ch in zip(cores, choice, strict=True) if ch == ("v", k)]
            ecores = [c for c, ch in zip(cores, choice, strict=True) if ch == ("e", k)]
            if len(ecores) != int(vm.dedicated) or not vcpu_cores_ok(vm.vcpus, vcores):
                break
            mine = {d for c, ch, d in zip(cores, choice, l3, strict=True) if ch is not None and ch[1] == k}
            splits += len(mine) > 1
        else:
            best = splits if best is None else min(best, splits)
    return best


def best_l3_layout(topo: HostTopology, spec: Spec, running: Sequence[VmPlan] = ()) -> tuple[int, int] | None:
    """(cross-NUMA NICs, split VMs) of the best layout, cross-NUMA first; None when none is valid."""
    free, node_ids, node_mem, vms, strict = _what_is_free(topo, spec, running)
    assert all(vm.cells == 1 for vm in vms), "the L3 oracle places one-node VMs only"
    caps: dict[int, tuple[tuple[int, int], ...]] = {}
    for node in node_ids:
        counts: dict[int | None, list[int]] = defaultdict(lambda: [0, 0])
        for core in free:
            if core.node == node:
                counts[l3_of_core(topo, core)][0 if core.threads == 2 else 1] += 1
        caps[node] = tuple((t, o) for _, (t, o) in sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
    cache: dict[tuple[int, tuple[int, ...]], int | None] = {}
    best: tuple[int, int] | None = None
    for nodes in itertools.product(node_ids, repeat=len(vms)):
        if any(vm.numa_node is not None and vm.numa_node != n for vm, n in zip(vms, nodes, strict=True)):
            continue
        if strict and any(x is not None and x != n for vm, n in zip(vms, nodes, strict=True) for x in vm.nic_nodes):
            continue
        splits = 0
        for node in node_ids:
            members = tuple(k for k, n in enumerate(nodes) if n == node)
            if sum(vms[k].memory_mib for k in members) > node_mem[node]:
                break
            if (node, members) not in cache:
                cache[(node, members)] = node_min_splits(caps[node], [vms[k] for k in members])
            found = cache[(node, members)]
            if found is None:
                break
            splits += found
        else:
            cross = sum(1 for vm, n in zip(vms, nodes, strict=True) for x in vm.nic_nodes if x is not None and x != n)
            if best is None or (cross, splits) < best:
                best = (cross, splits)
    return best


def split_vms(topo: HostTopology, plan: Plan, names: Sequence[str] | None = None) -> int:
    """VMs of `plan` (or just `names`) whose cores lie in two or more L3 domains."""
    count = 0
    for vm in plan.vms:
        if names is not None and vm.name not in names:
            continue
        ids = {next((d.id for d in topo.l3_domains if core.min() in d.cpus), None) for core in vm.cores}
        count += len(ids) > 1
    return count


def check_plan(topo: HostTopology, spec: Spec, plan: Plan) -> None:
    """Assert every invariant of faults.md that a CPU/NUMA/NIC plan must hold (independent checks)."""
    online = {c.id for c in topo.cpus if c.online}
    cpu_node = {c.id: (c.node if c.node is not None else 0) for c in topo.cpus}
    cores = physical_cores(topo)
    core_of = {cpu: core for core in cores for cpu in core.cpus}
    reserved = set(plan.host.reserved_cpus)

    # The host keeps whole cores: the lowest N per node plus CPU 0's core (or the explicit list).
    if spec.host.reserved_cpus is None:
        assert reserved == reserved_cpus(topo, spec.host.reserved_cores_per_node), "reserved CPUs"
    else:
        assert reserved == set(spec.host.reserved_cpuset or ()), "explicit reserved CPUs"
    if 0 in online:
        assert 0 in reserved, "CPU 0 stays with the host"
    assert reserved <= online

    names = [vm.name for vm in plan.vms]
    assert len(set(names)) == len(names), "a VM planned twice"
    assert names[: len(spec.vms)] == [vm.name for vm in spec.vms], "spec VMs first, in spec order"

    owner: dict[int, str] = {}
    all_vcpu_cpus: set[int] = set()
    memory: dict[int, int] = defaultdict(int)
    device_owner: dict[str, str] = {}
    for vm in plan.vms:
        vs = spec.vm(vm.name)
        pins = list(vm.vcpu_pins)
        # 1. total, 1:1, online
        assert len(pins) == vs.vcpus, f"{vm.name}: {len(pins)} pins for {vs.vcpus} vCPUs"
        assert len(set(pins)) == len(pins), f"{vm.name}: a host CPU carries two vCPUs"
        assert set(pins) <= online, f"{vm.name}: pinned to an offline/nonexistent CPU"
        # whole cores on the VM's node, or on its k nodes (numa_nodes), one share each
        nodes = vm.numa_nodes
        k = vs.numa_nodes
        assert len(nodes) == k and len(set(nodes)) == k, f"{vm.name}: nodes {nodes} for numa_nodes {k}"
        node = nodes[0]  # share 0's: the emulator's
        if vs.numa_node is not None:
            assert node == vs.numa_node, f"{vm.name}: asked for node {vs.numa_node}, got {node}"
        vm_cores = []
        for core in vm.cores:
            assert core.min() in core_of and set(core) == set(core_of[core.min()].cpus), f"{vm.name}: {core} not whole"
            assert core_of[core.min()].node in nodes, f"{vm.name}: core {core} off nodes {nodes}"
            vm_cores.append(core_of[core.min()])
        assert len(set(vm_cores)) == len(vm_cores), f"{vm.name}: a core listed twice"
        share = vs.vcpus // k
        shares = [pins[i * share : (i + 1) * share] for i in range(k)]  # guest cell i's vCPUs
        for on, part in zip(nodes, shares, strict=True):
            assert all(cpu_node[cpu] == on for cpu in part), f"{vm.name}: a vCPU of its node-{on} share off node {on}"
        # emulator + IOThreads
        # over several nodes on hugepages, the emulator also gets the host's CPUs of the other
        # nodes (libvirt preallocates each cell's pages from a thread on that cell's node)
        prealloc = {cpu for cpu in reserved if cpu_node[cpu] in nodes[1:]} if k > 1 and vs.hugepages.kib else set()
        emu = set(vm.emulator_cpus) - prealloc
        if vs.emulator.value == "dedicated":
            emu_cores = [c for c in vm_cores if c.cpus == emu]
            assert len(emu_cores) == 1, f"{vm.name}: dedicated emulator CPUs {emu} are not one of its cores"
            assert emu_cores[0].node == node, f"{vm.name}: emulator core off share 0's node {node}"
            vcpu_cores = [c for c in vm_cores if c.cpus != emu]
        else:
            local = {cpu for cpu in reserved if cpu_node[cpu] == node}
            assert emu == (local or reserved), f"{vm.name}: emulator=host should use the host CPUs of node {node}"
            vcpu_cores = vm_cores
        assert prealloc <= set(vm.emulator_cpus), f"{vm.name}: no host CPU of its other nodes for the prealloc"
        emu = set(vm.emulator_cpus)
        assert emu, f"{vm.name}: emulator threads unpinned"
        assert set(vm.iothread_cpus) == (emu if vs.iothreads else set()), f"{vm.name}: IOThreads off emulator CPUs"
        assert vm.iothreads == vs.iothreads
        for on, part in zip(nodes, shares, strict=True):
            own = [c for c in vcpu_cores if c.node == on]
            own_cpus = {cpu for c in own for cpu in c.cpus}
            assert set(part) <= own_cpus, f"{vm.name}: a vCPU outside its vCPU cores on node {on}"
            assert all(not c.cpus.isdisjoint(part) for c in own), f"{vm.name}: owns an unused vCPU core on node {on}"
            idle = len(own_cpus) - len(part)
            assert idle <= share % 2, f"{vm.name}: {idle} idle threads with {share} vCPUs on node {on}"
        # guest topology mirrors host siblings, one guest socket per cell
        gt = vm.guest_topology
        assert gt.sockets * gt.dies * gt.cores * gt.threads == vs.vcpus, f"{vm.name}: guest topology {gt}"
        assert gt.sockets == k, f"{vm.name}: {gt.sockets} guest sockets for {k} cells"
        assert gt.threads in (1, 2)
        if gt.threads == 2:
            for i in range(0, len(pins), 2):
                assert core_of[pins[i]] == core_of[pins[i + 1]], f"{vm.name}: vCPUs {i},{i + 1} not host siblings"
        # guest NUMA cells: cell i on node i's share, its vCPUs, its memory, the host's distances
        if k == 1:
            assert vm.cells == (), f"{vm.name}: guest cells for a one-node VM"
            memory[node] += vm.memory_mib
        else:
            ids = sorted(n.id for n in topo.numa_nodes)
            rows = {n.id: n.distances for n in topo.numa_nodes}
            assert [c.node for c in vm.cells] == list(nodes), f"{vm.name}: cells {vm.cells} not on {nodes}"
            for i, cell in enumerate(vm.cells):
                assert list(cell.vcpus) == list(range(i * share, (i + 1) * share)), f"{vm.name}: cell {i} vCPUs"
                assert cell.memory_mib * k == vs.memory, f"{vm.name}: cell {i} memory {cell.memory_mib}"
                if rows[cell.node]:
                    want = tuple(rows[cell.node][ids.index(other)] for other in nodes)
                    assert cell.distances == want, f"{vm.name}: cell {i} distances {cell.distances}, host {want}"
                memory[cell.node] += cell.memory_mib
        # ownership
        for cpu in vm.owned_cpus:
            assert cpu not in owner, f"CPU {cpu} owned by {owner.get(cpu)} and {vm.name}"
            assert cpu not in reserved, f"{vm.name}: owns host-reserved CPU {cpu}"
            owner[cpu] = vm.name
        all_vcpu_cpus |= set(pins)
        assert vm.memory_mib == vs.memory
        # devices
        wanted = []
        for nic in vs.nics:
            ref = nic.passthrough
            if ref is None:
                continue  # SR-IOV VFs: not checked here
            dev = next(d for d in topo.pci_devices if (d.address == ref if ":" in ref else ref in d.interfaces))
            wanted.append(dev.address)
        whole = [d for d in vm.devices if d.type == "passthrough"]
        assert [d.address for d in whole] == wanted, f"{vm.name}: devices {vm.devices} != spec {wanted}"
        for dev in whole:
            assert dev.address not in device_owner, f"{dev.address} in {device_owner.get(dev.address)} and {vm.name}"
            device_owner[dev.address] = vm.name
            cross = dev.numa_node is not None and dev.numa_node not in nodes
            flagged = [w for w in vm.warnings if dev.address in w and "(cross-NUMA)" in w]
            assert bool(flagged) == cross, f"{vm.name}: cross-NUMA warning for {dev.address}: {vm.warnings}"
            if cross:
                assert spec.host.nic_numa_policy.value != "require", f"{vm.name}: cross-NUMA under require"
                assert flagged[0] in plan.warnings

    # 3. emulator/IOThread CPUs never on any VM's vCPU CPUs
    for vm in plan.vms:
        side = set(vm.emulator_cpus) | set(vm.iothread_cpus)
        assert side.isdisjoint(all_vcpu_cpus), f"{vm.name}: emulator/IOThreads on vCPU CPUs"
    # 4. all siblings of a core have one owner (a VM, the host, or nobody yet)
    for core in cores:
        owners = {owner.get(cpu, "(host)" if cpu in reserved else "(free)") for cpu in core.cpus}
        assert len(owners) == 1, f"core {sorted(core.cpus)} split between {owners}"
    # 6. isolation
    isolated = set(plan.host.isolated_cpus)
    assert set(owner) <= isolated, "a VM CPU is not isolated"
    assert isolated.isdisjoint(reserved), "an isolated CPU is host-reserved"
    assert 0 not in isolated
    if spec.host.isolate.value == "all":
        assert isolated == online - reserved
    else:
        assert isolated == set(owner)
    args = plan.host.kernel_args
    fmt = plan.host.isolated_cpus.format()
    if isolated:
        for key in ("isolcpus", "nohz_full", "rcu_nocbs"):
            assert f"{key}={fmt}" in args, f"{key} missing from {args}"
    assert f"irqaffinity={plan.host.reserved_cpus.format()}" in args
    passthrough = any(vm.devices for vm in plan.vms)  # the IOMMU args only when a device needs them
    assert ("intel_iommu=on" in args) == (passthrough and topo.cpu_vendor == "GenuineIntel")
    assert ("iommu=pt" in args) == passthrough
    # 7. memory per node
    for node_id, used in memory.items():
        total = next(n.memory_mib for n in topo.numa_nodes if n.id == node_id)
        assert used <= total - spec.host.reserved_memory_per_node, f"node {node_id}: {used} MiB planned"
