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
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class OLayout:
    """One valid layout: VM name -> (node, vCPU cores, emulator core or None)."""

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
            dev = next(
                (d for d in topo.pci_devices if (d.address == ref if ":" in ref else ref in d.interfaces)),
                None,
            )
            assert dev is not None, f"oracle cases name only existing NICs, not {ref!r}"
            nic_nodes.append(dev.numa_node)
        out.append(OVm(vm.name, vm.vcpus, vm.emulator.value == "dedicated", vm.memory, vm.numa_node, tuple(nic_nodes)))
    return out


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


def best_layout(topo: HostTopology, spec: Spec) -> OLayout | None:
    """A valid layout with the fewest cross-NUMA NICs, or None when none exists."""
    reserved = reserved_cpus(topo, spec.host.reserved_cores_per_node)
    free = [c for c in physical_cores(topo) if c.cpus.isdisjoint(reserved)]
    node_ids = sorted(n.id for n in topo.numa_nodes)
    node_mem = {n.id: n.memory_mib - spec.host.reserved_memory_per_node for n in topo.numa_nodes}
    vms = vms_of(topo, spec)
    strict = spec.host.nic_numa_policy.value == "require"

    def allowed(vm: OVm, node: int) -> bool:
        if vm.numa_node is not None and vm.numa_node != node:
            return False
        return not (strict and any(n is not None and n != node for n in vm.nic_nodes))

    cache: dict[tuple[int, tuple[int, ...]], dict[str, tuple[tuple[OCore, ...], OCore | None]] | None] = {}

    def node_fit(node: int, members: tuple[int, ...]) -> dict[str, tuple[tuple[OCore, ...], OCore | None]] | None:
        key = (node, members)
        if key not in cache:
            group = [vms[k] for k in members]
            if sum(vm.memory_mib for vm in group) > node_mem[node]:
                cache[key] = None
            else:
                cache[key] = _node_layout([c for c in free if c.node == node], group)
        return cache[key]

    best: OLayout | None = None
    for nodes in itertools.product(node_ids, repeat=len(vms)):
        if not all(allowed(vm, node) for vm, node in zip(vms, nodes, strict=True)):
            continue
        layout: dict[str, tuple[int, tuple[OCore, ...], OCore | None]] = {}
        for node in node_ids:
            members = tuple(k for k, n in enumerate(nodes) if n == node)
            fit = node_fit(node, members)
            if fit is None:
                break
            layout.update({name: (node, vc, emu) for name, (vc, emu) in fit.items()})
        else:
            cross = sum(
                1 for vm, node in zip(vms, nodes, strict=True) for n in vm.nic_nodes if n is not None and n != node
            )
            if best is None or cross < best.cross_numa:
                best = OLayout(layout, cross)
    return best
