"""make_plan: a pure function of (topology, spec, slices already running) -> Plan.

No I/O here. Infeasible specs raise PlanError naming the shortfall; unsafe device
choices raise PlanError naming the device and the rule.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.plan import DeviceAssignment, GuestCell, GuestTopology, HostPlan, NodeHugepages, PfPlan, Plan, VmPlan
from bmslice.model.sizes import GIB_KIB
from bmslice.model.spec import EmulatorPolicy, IsolateScope, NicNumaPolicy, Spec, VmSpec
from bmslice.model.topology import Core, HostTopology
from bmslice.plan.allocate import Allocation, NodeRequest, allocate_node_l3
from bmslice.plan.cache_ways import reserve_cache, way_budget
from bmslice.plan.capacity import NodeFree, room_order, vm_load
from bmslice.plan.devices import ResolvedNic, VfRequest, check_nics, numa_warning, resolve_nics, resolve_vf_pools
from bmslice.plan.held import held_cpus, held_memory, held_vfs, naming_held, taken_devices
from bmslice.plan.host import kernel_args, missing_args, per_node_hugepages, reserved_cores
from bmslice.plan.l3_placement import L3Layout, core_l3, l3_ids, node_domains, place_in_l3, with_split_notes
from bmslice.plan.macs import check_macs
from bmslice.plan.placement import Request, place
from bmslice.plan.realtime import realtime_plan
from bmslice.plan.sriov import assign_vfs

if TYPE_CHECKING:  # a type only: a one-shot plan holds no slice, and live.py's dataclasses cost start-up
    from bmslice.model.live import HeldSlice


def make_plan(
    topo: HostTopology,
    spec: Spec,
    origin: str = "spec",
    keep: Sequence[VmPlan] = (),
    held: Sequence[HeldSlice] = (),
) -> Plan:
    """Plan every VM of `spec` on `topo`; VMs in `keep` (already running) stay where they are.

    A kept VM that the spec no longer names still holds its cores (it runs until destroyed).
    `held`: slices whose recorded plan is unreadable; new VMs go around what they hold (plan/held.py).
    """
    if any(core.threads > 2 for core in topo.cores):
        raise PlanError("cores with more than 2 hardware threads are not supported")
    host_cores = reserved_cores(topo, spec.host)
    reserved = CpuSet.union(c.cpus for c in host_cores)
    parked = {
        d.interface: d.known_address for vm in keep for d in vm.devices if d.type == "passthrough" and d.interface
    }
    nics, vf_requests = resolve_nics(topo, spec.vms, origin, parked)
    vf_pools = resolve_vf_pools(topo, spec.host, origin)
    spec_names = {vm.name for vm in spec.vms}
    taken_devs = taken_devices(held, keep, spec_names)  # a refusal over one names its holder
    warnings = list(topo.warnings) + check_nics(topo, nics, vf_requests, spec.host, origin, taken_devs)
    kept = _kept(topo, spec, keep, reserved, warnings)
    taken = reserved | CpuSet.union(vm.owned_cpus for vm in kept.values()) | held_cpus(held)
    free_cores = [core for core in topo.cores if core.cpus.isdisjoint(taken)]
    free = _node_free(topo, spec, free_cores, kept, held_memory(held))
    new_vms = [vm for vm in spec.vms if vm.name not in kept]
    field = {vm.name: f"{origin}: vms[{index}]" for index, vm in enumerate(spec.vms)}
    spare = _spare_nics(topo, nics, keep)
    requests = [
        req for vm in new_vms for req in _requests(topo, vm, nics, vf_requests, spec, field[vm.name], free, spare)
    ]
    placed = place(requests, free)
    if placed is None:
        from bmslice.plan.shortfall import explain  # only a refusal needs it

        with naming_held(held):
            raise PlanError(_locality_refusal(requests, free) or explain(requests, free))
    l3_of = core_l3(topo)
    ways = way_budget(topo, spec, list(kept.values()))
    layout = place_in_l3(requests, node_domains(free, free_cores, l3_of, ways.free), placed, ways.needs)
    assignment = _vm_nodes(new_vms, layout.nodes)
    if not layout.numa_optimal:
        warnings.append(
            "the NUMA placement of NICs is the best found in the search budget, not proven the fewest cross-NUMA"
        )
    if not layout.optimal and any(r.group is not None for r in requests):
        warnings.append(
            "with a VM over several NUMA nodes the L3 cache layout is the fewest split VMs on each node for the NUMA "
            "placement, not proven the fewest overall"
        )
    elif not layout.optimal:
        warnings.append("the L3 cache layout is the best found in the search budget, not proven the fewest split VMs")
    allocations = _allocate(free_cores, new_vms, layout, l3_of)
    with naming_held(held):
        vf_devices, pf_plans, vf_warnings = assign_vfs(
            topo, vf_requests, assignment, list(kept.values()), vf_pools, origin, held_vfs(topo, held)
        )
    check_macs(topo, vf_devices, list(kept.values()), origin)
    vms = tuple(
        _vm_plan(
            topo,
            spec,
            vm,
            kept.get(vm.name),
            allocations.get(vm.name),
            assignment.get(vm.name),
            nics,
            host_cores,
            vf_devices.get(vm.name, []),
            vf_warnings.get(vm.name, []),
            f"{origin}: vms[{index}].realtime.housekeeping_vcpus",
        )
        for index, vm in enumerate(spec.vms)
    )
    vms = with_split_notes(topo, vms, reserved)
    plan_vms = vms + tuple(vm for name, vm in kept.items() if name not in {v.name for v in spec.vms})
    plan_vms, l3_host_masks = reserve_cache(topo, spec, plan_vms, {vm.name for vm in new_vms}, origin)
    vms = plan_vms[: len(vms)]
    return _with_host(topo, spec, reserved, vms, plan_vms, warnings, pf_plans, l3_host_masks, held_cpus(held))


def _kept(
    topo: HostTopology, spec: Spec, keep: Sequence[VmPlan], reserved: CpuSet, warnings: list[str]
) -> dict[str, VmPlan]:
    names = {vm.name for vm in spec.vms}
    kept: dict[str, VmPlan] = {}
    used = CpuSet()
    for old in keep:
        cpus = old.owned_cpus
        if not cpus.issubset(topo.online_cpus):
            raise PlanError(f"{old.name} runs on CPUs {cpus - topo.online_cpus} that are now offline")
        if not cpus.isdisjoint(reserved) or not cpus.isdisjoint(used):
            raise PlanError(f"{old.name} runs on CPUs {cpus} that the host or another slice now claims")
        used = used | cpus
        if old.name not in names:
            warnings.append(f"{old.name} runs but is not in the spec; its CPUs {cpus} stay taken until destroyed")
        else:
            _check_still_fits(old, spec.vm(old.name))
        kept[old.name] = old
    return kept


def slice_changes(old: VmPlan, vm: VmSpec) -> list[str]:
    """What the spec changes about a running slice that would force it to move (empty: it can stay)."""
    changes = []
    if old.vcpus != vm.vcpus:
        changes.append(f"vcpus {old.vcpus} -> {vm.vcpus}")
    if old.emulator_policy != vm.emulator.value:
        changes.append(f"emulator {old.emulator_policy} -> {vm.emulator.value}")
    if vm.numa_node is not None and vm.numa_node not in old.numa_nodes:
        changes.append(f"numa_node {old.numa_nodes[0]} -> {vm.numa_node}")
    if len(old.numa_nodes) != vm.numa_nodes:  # its guest cells are set at define time
        changes.append(f"numa_nodes {len(old.numa_nodes)} -> {vm.numa_nodes}")
    had = (old.cache.l3_kib, old.cache.memory_bandwidth) if old.cache is not None else (None, None)
    wants = (vm.cache.l3, vm.cache.memory_bandwidth) if vm.cache is not None else (None, None)
    if had != wants:
        changes.append(f"cache {_cache_text(*had)} -> {_cache_text(*wants)}")  # libvirt sets it at start only
    return changes


def _cache_text(l3_kib: int | None, bandwidth: int | None) -> str:
    parts = ([f"l3 {l3_kib}KiB"] if l3_kib else []) + ([f"memory_bandwidth {bandwidth}%"] if bandwidth else [])
    return ", ".join(parts) or "none"


def _check_still_fits(old: VmPlan, vm: VmSpec) -> None:
    changes = slice_changes(old, vm)
    if changes:
        raise PlanError(
            f"{vm.name} already runs on CPUs {old.owned_cpus} and the spec changes {', '.join(changes)}; "
            "moving a running slice needs --allow-move"
        )


def _node_free(
    topo: HostTopology, spec: Spec, free_cores: Sequence[Core], kept: dict[str, VmPlan], held_mem: Mapping[int, int]
) -> list[NodeFree]:
    kept_mem: dict[int, int] = defaultdict(int, held_mem)
    for vm in kept.values():
        for on, mib in vm.memory_by_node().items():
            kept_mem[on] += mib
    out = []
    for node in topo.numa_nodes:
        cores = [c for c in free_cores if c.node == node.id]
        if not node.cpus:
            continue
        mem = max(node.memory_mib - spec.host.reserved_memory_per_node - kept_mem[node.id], 0)  # never "-N MiB free"
        twos, ones = sum(c.threads == 2 for c in cores), sum(c.threads == 1 for c in cores)
        out.append(NodeFree(node.id, twos, ones, mem, topo.smt))
    return out


def part_name(vm: str, part: int) -> str:
    """A VM's share on one of its nodes, as the placement searches name it ('#' is never in a VM name)."""
    return f"{vm}#{part}"


def _requests(
    topo: HostTopology,
    vm: VmSpec,
    nics: Sequence[ResolvedNic],
    vf_requests: Sequence[VfRequest],
    spec: Spec,
    field: str,
    free: Sequence[NodeFree],
    spare: Mapping[int, int],
) -> list[Request]:
    """The placement requests of one VM (`field`: how refusals name it, "spec.yaml: vms[2]").

    Candidate nodes come in the order the placement search tries them, so among layouts equal
    in everything else the first in this order is chosen: fewest cross-NUMA NICs first, then
    the fewest NICs no VM passes through yet (`spare`: a node with one is kept for a VM that
    will want it), then the node that leaves the least room after this VM (`room_order`: best
    fit, so the roomiest nodes stay whole for bigger VMs to come), then the lowest id.
    """
    node_ids = sorted(n.id for n in topo.numa_nodes if n.cpus)
    # Each NIC entry: the nodes that would make it local (empty: locality unknown, no preference).
    local_sets = [frozenset({n.device.numa_node}) for n in nics if n.vm == vm.name and n.device.numa_node is not None]
    local_sets += [r.nodes for r in vf_requests if r.vm == vm.name and r.nodes]
    nic_nodes = sorted({node for s in local_sets for node in s})

    def cost(node: int) -> int:
        return sum(1 for nodes in local_sets if node not in nodes)

    dedicated = vm.emulator is EmulatorPolicy.DEDICATED
    if vm.numa_nodes > 1:
        if vm.numa_nodes > len(node_ids):
            raise PlanError(
                f"{field}.numa_nodes: {vm.name} asks for {vm.numa_nodes} NUMA nodes, the host has "
                f"{len(node_ids)} with CPUs ({', '.join(map(str, node_ids))})"
            )
        # Its NIC nodes first: the search tries them first and usually stops there.
        share, memory = vm.vcpus // vm.numa_nodes, vm.memory // vm.numa_nodes
        room = room_order(free, vm_load(share, dedicated, memory))
        ordered = tuple(sorted(node_ids, key=lambda n: (cost(n), room(n), n)))  # its shares go to several anyway
        return [
            Request(
                part_name(vm.name, part),
                vm_load(share, dedicated and part == 0, memory),  # the emulator core sits with the first share
                ordered,
                tuple(0 for _ in ordered),
                group=vm.name,
                part=part,
                parts=vm.numa_nodes,
                local_sets=tuple(local_sets),
                strict=spec.host.nic_numa_policy is NicNumaPolicy.REQUIRE,
            )
            for part in range(vm.numa_nodes)
        ]
    if vm.numa_node is not None:
        if vm.numa_node not in node_ids:
            raise PlanError(f"{vm.name}: numa_node {vm.numa_node} does not exist or has no CPUs (nodes: {node_ids})")
        candidates = [vm.numa_node]
    else:
        room = room_order(free, vm_load(vm.vcpus, dedicated, vm.memory))
        candidates = sorted(node_ids, key=lambda n: (cost(n), spare.get(n, 0), room(n), n))
    if spec.host.nic_numa_policy is NicNumaPolicy.REQUIRE and nic_nodes:
        local = [n for n in candidates if cost(n) == 0]
        if not local:
            raise PlanError(
                f"{vm.name}: its NICs are on NUMA nodes {sorted(set(nic_nodes))} and nic_numa_policy is require, "
                f"but the VM can only go to node {candidates}"
            )
        candidates = local
    load = vm_load(vm.vcpus, dedicated, vm.memory)
    return [Request(vm.name, load, tuple(candidates), tuple(cost(n) for n in candidates))]


def _spare_nics(topo: HostTopology, nics: Sequence[ResolvedNic], keep: Sequence[VmPlan]) -> Counter[int]:
    """Per node, the NICs (physical functions) that neither the spec nor a running VM passes
    through and that do not carry the host's default route: a later VM may want them there."""
    taken = {n.device.address for n in nics} | {d.address for vm in keep for d in vm.devices}
    return Counter(
        dev.numa_node
        for dev in topo.pci_devices
        if dev.is_network
        and dev.physfn is None
        and dev.numa_node is not None
        and dev.address not in taken
        and topo.default_route_interface not in dev.interfaces
    )


def _locality_refusal(requests: Sequence[Request], free: Sequence[NodeFree]) -> str | None:
    """Why nothing fits, when it is nic_numa_policy require: the first VM over several nodes whose
    NICs, were they allowed to be remote, would let every VM fit."""
    for group in dict.fromkeys(r.group for r in requests if r.strict and r.local_sets):
        loose = [replace(r, strict=False) if r.group == group else r for r in requests]
        if place(loose, free) is not None:
            req = next(r for r in requests if r.group == group)
            wanted = sorted({node for local in req.local_sets for node in local})
            return (
                f"{group}: nic_numa_policy is require and its NICs are on NUMA node(s) "
                f"{', '.join(map(str, wanted))}, but no {req.parts} nodes with room for its shares hold them all"
            )
    return None


def _vm_nodes(vms: Sequence[VmSpec], nodes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Each VM's host nodes, its shares in order (one node for an ordinary VM)."""
    return {
        vm.name: (
            tuple(nodes[part_name(vm.name, p)] for p in range(vm.numa_nodes))
            if vm.numa_nodes > 1
            else (nodes[vm.name],)
        )
        for vm in vms
    }


def _allocate(
    free_cores: Sequence[Core], vms: Sequence[VmSpec], layout: L3Layout, l3_of: Callable[[Core], int | None]
) -> dict[str, list[Allocation]]:
    """Each VM's allocation per share (one for an ordinary VM), in share order."""
    by_node: dict[int, list[NodeRequest]] = defaultdict(list)
    for vm in vms:
        dedicated = vm.emulator is EmulatorPolicy.DEDICATED
        if vm.numa_nodes == 1:
            by_node[layout.nodes[vm.name]].append(NodeRequest(vm.name, vm.vcpus, dedicated))
            continue
        share = vm.vcpus // vm.numa_nodes
        for part in range(vm.numa_nodes):
            name = part_name(vm.name, part)
            by_node[layout.nodes[name]].append(NodeRequest(name, share, dedicated and part == 0))
    found: dict[str, Allocation] = {}
    for node, requests in sorted(by_node.items()):
        found.update(allocate_node_l3([c for c in free_cores if c.node == node], requests, layout.domains, l3_of))
    return {
        vm.name: (
            [found[part_name(vm.name, p)] for p in range(vm.numa_nodes)] if vm.numa_nodes > 1 else [found[vm.name]]
        )
        for vm in vms
    }


def _vm_plan(
    topo: HostTopology,
    spec: Spec,
    vm: VmSpec,
    old: VmPlan | None,
    allocs: Sequence[Allocation] | None,
    nodes: tuple[int, ...] | None,
    nics: Sequence[ResolvedNic],
    host_cores: Sequence[Core],
    vf_devices: Sequence[DeviceAssignment],
    vf_warnings: Sequence[str],
    realtime_field: str,
) -> VmPlan:
    cells: tuple[GuestCell, ...] = ()
    if old is not None:
        nodes, pins, cores = old.numa_nodes, old.vcpu_pins, old.cores
        emu_cpus, topology, cells = old.emulator_cpus, old.guest_topology, old.cells
    else:
        assert allocs and nodes is not None
        # Guest cell i is share i, on host node nodes[i]: share 0 holds the emulator core, the
        # placement search decides which node that is (the NICs' node, where it can).
        pins = tuple(pin for alloc in allocs for pin in alloc.vcpu_pins)
        cores = tuple(sorted((core for alloc in allocs for core in alloc.cores), key=CpuSet.min))
        emulator_core = allocs[0].emulator_core
        # libvirt (9.0) preallocates each cell's hugepages with a thread pinned to that cell's
        # node, inside the emulator's cpuset: pinned to one node's CPUs, QEMU cannot start
        # ("Setting CPU affinity failed", found by the lab on a host whose systemd gives libvirt
        # cgroups). Such a VM's emulator may also run on the host's CPUs of its other nodes.
        prealloc_nodes = nodes[1:] if len(allocs) > 1 and vm.hugepages.kib else ()
        elsewhere = [c.cpus for c in host_cores if c.node in prealloc_nodes]
        if emulator_core is not None:
            emu_cpus = CpuSet.union([emulator_core, *elsewhere])
        else:
            local = [c.cpus for c in host_cores if c.node == nodes[0]] or [c.cpus for c in host_cores]
            emu_cpus = CpuSet.union([*local, *elsewhere])
        share = vm.vcpus // len(allocs)
        pairs = all(a.sibling_pairs for a in allocs) and share % 2 == 0 and topo.smt
        # one guest socket per cell, so the guest's sockets, cores and threads agree with its cells
        topology = GuestTopology(len(allocs), share // 2, 2) if pairs else GuestTopology(len(allocs), share, 1)
        if len(allocs) > 1:
            cells = _cells(topo, nodes, share, vm.memory // len(allocs))
    devices = []
    warnings = list(vf_warnings)
    # A running slice's devices sit on vfio-pci now; the host driver to return them to is the recorded one.
    recorded = {d.address: d.driver for d in old.devices} if old is not None else {}
    for nic in nics:
        if nic.vm != vm.name:
            continue
        dev = nic.device
        driver = recorded.get(dev.address, dev.driver)
        devices.append(
            DeviceAssignment(dev.address, "passthrough", dev.numa_node, ",".join(dev.interfaces) or None, driver)
        )
        warning = numa_warning(topo, vm.name, dev, nodes)
        if warning:
            warnings.append(warning)
    devices.extend(vf_devices if old is None else [d for d in old.devices if d.type == "vf"])
    domain_type = spec.host.domain_type.value
    realtime = None
    if vm.realtime is not None:
        realtime = realtime_plan(vm.realtime, pins, topology, topo.cores, vm.memory, domain_type, realtime_field)
    return VmPlan(
        name=vm.name,
        numa_nodes=nodes,
        vcpu_pins=tuple(pins),
        emulator_cpus=emu_cpus,
        iothread_cpus=emu_cpus if vm.iothreads else CpuSet(),
        iothreads=vm.iothreads,
        guest_topology=topology,
        memory_mib=vm.memory,
        hugepage_kib=vm.hugepages.kib,
        cores=tuple(cores),
        emulator_policy=vm.emulator.value,
        devices=tuple(devices),
        disable_cpu_features=vm.disable_cpu_features,
        domain_type=domain_type,
        warnings=tuple(warnings),
        realtime=realtime,
        l3_domains=l3_ids(topo, cores),
        cache=old.cache if old is not None else None,  # new slices get theirs in reserve_cache
        cells=cells,
    )


def _cells(topo: HostTopology, nodes: tuple[int, ...], share: int, memory_mib: int) -> tuple[GuestCell, ...]:
    """Guest cell i on host node nodes[i], with the host's distances between those nodes."""
    ids = sorted(n.id for n in topo.numa_nodes)

    def distance(a: int, b: int) -> int:
        row = topo.node(a).distances
        index = ids.index(b)
        return row[index] if index < len(row) else (10 if a == b else 20)  # unknown: Linux's defaults

    return tuple(
        GuestCell(
            node,
            CpuSet.from_iter(range(i * share, (i + 1) * share)),
            memory_mib,
            tuple(distance(node, other) for other in nodes),
        )
        for i, node in enumerate(nodes)
    )


def _hugepages(vms: Sequence[VmPlan]) -> tuple[NodeHugepages, ...]:
    pages: dict[tuple[int, int], int] = defaultdict(int)
    for vm in vms:
        if vm.hugepage_kib:
            for node, mib in vm.memory_by_node().items():
                pages[(node, vm.hugepage_kib)] += mib * 1024 // vm.hugepage_kib
    return tuple(NodeHugepages(node, size, n) for (node, size), n in sorted(pages.items()))


def _hugepage_form(topo: HostTopology, hugepages: Sequence[NodeHugepages], warnings: list[str]) -> bool:
    """Per-node 1 GiB boot args where the kernel takes them; the global form, said aloud, where not."""
    if not any(h.size_kib == GIB_KIB for h in hugepages):
        return True
    per_node = per_node_hugepages(topo.kernel_release)
    if per_node is None:
        warnings.append(
            f"kernel release unknown from {topo.source or 'this source'}: 1 GiB hugepages are asked for per node "
            "(hugepages=<node>:<count>), which Linux before 5.16 does not parse"
        )
        return True
    if not per_node:
        warnings.append(
            f"kernel {topo.kernel_release} has no per-node hugepages= (Linux 5.16+): 1 GiB pages are reserved with the "
            "global form, spread evenly over the NUMA nodes, and bmslice-hugepages.service sets each node's count "
            "at boot, before libvirtd"
        )
    return per_node


def _with_host(
    topo: HostTopology,
    spec: Spec,
    reserved: CpuSet,
    spec_vms: Sequence[VmPlan],
    all_vms: tuple[VmPlan, ...],
    warnings: list[str],
    pf_plans: tuple[PfPlan, ...],
    l3_host_masks: tuple[tuple[int, int], ...],
    held_on: CpuSet,
) -> Plan:
    if spec.host.isolate is IsolateScope.ALL:
        isolated = topo.online_cpus - reserved
    else:  # a held slice's CPUs too: it runs there until destroyed
        isolated = CpuSet.union(vm.owned_cpus for vm in all_vms) | (held_on & topo.online_cpus) - reserved
    hugepages = _hugepages(all_vms)
    realtime = any(vm.realtime is not None for vm in all_vms)
    passthrough = any(vm.devices for vm in all_vms)
    per_node = _hugepage_form(topo, hugepages, warnings)
    memory_nodes = sum(1 for node in topo.numa_nodes if node.memory_mib) or 1
    args = kernel_args(topo.cpu_vendor, reserved, isolated, hugepages, passthrough, realtime, per_node, memory_nodes)
    if topo.kernel_cmdline:
        missing = missing_args(args, topo.kernel_cmdline, topo.iommu_active)
    else:
        missing = args
        warnings.append(f"the kernel command line is unknown from {topo.source or 'this source'}; assuming a reboot")
    for vm in spec_vms:
        warnings.extend(vm.warnings)
    host = HostPlan(
        reserved_cpus=reserved,
        isolated_cpus=isolated,
        kernel_args=args,
        reboot_required=bool(missing),
        missing_kernel_args=missing,
        hugepages=hugepages,
        cpu_vendor=topo.cpu_vendor,
        sriov=pf_plans,
        l3_host_masks=l3_host_masks,
    )
    return Plan(host=host, vms=all_vms, warnings=tuple(dict.fromkeys(warnings)))
