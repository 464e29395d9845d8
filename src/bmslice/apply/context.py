"""What apply, verify, status and destroy share: the connection, the host, the live slices, the plan.

The applied layout is read back from the live domains themselves (each carries the plan
it was rendered from in its bmslice metadata), so re-planning keeps running slices where
they are without a state file that could disagree with libvirt. A slice whose metadata does
not read back (hand-edited, truncated, another version's) is *held*: reported once, kept
out of the plan, and what libvirt says it holds (CPUs, devices, memory) goes to nobody else
until `destroy` removes it; work on the other slices goes on beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree
from msgspec import structs

from bmslice.apply.libvirt_conn import managed_domains
from bmslice.apply.uri import is_local as is_local  # re-exported: callers ask context for it
from bmslice.cpuset import CpuSet
from bmslice.model.live import HeldSlice, LiveDomain
from bmslice.model.plan import Plan, VmPlan
from bmslice.model.recorded import RecordError, recorded_vm
from bmslice.model.spec import Spec
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan, slice_changes
from bmslice.render.domain_model import BMSLICE_NS, Domain
from bmslice.render.domain_xml import from_xml, slice_metadata
from bmslice.safe_text import shown


@dataclass
class Context:
    conn: Any
    uri: str
    topology: HostTopology
    live: dict[str, LiveDomain]  # every slice on the host, readable or not
    recorded: dict[str, VmPlan]  # the plan each live slice was applied with
    plan: Plan  # the spec's slices but the held ones
    moving: tuple[str, ...]  # slices whose spec changed so that they must move (--allow-move)
    held: dict[str, HeldSlice] = field(default_factory=dict)  # slices whose recorded plan is unreadable


def discover(uri: str, host_root: Path | None) -> HostTopology:
    """A local host is read from sysfs (it knows more than libvirt); a remote one through libvirt."""
    if host_root is not None:
        from bmslice.topology.sysfs import read_host_tree

        return read_host_tree(host_root)
    if is_local(uri):
        from bmslice.topology.netlink import with_live_network
        from bmslice.topology.sysfs import read_host_tree

        return with_live_network(read_host_tree(Path("/")))
    from bmslice.apply.connection import read_libvirt_topology

    return read_libvirt_topology(uri)


def recorded_plan(live: LiveDomain, topo: HostTopology, used_mib: dict[int, int] | None = None) -> VmPlan:
    """The plan `live` was applied with, read from its bmslice metadata; RecordError says why not."""
    meta = slice_metadata(live.inactive_xml)
    if meta is None:
        raise RecordError("there is none")
    if meta.namespace != BMSLICE_NS:
        raise RecordError(
            f"written by another bmslice version (namespace {shown(meta.namespace, 80)}; this one reads {BMSLICE_NS})"
        )
    if meta.copies > 1:
        raise RecordError(f"{meta.copies} bmslice metadata elements where bmslice writes one")
    if meta.elements:
        raise RecordError("XML elements where bmslice writes the plan's JSON")
    vm = recorded_vm(meta.text)
    if vm.name != live.name:
        raise RecordError(f"it records the plan of {vm.name}, not of this domain")
    if offline := vm.owned_cpus - topo.online_cpus:
        raise RecordError(f"its plan names CPUs {offline}, which this host does not have online")
    _check_memory(vm, topo, used_mib or {})
    return vm


def _check_memory(vm: VmPlan, topo: HostTopology, used_mib: dict[int, int]) -> None:
    """The record's memory fits its nodes beside the records read before it (`used_mib`, per node)."""
    nodes = {node.id: node.memory_mib for node in topo.numa_nodes}
    for node, mib in sorted(vm.memory_by_node().items()):
        if node not in nodes:
            raise RecordError(f"its plan puts memory on NUMA node {node}, which this host does not have")
        if used_mib.get(node, 0) + mib > nodes[node]:
            others = f" ({used_mib[node]} MiB of it in other slices' plans)" if used_mib.get(node) else ""
            raise RecordError(f"its plan puts {mib} MiB on NUMA node {node}, which has {nodes[node]} MiB{others}")


def _memory_by_node(dom: Domain) -> tuple[tuple[int, int], ...]:
    """Where libvirt binds the domain's memory: per guest cell, else spread over <numatune>'s nodes."""
    if dom.cells and all(cell.host_node >= 0 for cell in dom.cells):
        return tuple((cell.host_node, cell.memory_kib // 1024) for cell in dom.cells)
    nodes = dom.numa_nodeset.sorted() if dom.numa_nodeset else []
    return tuple((node, dom.memory_kib // 1024 // len(nodes)) for node in nodes)


def held_slice(live: LiveDomain, why: str, host_cpus: CpuSet) -> HeldSlice:
    """What libvirt says an unreadable slice holds: its pins (libvirt's pin info, else its XML's),
    every host CPU where a vCPU is not pinned, its hostdevs and VFs, its bound memory."""
    try:
        dom: Domain | None = from_xml(live.xml)
    except (ValueError, etree.XMLSyntaxError):  # libvirt's own XML: not expected, and then all is held
        dom = None
    pins = [*live.vcpu_pins, *([live.emulator_pin] if live.emulator_pin is not None else [])]
    pins += [cpus for _, cpus in live.iothread_pins]
    if not live.vcpu_pins and dom is not None:  # a driver without pin info: the definition says
        pins += [cpus for _, cpus in dom.vcpupins] + [cpus for _, cpus in dom.iothreadpins]
        pins += [dom.emulatorpin] if dom.emulatorpin is not None else []
    unpinned = dom is None or (not live.vcpu_pins and len(dom.vcpupins) < dom.vcpus)
    cpus = host_cpus if unpinned else CpuSet.union(pins)
    if dom is None:
        return HeldSlice(live.name, why, cpus)
    devices = (*dom.hostdevs, *(vf.address for vf in dom.vf_interfaces if vf.address is not None))
    return HeldSlice(live.name, why, cpus, tuple(sorted(set(devices))), _memory_by_node(dom))


@dataclass(frozen=True)
class Slices:
    """The host's slices as their metadata reads back: planned (recorded) or held (unreadable)."""

    live: dict[str, LiveDomain]
    recorded: dict[str, VmPlan]
    held: dict[str, HeldSlice]


def read_slices(conn: Any, topo: HostTopology) -> Slices:
    """Each slice's record, or why it is held: unreadable, or naming CPUs or memory the host lacks or
    another record has (the planner could keep neither; held, the others go on)."""
    live = managed_domains(conn)
    recorded: dict[str, VmPlan] = {}
    held: dict[str, HeldSlice] = {}
    used_mib: dict[int, int] = {}
    for name, dom in sorted(live.items()):
        try:
            vm = recorded_plan(dom, topo, used_mib)
            if clash := next((o for o in recorded.values() if not o.owned_cpus.isdisjoint(vm.owned_cpus)), None):
                shared = clash.owned_cpus & vm.owned_cpus
                raise RecordError(f"its plan names CPUs {shared}, which the plan of {clash.name} names too")
            recorded[name] = vm
            for node, mib in vm.memory_by_node().items():
                used_mib[node] = used_mib.get(node, 0) + mib
        except RecordError as exc:
            held[name] = held_slice(dom, str(exc), topo.online_cpus)
    return Slices(live, recorded, held)


def held_line(held: HeldSlice) -> str:
    """The one line every command gives a held slice it is not asked about."""
    return (
        f"{held.name}: its bmslice metadata is unreadable ({held.why}); left as it is, and its {held.holds} "
        "go to no other slice until `bmslice destroy SPEC --vm NAME` removes it"
    )


def held_in_spec(held: HeldSlice, origin: str) -> str:
    """What apply refuses with and verify reports for a held slice that the spec names."""
    return (
        f"{held.name}: its bmslice metadata is unreadable ({held.why}); `bmslice destroy {origin} --vm {held.name}` "
        "removes it (volumes bmslice did not mark stay), then apply again"
    )


def foreign_domain(name: str) -> str:
    """What every command says of a domain that has a slice's name but no bmslice metadata."""
    return (
        f"a domain named {name} already exists and bmslice did not define it (it carries no bmslice metadata); "
        "bmslice does not take over another's domain"
    )


def held_warnings(ctx: Context) -> list[str]:
    return [held_line(held) for held in ctx.held.values()]


def load_context(
    spec: Spec,
    origin: str,
    uri: str,
    conn: Any,
    host_root: Path | None,
    allow_move: bool,
    topology: HostTopology | None = None,
) -> Context:
    """Everything read about the host through `conn` (the caller's, open for the whole run);
    `topology`: the host as the caller already read it (the exporter reads it once).

    A held slice the spec names is not planned (its CPUs and devices are held, not free);
    verify reports it, apply refuses it. Planner messages then count the spec's other VMs
    from 0 (vms[N]) as if it were not there.
    """
    topology = topology or discover(uri, host_root)
    slices = read_slices(conn, topology)
    recorded = slices.recorded
    names = {vm.name for vm in spec.vms}
    moving = tuple(name for name, old in recorded.items() if name in names and slice_changes(old, spec.vm(name)))
    keep = [old for name, old in recorded.items() if not (allow_move and name in moving)]
    planned = structs.replace(spec, vms=tuple(vm for vm in spec.vms if vm.name not in slices.held))
    plan = make_plan(topology, planned, origin=origin, keep=keep, held=tuple(slices.held.values()))
    return Context(conn, uri, topology, slices.live, recorded, plan, moving if allow_move else (), slices.held)
