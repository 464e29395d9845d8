"""Free room: how many more VMs of a shape fit beside the slices a host runs, decided by the planner.

"Fits 2 more" means `make_plan` with every slice of `base` kept where it is (`keep=`) plans
the spec plus 2 copies of the shape, and refuses the spec plus 3, and the refusal is the
planner's own words. So the count is as exact as the planner: never a sum of free cores
divided by a VM's size. The search asks the planner about O(log n) counts: an upper bound
from whole cores, memory and NICs first (refused unless the bound is loose), then halving.

A copy of a spec VM is the VM under the name `<name>+<i>`, placed where the planner likes
(its `numa_node` is dropped; the picture's per-node room pins it instead), with any free
whole NIC where the VM names one (one NIC cannot be passed through twice) and VFs from the
PFs the VM names (without a fixed MAC). Free whole NICs are handed out across the NUMA
nodes in turn, so copies find local ones; under `nic_numa_policy: require` another
hand-out could fit more, which this search does not try.

What runs out first is found the same way: the resources (cores, memory, whole NICs, VFs,
NIC locality) of which more would have let one more copy fit, each tried alone with the
planner. Hugepages are not the planner's to refuse (host-apply reserves 2 MiB pages, 1 GiB
pages need the boot args and a reboot): the room says how many pages the copies need per
node against how many are free now.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from msgspec import structs

from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.plan import DeviceAssignment, Plan, VmPlan
from bmslice.model.shapes import VmShape
from bmslice.model.spec import NicNumaPolicy, NicSpec, Spec, SriovSpec, VmSpec
from bmslice.model.topology import Cpu, HostTopology, PciDevice
from bmslice.plan.devices import ResolvedNic, VfRequest, check_nics, resolve_vf_pools
from bmslice.plan.host import reserved_cores
from bmslice.plan.planner import make_plan

T = TypeVar("T")
MIX = "mix"  # the shape made of one copy of every other shape
# Resources a relief may free, in the order reports name them.
CORES, MEMORY, WHOLE_NICS, VFS, LOCALITY = "cores", "memory", "whole NICs", "VFs", "NIC locality"


@dataclass(frozen=True)
class Template:
    """One VM of a shape: its spec, and which of its NIC entries take any free whole NIC."""

    vm: VmSpec
    any_pt: frozenset[int] = frozenset()  # indexes into vm.nics: a whole NIC, any free one
    any_vf: frozenset[int] = frozenset()  # indexes into vm.nics: VFs of any SR-IOV NIC the host may use

    @property
    def cores_at_most(self) -> int:
        """Whole cores one copy can take at the most (a vCPU each, the emulator core)."""
        return self.vm.vcpus + 1


@dataclass(frozen=True)
class Shape:
    name: str  # how reports name it: a spec VM (and the VMs of the same shape), a --vm value, or MIX
    templates: tuple[Template, ...]  # one copy of each makes one "more" (several only for MIX)


@dataclass(frozen=True)
class PagesNeed:
    """Hugepages the copies need on one node, against the pages free there now."""

    node: int
    size_kib: int
    pages: int
    free: int


@dataclass(frozen=True)
class ShapeRoom:
    shape: str
    more: int  # how many more copies (sets, for MIX) the planner accepts
    vms: tuple[VmPlan, ...]  # those copies as the planner places them
    refusal: str  # the planner's refusal of one more
    limits: tuple[str, ...]  # what runs out first: resources of which more would let one more fit
    hugepages: tuple[PagesNeed, ...] = ()


@dataclass(frozen=True)
class NodeRoom:
    """One NUMA node after the plan: free whole cores and memory, and how many of each
    one-node shape fit on it alone (the others kept where they are)."""

    node: int
    cores: int
    memory_mib: int
    fits: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Room:
    shapes: tuple[ShapeRoom, ...]
    nodes: tuple[NodeRoom, ...]


# --- shapes -----------------------------------------------------------------------------


def _shape_key(vm: VmSpec) -> VmSpec:
    """What makes two spec VMs one shape: everything but name, node pin and the NICs' names."""
    nics = tuple(NicSpec(passthrough="any") if nic.passthrough is not None else _without_mac(nic) for nic in vm.nics)
    return structs.replace(vm, name="x", numa_node=None, disk=None, cloud_init=None, nics=nics)


def _without_mac(nic: NicSpec) -> NicSpec:
    assert nic.sriov is not None
    return structs.replace(nic, sriov=structs.replace(nic.sriov, mac=None))


def spec_shapes(spec: Spec) -> tuple[Shape, ...]:
    """One shape per distinct VM of the spec (named after its VMs), and the spec's mix when it
    has two or more VMs."""
    by_key: dict[VmSpec, list[VmSpec]] = {}
    for vm in spec.vms:
        by_key.setdefault(_shape_key(vm), []).append(vm)
    shapes = [Shape(", ".join(vm.name for vm in same), (_template(same[0]),)) for same in by_key.values()]
    if len(spec.vms) > 1:
        shapes.append(Shape(MIX, tuple(_template(vm) for vm in spec.vms)))
    return tuple(shapes)


def _template(vm: VmSpec) -> Template:
    pts = frozenset(i for i, nic in enumerate(vm.nics) if nic.passthrough is not None)
    nics = tuple(_without_mac(nic) if nic.sriov is not None else nic for nic in vm.nics)
    copy = structs.replace(vm, numa_node=None, disk=None, cloud_init=None, nics=nics)
    return Template(copy, pts)


def asked_shapes(asked: Sequence[VmShape]) -> tuple[Shape, ...]:
    """The --vm shapes, and their mix when several are asked."""
    templates = []
    for index, shape in enumerate(asked):
        nics = tuple(
            NicSpec(passthrough=nic.names[0] if nic.names else "any")
            if nic.kind == "pt"
            else NicSpec(sriov=SriovSpec(pf=nic.names or ("any",)))
            for nic in shape.nics
        )
        vm = VmSpec(name=f"vm{index + 1}", vcpus=shape.vcpus, memory=shape.memory_mib, nics=nics)
        named = [(i, nic) for i, nic in enumerate(shape.nics) if not nic.names]
        any_pt = frozenset(i for i, nic in named if nic.kind == "pt")
        templates.append(Template(vm, any_pt, frozenset(i for i, _ in named) - any_pt))
    shapes = [Shape(shape.label, (template,)) for shape, template in zip(asked, templates, strict=True)]
    if len(asked) > 1:
        shapes.append(Shape(MIX, tuple(templates)))
    return tuple(shapes)


# --- NICs a copy may take ---------------------------------------------------------------


def usable_pfs(
    topo: HostTopology, spec: Spec, base: Plan, origin: str, vfs: bool, cabled: frozenset[str] | None = None
) -> tuple[PciDevice, ...]:
    """Network PFs the planner would let a new VM have: free whole NICs (`vfs=False`), or SR-IOV
    PFs that may give it VFs (`vfs=True`); the planner's own device checks decide (management
    NIC, bond or bridge member, IOMMU group, VFs already enabled). `cabled`: only the NICs of these
    interface names (a fleet's inventory lists where each host's NICs are cabled)."""
    whole = {d.address for vm in base.vms for d in vm.devices if d.type == "passthrough"}
    vf_pfs = {d.pf for vm in base.vms for d in vm.devices if d.type == "vf"}
    pools = set(resolve_vf_pools(topo, spec.host, origin))
    out = []
    for dev in topo.pci_devices:
        if not dev.is_network or dev.physfn is not None or dev.address in whole:
            continue
        if cabled is not None and cabled.isdisjoint(dev.interfaces):
            continue
        if vfs and dev.sriov_totalvfs <= 0:
            continue
        if not vfs and (dev.address in vf_pfs or dev.address in pools):
            continue
        probe_vfs = [VfRequest("probe", "probe", 0, (dev,), SriovSpec(pf=(dev.address,)))] if vfs else []
        probe_whole = [] if vfs else [ResolvedNic("probe", "probe", dev)]
        try:
            check_nics(topo, probe_whole, probe_vfs, spec.host, origin)
        except PlanError:
            continue
        out.append(dev)
    return tuple(out)


def _in_turn(devices: Sequence[PciDevice], avoid: set[str]) -> tuple[str, ...]:
    """PCI addresses taking one NIC of each NUMA node in turn (nodes ascending, unknown last);
    NICs named in `avoid` (by address or interface) after all the others."""

    def spread(group: Sequence[PciDevice]) -> list[str]:
        by_node: dict[int, list[PciDevice]] = defaultdict(list)
        for dev in group:
            by_node[dev.numa_node if dev.numa_node is not None else 1 << 20].append(dev)
        queues = [by_node[node] for node in sorted(by_node)]
        return [q[i].address for i in range(max((len(q) for q in queues), default=0)) for q in queues if i < len(q)]

    avoided = [dev for dev in devices if dev.address in avoid or avoid & set(dev.interfaces)]
    return tuple(spread([dev for dev in devices if dev not in avoided]) + spread(avoided))


# --- the count search -------------------------------------------------------------------


@dataclass(frozen=True)
class _Shortage:
    """Copies that cannot even be written down: they need NICs the host has none left of."""

    resource: str  # WHOLE_NICS or VFS
    text: str


@dataclass(frozen=True)
class _Host:
    """What every question about one host shares: the host, the spec, the slices kept."""

    topo: HostTopology
    spec: Spec
    keep: tuple[VmPlan, ...]
    origin: str
    whole_nics: tuple[str, ...]  # free whole NICs, in the order copies take them
    vf_nics: tuple[str, ...]  # SR-IOV NICs a copy may take VFs of

    def copies(self, templates: Sequence[Template], n: int, node: int | None = None) -> list[VmSpec] | _Shortage:
        """n copies of each template, named <name>+1 ..., pinned to `node` when given."""
        needed = n * sum(len(t.any_pt) for t in templates)
        if needed > len(self.whole_nics):
            names = f" ({', '.join(self._names(self.whole_nics))})" if self.whole_nics else ""
            return _Shortage(
                WHOLE_NICS,
                f"{n} more need {needed} free whole NICs; the host can pass through {len(self.whole_nics)} more{names}",
            )
        whole = set(self.whole_nics[:needed])
        vf_nics = tuple(pf for pf in self.vf_nics if pf not in whole)
        if n and not vf_nics and any(t.any_vf for t in templates):
            return _Shortage(VFS, f"{n} more need VFs, and no SR-IOV NIC is left that a VM may take VFs of")
        out, taken = [], 0
        for i in range(1, n + 1):
            for t in templates:
                nics = list(t.vm.nics)
                for j, nic in enumerate(nics):
                    if j in t.any_pt:
                        nics[j] = NicSpec(passthrough=self.whole_nics[taken])
                        taken += 1
                    elif nic.sriov is not None:
                        # a PF handed out whole above gives no VF; the planner would refuse the entry
                        pfs = (
                            vf_nics
                            if j in t.any_vf
                            else tuple(p for p in nic.sriov.pf if self._address(p) not in whole)
                        )
                        nics[j] = structs.replace(nic, sriov=structs.replace(nic.sriov, pf=pfs or nic.sriov.pf))
                out.append(structs.replace(t.vm, name=f"{t.vm.name}+{i}", nics=tuple(nics), numa_node=node))
        return out

    def _address(self, ref: str) -> str:
        dev = self.topo.pci(ref) if ":" in ref else self.topo.pci_by_interface(ref)
        return dev.address if dev is not None else ref

    def _names(self, addresses: Sequence[str]) -> list[str]:
        out = []
        for address in addresses:
            dev = self.topo.pci(address)
            out.append(",".join(dev.interfaces) if dev is not None and dev.interfaces else address)
        return out

    def plan(self, vms: Sequence[VmSpec], topo: HostTopology | None = None, spec: Spec | None = None) -> Plan | str:
        """The planner's plan of the spec plus `vms` with every slice kept, or its refusal."""
        host = (spec or self.spec).host
        try:
            return make_plan(topo or self.topo, Spec(host=host, vms=(*self.spec.vms, *vms)), self.origin, self.keep)
        except PlanError as exc:
            return str(exc)

    def attempt(self, templates: Sequence[Template], n: int, node: int | None = None) -> Plan | str:
        copies = self.copies(templates, n, node)
        return copies.text if isinstance(copies, _Shortage) else self.plan(copies)


def largest(attempt: Callable[[int], T | str], base: T, bound: int) -> tuple[int, T, str]:
    """The largest n that `attempt` accepts (a result, else the refusal text), its result, and the
    refusal of n + 1; `base` is the result for 0. Acceptance must be monotone (n + 1 accepted means
    n is), as the planner's is. `bound` is where the search starts: the bound + 1 is asked first, and
    a bound found loose is passed by doubling."""
    good, good_plan = 0, base
    bad, refusal = bound + 1, ""
    while True:
        result = attempt(bad)
        if isinstance(result, str):
            refusal = result
            break
        good, good_plan, bad = bad, result, 2 * bad  # the bound was loose
    while bad - good > 1:
        mid = (good + bad) // 2
        result = attempt(mid)
        if isinstance(result, str):
            bad, refusal = mid, result
        else:
            good, good_plan = mid, result
    return good, good_plan, refusal


def _bound(host: _Host, templates: Sequence[Template], free: Sequence[NodeRoom]) -> int:
    """At most this many more fit: whole cores, memory and free whole NICs each say so."""
    cores = sum(n.cores for n in free)
    memory = sum(n.memory_mib for n in free)
    least_cores = sum(t.vm.vcpus // 2 + t.vm.vcpus % 2 for t in templates)  # a pair on one SMT core
    need_memory = sum(t.vm.memory for t in templates)
    bound = min(cores // max(least_cores, 1), memory // max(need_memory, 1))
    nics = sum(len(t.any_pt) for t in templates)
    if nics:
        bound = min(bound, len(host.whole_nics) // nics)
    return max(bound, 0)


# --- what runs out first ----------------------------------------------------------------


def _with_more_cores(topo: HostTopology, per_node: int) -> HostTopology:
    """`topo` with `per_node` more free cores on every node with CPUs (numbered above its CPUs)."""
    next_id = max((c.id for c in topo.cpus), default=-1) + 1
    threads = 2 if topo.smt else 1
    cpus = list(topo.cpus)
    nodes = []
    for node in topo.numa_nodes:
        if not node.cpus:
            nodes.append(node)
            continue
        package = next(c.package for c in topo.cpus if c.node == node.id)
        added = []
        for k in range(per_node):
            ids = CpuSet.from_iter(range(next_id, next_id + threads))
            next_id += threads
            added += [Cpu(i, package, 1_000_000 + next_id + k, node.id, ids) for i in ids]
        cpus += added
        nodes.append(replace(node, cpus=node.cpus | CpuSet.from_iter(c.id for c in added)))
    return replace(topo, cpus=tuple(cpus), numa_nodes=tuple(nodes))


def _with_more_memory(topo: HostTopology, per_node: int) -> HostTopology:
    return replace(topo, numa_nodes=tuple(replace(n, memory_mib=n.memory_mib + per_node) for n in topo.numa_nodes))


def _limits(host: _Host, templates: Sequence[Template], n: int) -> tuple[str, ...]:
    """Resources of which more would let `n` copies fit, each tried alone with the planner; where
    only more of two together would, one entry names both ("whole NICs and cores")."""
    copies = host.copies(templates, n)
    if not isinstance(copies, _Shortage):
        return _reliefs(host, templates, copies)
    # Too few NICs to write the copies down: would they fit with NICs to spare?
    bare = [_without_nics(t, t.any_pt if copies.resource == WHOLE_NICS else t.any_vf) for t in templates]
    bare_copies = host.copies(bare, n)
    if isinstance(bare_copies, _Shortage):
        return (f"{copies.resource} and {bare_copies.resource}",)
    if not isinstance(host.plan(bare_copies), str):
        return (copies.resource,)
    return tuple(f"{copies.resource} and {other}" for other in _reliefs(host, bare, bare_copies))


def _without_nics(t: Template, dropped: frozenset[int]) -> Template:
    """`t` without the NIC entries at `dropped`, the others' indexes renumbered."""
    kept = [i for i in range(len(t.vm.nics)) if i not in dropped]
    vm = structs.replace(t.vm, nics=tuple(t.vm.nics[i] for i in kept))
    return Template(
        vm,
        frozenset(new for new, old in enumerate(kept) if old in t.any_pt),
        frozenset(new for new, old in enumerate(kept) if old in t.any_vf),
    )


def _reliefs(host: _Host, templates: Sequence[Template], copies: Sequence[VmSpec]) -> tuple[str, ...]:
    cores = sum(t.cores_at_most for t in templates)
    memory = sum(t.vm.memory for t in templates)

    def without(kind: str) -> list[VmSpec]:
        def keep(nic: NicSpec) -> bool:
            return (nic.passthrough is None) if kind == "pt" else (nic.sriov is None)

        return [structs.replace(vm, nics=tuple(x for x in vm.nics if keep(x))) for vm in copies]

    tries: list[tuple[str, Callable[[], Plan | str]]] = [
        (CORES, lambda: host.plan(copies, _with_more_cores(host.topo, cores))),
        (MEMORY, lambda: host.plan(copies, _with_more_memory(host.topo, memory))),
    ]
    if any(nic.passthrough is not None for vm in copies for nic in vm.nics):
        tries.append((WHOLE_NICS, lambda: host.plan(without("pt"))))
    if any(nic.sriov is not None for vm in copies for nic in vm.nics):
        tries.append((VFS, lambda: host.plan(without("vf"))))
    if host.spec.host.nic_numa_policy is NicNumaPolicy.REQUIRE:
        loose = structs.replace(host.spec, host=structs.replace(host.spec.host, nic_numa_policy=NicNumaPolicy.PREFER))
        tries.append((LOCALITY, lambda: host.plan(copies, spec=loose)))
    found = tuple(name for name, attempt in tries if not isinstance(attempt(), str))
    if found:
        return found
    both = host.plan(copies, _with_more_memory(_with_more_cores(host.topo, cores), memory))
    return (f"{CORES} and {MEMORY} together",) if not isinstance(both, str) else ()


# --- the answer -------------------------------------------------------------------------


def node_free(topo: HostTopology, spec: Spec, plan: Plan) -> tuple[NodeRoom, ...]:
    """Free whole cores and memory of each node with CPUs after the host's share and `plan`'s VMs."""
    taken = CpuSet.union(c.cpus for c in reserved_cores(topo, spec.host)) | CpuSet.union(
        vm.owned_cpus for vm in plan.vms
    )
    used: dict[int, int] = defaultdict(int)
    for vm in plan.vms:
        for node, mib in vm.memory_by_node().items():
            used[node] += mib
    return tuple(
        NodeRoom(
            node.id,
            sum(1 for c in topo.cores if c.node == node.id and c.cpus.isdisjoint(taken)),
            max(node.memory_mib - spec.host.reserved_memory_per_node - used[node.id], 0),
        )
        for node in sorted(topo.numa_nodes, key=lambda n: n.id)
        if node.cpus
    )


def _pages(topo: HostTopology, vms: Sequence[VmPlan]) -> tuple[PagesNeed, ...]:
    pages: dict[tuple[int, int], int] = defaultdict(int)
    for vm in vms:
        if vm.hugepage_kib:
            for node, mib in vm.memory_by_node().items():
                pages[(node, vm.hugepage_kib)] += mib * 1024 // vm.hugepage_kib
    return tuple(
        PagesNeed(node, size, count, topo.node(node).hugepages_of(size).free)
        for (node, size), count in sorted(pages.items())
    )


def _shape_room(host: _Host, shape: Shape, base: Plan, free: Sequence[NodeRoom]) -> ShapeRoom:
    more, plan, refusal = largest(lambda n: host.attempt(shape.templates, n), base, _bound(host, shape.templates, free))
    names = {f"{t.vm.name}+{i}" for t in shape.templates for i in range(1, more + 1)}
    vms = tuple(vm for vm in plan.vms if vm.name in names)
    return ShapeRoom(shape.name, more, vms, refusal, _limits(host, shape.templates, more + 1), _pages(host.topo, vms))


def _node_fits(host: _Host, shapes: Sequence[Shape], base: Plan, free: NodeRoom) -> tuple[tuple[str, int], ...]:
    out = []
    for shape in shapes:
        if shape.name == MIX or any(t.vm.numa_nodes > 1 for t in shape.templates):
            continue  # a node's room is for VMs that live on one node
        bound = _bound(host, shape.templates, [free])
        if bound == 0:  # the node lacks the cores or memory of even one: no need to ask the planner
            out.append((shape.name, 0))
            continue
        templates = shape.templates

        def attempt(n: int, templates: tuple[Template, ...] = templates) -> Plan | str:
            return host.attempt(templates, n, free.node)

        out.append((shape.name, largest(attempt, base, bound)[0]))
    return tuple(out)


def free_room(
    topo: HostTopology,
    spec: Spec,
    base: Plan,
    shapes: Sequence[Shape],
    origin: str,
    per_node: bool = False,
    cabled: frozenset[str] | None = None,
) -> Room:
    """How many more of each shape fit beside every VM of `base` (kept where they are): the
    planner's answer, with where the copies go and what runs out first; `per_node`: also how
    many of each one-node shape each node takes alone; `cabled`: copies take only these NICs."""
    vf_nics = tuple(dev.address for dev in usable_pfs(topo, spec, base, origin, vfs=True, cabled=cabled))
    named = {ref for shape in shapes for t in shape.templates for nic in t.vm.nics if nic.sriov for ref in nic.sriov.pf}
    # Whole NICs a VF entry may use go last: handed out whole they could give it no VF.
    whole = _in_turn(usable_pfs(topo, spec, base, origin, vfs=False, cabled=cabled), avoid={*vf_nics, *named})
    host = _Host(topo, spec, base.vms, origin, whole, vf_nics)
    free = node_free(topo, spec, base)
    rooms = tuple(_shape_room(host, shape, base, free) for shape in shapes)
    nodes = tuple(replace(node, fits=_node_fits(host, shapes, base, node)) for node in free) if per_node else free
    return Room(rooms, nodes)


def room_to_dict(room: Room) -> dict[str, Any]:
    """The JSON form printed by `bmslice capacity --json`."""
    return {
        "nodes": [
            {"node": n.node, "free_cores": n.cores, "free_memory_mib": n.memory_mib, "fits": dict(n.fits)}
            for n in room.nodes
        ],
        "shapes": [
            {
                "shape": r.shape,
                "more": r.more,
                "runs_out_first": list(r.limits),
                "next_refused": r.refusal,
                "vms": [
                    {
                        "name": vm.name,
                        "numa_nodes": list(vm.numa_nodes),
                        "l3_domains": list(vm.l3_domains),
                        "cores": [core.sorted() for core in vm.cores],
                        "nics": [device_text(d) for d in vm.devices],
                    }
                    for vm in r.vms
                ],
                "hugepages": [
                    {"node": p.node, "size_kib": p.size_kib, "pages": p.pages, "free": p.free} for p in r.hugepages
                ],
            }
            for r in room.shapes
        ],
    }


def device_text(dev: DeviceAssignment) -> str:
    """ "eno1 (passthrough)", "VF 3 of eno2 (VLAN 200)" """
    if dev.type == "vf":
        vlan = f"VLAN {dev.vlan}" if dev.vlan else "untagged"
        return f"VF {dev.vf_index} of {dev.interface or dev.pf} ({vlan})"
    return f"{dev.interface or dev.address} (passthrough)"
