"""The fleet file: servers (the inventory) and the Kubernetes clusters they host.

Validated strictly at load time like the per-host spec: unknown keys, bad VLANs, duplicate
names, a switch port cabled twice are refused with one line naming the file, the field and
the reason. Paths in the file (host trees, hwloc files, SSH keys, kubeadm join files) are
relative to the fleet file.

The placement (which VM runs on which host and NUMA node, with which NICs) is a value
here too, with a JSON form, so that a later run can keep every placed VM where it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, field
from msgspec.structs import replace

from bmslice.errors import SpecError
from bmslice.model.fields import CanonicalPci, CpuFeature, DeviceRef, IfName, device_ref, matching, text
from bmslice.model.grammar import JUNOS_PORT_RE, libvirt_uri
from bmslice.model.input_file import read_yaml, validated
from bmslice.model.spec import (
    MAX_GUEST_CELLS,
    MAX_NUMA_NODE,
    DiskSpec,
    EmulatorPolicy,
    HostSpec,
    HugepageSize,
    RealtimeSpec,
    SizeMiB,
    Strict,
    check_cells,
    check_realtime,
)

# Host and VM names end up as libvirt domain names, guest hostnames and Kubernetes node
# names: DNS labels (RFC 1123), lower case. Every pattern ends in \Z, not $ (which lets a
# trailing newline through into names, file names and Junos lines).
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?\Z")  # also a label value
CLUSTER_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,22}[a-z0-9])?\Z")
PREFIX_RE = re.compile(r"^([a-z0-9][a-z0-9-]{0,30})?\Z")
JUNOS_VLAN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}\Z")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?\Z")  # a Kubernetes label value
ANY = "any"


class Role(StrEnum):
    CONTROL = "control"
    WORKER = "worker"


class NicKind(StrEnum):
    SRIOV = "sriov"  # `count` VFs of one PF, tagged with the cluster's VLAN by the host
    PASSTHROUGH = "passthrough"  # `count` whole PFs; the switch port carries the VLAN untagged


class JunosStyle(StrEnum):
    """Which Junos configuration style a switch takes for its access and trunk ports."""

    ELS = "els"  # Enhanced Layer 2 Software (EX2300/3400/4300/4650, QFX): `interface-mode`
    LEGACY = "legacy"  # Junos before ELS (EX2200/3300/4200/4500/8200): `port-mode`


class RackSpread(StrEnum):
    SPREAD = "spread"  # spread a cluster's VMs of one role evenly over the racks (fewest squares of rack counts)
    ANY = "any"


class ControlPlanes(StrEnum):
    """Where a cluster's control-plane VMs may run relative to each other."""

    APART = "apart"  # distinct hosts, and distinct racks when the control hosts span enough racks
    ANY = "any"  # stacked if need be (a lab, a cluster that accepts losing its quorum with one server)


def _nic_pf(value: str) -> str:
    if value == ANY:
        return value
    try:
        return device_ref(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither 'any', an interface name nor a PCI address") from None


# A switch is named like a host (it names files under fabric/ and an ssh target); a port is a
# Junos physical interface, never a unit: `set interfaces ge-0/0/9.0 unit 0 ...` is no interface.
if TYPE_CHECKING:
    SwitchName = str
    JunosPort = str
    HostName = str
    RackName = str
    LibvirtUri = str
    NicPf = str
    ClusterName = str
    VlanName = str
    VmPrefix = str
else:
    SwitchName = matching("SwitchName", HOST_NAME_RE, "a switch name (letters, digits, '.', '-')")
    JunosPort = matching(
        "JunosPort", JUNOS_PORT_RE, "a Junos physical port such as ge-0/0/9, xe-0/0/1:2 or ae0 (no unit)"
    )
    HostName = matching("HostName", HOST_NAME_RE, "a host name (letters, digits, '.', '-')")
    RackName = matching("RackName", LABEL_VALUE_RE, "a rack name (letters, digits, '-', '_', '.'; max 63)")
    LibvirtUri = text("LibvirtUri", libvirt_uri)
    NicPf = text("NicPf", _nic_pf)
    ClusterName = matching("ClusterName", CLUSTER_NAME_RE, "a cluster name (lower-case letters, digits, '-'; max 24)")
    VlanName = matching("VlanName", JUNOS_VLAN_RE, "a VLAN name (a letter, then letters, digits, '_', '.', '-')")
    VmPrefix = matching("VmPrefix", PREFIX_RE, "a name prefix (lower-case letters, digits, '-')")


class SwitchPort(Strict, frozen=True):
    switch: SwitchName
    port: JunosPort


class SwitchSpec(Strict, frozen=True):
    junos: JunosStyle = JunosStyle.ELS


class InventoryHost(Strict, frozen=True):
    name: HostName
    uri: LibvirtUri
    role: Role
    rack: RackName = "default"
    host_root: Path | None = None  # plan offline from a sysfs/procfs tree of the host
    hwloc: Path | None = None  # or from an `lstopo --of xml` file
    nics: dict[IfName, SwitchPort] = field(default_factory=dict)  # interface -> the switch port it is cabled to
    host: HostSpec = field(default_factory=HostSpec)  # the `host:` section of this server's generated spec

    @property
    def is_local(self) -> bool:
        """The URI names this machine's own libvirtd (qemu:///system, qemu+unix:///system)."""
        parts = urlsplit(self.uri)
        return not parts.netloc and parts.scheme != "test" and parts.scheme.partition("+")[2] in ("", "unix")

    @property
    def runs_here(self) -> bool:
        """bmslice runs for this host where Ansible runs: the host is this machine, or libvirt's
        test driver (test:///...), whose host lives inside the process that opens it."""
        return self.is_local or urlsplit(self.uri).scheme == "test"

    def __post_init__(self) -> None:
        if self.host_root is not None and self.hwloc is not None:
            raise ValueError("give host_root or hwloc, not both")


class NicRequest(Strict, frozen=True):
    kind: NicKind
    pf: NicPf = ANY  # an interface name or PCI address of the host, or "any" cabled NIC
    count: Annotated[int, Meta(ge=1, le=64)] = 1


class VmSize(Strict, frozen=True):
    vcpus: Annotated[int, Meta(gt=0, le=4096)]
    memory: SizeMiB
    # as in the host spec: the VM spans this many NUMA nodes of its host, an equal share on each
    numa_nodes: Annotated[int, Meta(ge=1, le=MAX_GUEST_CELLS)] = 1
    emulator: EmulatorPolicy = EmulatorPolicy.DEDICATED
    iothreads: Annotated[int, Meta(ge=0, le=64)] = 1
    hugepages: HugepageSize = HugepageSize.NONE
    realtime: RealtimeSpec | None = None
    disable_cpu_features: tuple[CpuFeature, ...] = ()
    disk: DiskSpec | None = None
    nic: NicRequest | None = None

    def __post_init__(self) -> None:
        check_realtime(self.realtime, self.vcpus, self.hugepages)
        check_cells(self.numa_nodes, None, self.vcpus, self.memory, self.hugepages.kib)


class Workers(VmSize, frozen=True, kw_only=True):
    count: Annotated[int, Meta(ge=0, le=100000)]


class Spread(Strict, frozen=True):
    max_per_host: Annotated[int, Meta(ge=1, le=4096)] = 1  # VMs of one cluster and role on one host
    racks: RackSpread = RackSpread.SPREAD
    control_planes: ControlPlanes = ControlPlanes.APART


class Cluster(Strict, frozen=True, kw_only=True):
    name: ClusterName
    vlan: Annotated[int, Meta(ge=1, le=4094)]
    # the switch's name for the VLAN; default: the cluster name in capitals
    vlan_name: VlanName | None = None
    control_plane: tuple[VmSize, ...] = ()
    workers: Workers
    spread: Spread = field(default_factory=Spread)
    kubeadm_join_file: Path | None = None  # the operator's `kubeadm join ...` line; never read by bmslice

    @property
    def switch_vlan(self) -> str:
        return self.vlan_name or self.name.upper()

    def size(self, role: Role, index: int) -> VmSize:
        """The size of control-plane VM `index` (1-based) or of every worker."""
        return self.control_plane[index - 1] if role is Role.CONTROL else self.workers


class Fleet(Strict, frozen=True):
    inventory: Annotated[tuple[InventoryHost, ...], Meta(min_length=1)]
    clusters: tuple[Cluster, ...] = ()
    # put before every VM name: "<prefix><cluster>-worker-<n>"
    vm_prefix: VmPrefix = ""
    ssh_keys_file: Path | None = None  # public keys for every guest, one a line
    switches: dict[SwitchName, SwitchSpec] = field(default_factory=dict)  # per switch: its Junos style

    def __post_init__(self) -> None:
        _same_server(self.inventory)
        _unique("clusters: duplicate cluster name", [(c.name, c.name) for c in self.clusters])
        _unique("clusters: duplicate VLAN", [(c.vlan, c.name) for c in self.clusters])
        _unique("clusters: duplicate VLAN name", [(c.switch_vlan, c.name) for c in self.clusters])
        cabled: dict[tuple[str, str], str] = {}
        for host in self.inventory:
            for ifname, port in sorted(host.nics.items()):
                key = (port.switch, port.port)
                if key in cabled:
                    raise ValueError(
                        f"inventory: switch port {port.switch} {port.port} is cabled to both {cabled[key]} and "
                        f"{host.name} {ifname}"
                    )
                cabled[key] = f"{host.name} {ifname}"
        named = {switch for switch, _ in cabled}
        for switch in sorted(self.switches):
            if switch not in named:
                raise ValueError(f"switches: no inventory NIC is cabled to {switch!r}")

    def switch(self, name: str) -> SwitchSpec:
        return self.switches.get(name, SwitchSpec())

    def host(self, name: str) -> InventoryHost:
        return _by_name(self.inventory)[name]

    def cluster(self, name: str) -> Cluster:
        return _by_name(self.clusters)[name]

    def vm_name(self, cluster: str, role: Role, index: int) -> str:
        kind = "control" if role is Role.CONTROL else "worker"
        return f"{self.vm_prefix}{cluster}-{kind}-{index}"

    def vm_requests(self) -> tuple[VmRequest, ...]:
        """Every VM the fleet asks for, in fleet order: per cluster, control plane then workers."""
        out: list[VmRequest] = []
        for cluster in self.clusters:
            for i, size in enumerate(cluster.control_plane, start=1):
                out.append(VmRequest(self.vm_name(cluster.name, Role.CONTROL, i), cluster.name, Role.CONTROL, i, size))
            for i in range(1, cluster.workers.count + 1):
                out.append(
                    VmRequest(self.vm_name(cluster.name, Role.WORKER, i), cluster.name, Role.WORKER, i, cluster.workers)
                )
        for req in out:
            if not DNS_LABEL_RE.fullmatch(req.name):
                raise ValueError(
                    f"VM name {req.name!r} is not a DNS label of at most 63 characters (it is the guest's hostname "
                    "and Kubernetes node name); shorten vm_prefix or the cluster name"
                )
        _unique("duplicate VM name", [(r.name, r.cluster) for r in out])
        return tuple(out)


_Named = TypeVar("_Named", InventoryHost, Cluster)
_INDEX: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}


def _by_name(items: tuple[_Named, ...]) -> dict[str, _Named]:
    """`items` by name, kept for the tuple itself (a fleet of 1,000 servers is asked often; a
    copy with other items is another tuple)."""
    held = _INDEX.get(id(items))
    if held is None or held[0] is not items:
        if len(_INDEX) > 64:
            _INDEX.clear()
        held = _INDEX[id(items)] = (items, {item.name: item for item in items})
    return held[1]


def _uri_key(uri: str) -> tuple[str, str, str, str]:
    """What makes two libvirt URIs one server: case of scheme and host, an empty query, and
    the default /system path do not."""
    parts = urlsplit(uri.strip())
    return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/") or "/system", parts.query


def _same_server(inventory: tuple[InventoryHost, ...]) -> None:
    """Refuse a server named twice: by its name (ignoring case, as DNS does) or by its URI."""
    names: dict[str, InventoryHost] = {}
    uris: dict[tuple[str, str, str, str], InventoryHost] = {}
    for host in inventory:
        first = names.setdefault(host.name.lower(), host)
        if first is not host:
            if first.name == host.name:
                raise ValueError(f"inventory: duplicate host name {host.name!r}")
            raise ValueError(f"inventory: {first.name!r} and {host.name!r} name one host (host names ignore case)")
        first = uris.setdefault(_uri_key(host.uri), host)
        if first is not host:
            raise ValueError(f"inventory: {first.name} and {host.name} are one server: the same URI {host.uri!r}")


def _unique(what: str, values: list[tuple[Any, str]]) -> None:
    """Refuse a value given twice, naming both owners: "duplicate VLAN 200 (red and blue)"."""
    seen: dict[Any, str] = {}
    for value, owner in values:
        if value in seen:
            owners = f" ({seen[value]} and {owner})" if owner != str(value) else ""
            raise ValueError(f"{what} {value!r}{owners}")
        seen[value] = owner


@dataclass(frozen=True)
class VmRequest:
    """One VM the fleet asks for (before placement)."""

    name: str
    cluster: str
    role: Role
    index: int
    size: VmSize


# --- loading ------------------------------------------------------------------------------


def _resolve(fleet: Fleet, base: Path) -> Fleet:
    """Paths in the file are relative to the file: make them absolute once, here."""

    def rel(path: Path | None) -> Path | None:
        return None if path is None else (path if path.is_absolute() else base / path)

    hosts = tuple(replace(h, host_root=rel(h.host_root), hwloc=rel(h.hwloc)) for h in fleet.inventory)
    clusters = tuple(replace(c, kubeadm_join_file=rel(c.kubeadm_join_file)) for c in fleet.clusters)
    return replace(fleet, inventory=hosts, clusters=clusters, ssh_keys_file=rel(fleet.ssh_keys_file))


def fleet_from_data(data: Any, origin: str, base: Path | None = None) -> Fleet:
    """Validate parsed data; errors name `origin`, the field and the reason."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: the fleet file must be a mapping with 'inventory' and 'clusters'")
    fleet = validated(data, Fleet, origin)
    try:
        fleet.vm_requests()
    except ValueError as exc:
        raise SpecError(f"{origin}: {exc}") from None
    return _resolve(fleet, base) if base is not None else fleet


def load_fleet(path: Path) -> Fleet:
    return fleet_from_data(read_yaml(path, "fleet file"), str(path), path.resolve().parent)


# --- the placement ------------------------------------------------------------------------


@dataclass(frozen=True)
class NicAssignment:
    """One NIC entry of a placed VM: a whole PF, or `count` VFs of a PF, on the cluster's VLAN."""

    kind: NicKind
    pf: str  # the PF's interface name (its PCI address when it has none)
    address: str  # the PF's PCI address
    numa_node: int | None
    vlan: int
    count: int = 1


@dataclass(frozen=True)
class PlacedVm:
    name: str
    cluster: str
    role: Role
    index: int
    host: str
    numa_node: int  # a VM over several nodes: the node of its first share (and emulator core)
    nics: tuple[NicAssignment, ...] = ()
    guest_threads: int = 1  # 2 when the guest sees host sibling pairs (planner's guest topology)
    # guest vCPUs grouped by the host core they run on, in vCPU order: ((0, 1), (2,)) for three
    # vCPUs on a sibling pair and a one-thread core; () when not recorded (older placement files)
    guest_cores: tuple[tuple[int, ...], ...] = ()
    # a VM over several NUMA nodes (numa_nodes): every node, in share order, numa_node first;
    # () for a VM on one node
    numa_nodes: tuple[int, ...] = ()

    @property
    def nodes(self) -> tuple[int, ...]:
        """The host nodes the VM uses, its first share's first."""
        return self.numa_nodes or (self.numa_node,)

    @property
    def nodes_text(self) -> str:
        """ "1", or "0,1" for a VM over two nodes."""
        return ",".join(map(str, self.nodes))


@dataclass(frozen=True)
class NodeUsage:
    """One NUMA node of one host after placement, in whole cores and MiB."""

    host: str
    node: int
    cores_free_before: int
    cores_used: int
    memory_free_before: int
    memory_used: int


@dataclass(frozen=True)
class Objective:
    """What the placement minimises, in this order (docs/fleet.md, Placement): VMs of the kept
    placement moved (only with --allow-move), rack spread (the sum over clusters, roles and racks
    of the square of the count of the cluster's VMs of that role in the rack), cross-NUMA NIC
    entries (a passed-through PF or the PF of a VM's VFs on none of the VM's nodes)."""

    moved: int = 0
    rack_spread: int = 0
    cross_numa_nics: int = 0

    def values(self) -> tuple[int, int, int]:
        return (self.moved, self.rack_spread, self.cross_numa_nics)


@dataclass(frozen=True)
class Placement:
    vms: tuple[PlacedVm, ...]
    usage: tuple[NodeUsage, ...] = ()
    notes: tuple[str, ...] = dataclass_field(default=())
    # the objective is proven the least possible (else: the best found within the time budget)
    proven_optimal: bool = False
    moved: tuple[str, ...] = ()  # VMs of the kept placement now on another host or other nodes
    objective: Objective | None = None  # None: not known (a placement file of an older bmslice)
    # the hosts whose share the host planner accepted while placing, with its warnings (not
    # written to placement.json: a placement read back is planned again)
    planned: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def vm(self, name: str) -> PlacedVm:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)

    def on_host(self, host: str) -> tuple[PlacedVm, ...]:
        return tuple(vm for vm in self.vms if vm.host == host)


def placement_to_dict(placement: Placement) -> dict[str, Any]:
    return {
        "vms": [
            {
                "name": vm.name,
                "cluster": vm.cluster,
                "role": vm.role.value,
                "index": vm.index,
                "host": vm.host,
                "numa_node": vm.numa_node,
                **({"numa_nodes": list(vm.numa_nodes)} if vm.numa_nodes else {}),
                "guest_threads": vm.guest_threads,
                "guest_cores": [",".join(str(cpu) for cpu in core) for core in vm.guest_cores],  # ["0,1", "2"]
                "nics": [
                    {
                        "kind": n.kind.value,
                        "pf": n.pf,
                        "address": n.address,
                        "numa_node": n.numa_node,
                        "vlan": n.vlan,
                        "count": n.count,
                    }
                    for n in vm.nics
                ],
            }
            for vm in placement.vms
        ],
        "notes": list(placement.notes),
        "proven_optimal": placement.proven_optimal,
        "moved": list(placement.moved),
        **({"objective": _objective_dict(placement.objective)} if placement.objective is not None else {}),
    }


def _objective_dict(objective: Objective) -> dict[str, int]:
    return {
        "moved": objective.moved,
        "rack_spread": objective.rack_spread,
        "cross_numa_nics": objective.cross_numa_nics,
    }


# A placement file is bmslice's own output read back: every name in it goes through the same
# grammar as in the fleet file, so a VM name with a newline cannot start a line of a summary,
# a spec or a Junos description, and every number is a strict integer in its range.
NodeId = Annotated[int, Meta(ge=0, le=MAX_NUMA_NODE)]
GUEST_CORE_RE = re.compile(r"[0-9]{1,4}(?:,[0-9]{1,4})*")  # one host core's guest vCPUs: "0,1"
if TYPE_CHECKING:
    PlacedName = str
    ClusterRef = str
    HostRef = str
    GuestCore = str
else:
    PlacedName = matching("PlacedName", DNS_LABEL_RE, "a VM name (a DNS label)")
    ClusterRef = matching("ClusterRef", CLUSTER_NAME_RE, "a cluster name")
    HostRef = matching("HostRef", HOST_NAME_RE, "a host name")
    GuestCore = matching("GuestCore", GUEST_CORE_RE, "guest vCPUs like '0,1'")


class _NicIn(Strict, frozen=True, kw_only=True):
    kind: NicKind
    pf: DeviceRef
    address: CanonicalPci
    numa_node: NodeId | None = None
    vlan: Annotated[int, Meta(ge=1, le=4094)]
    count: Annotated[int, Meta(ge=1, le=64)] = 1


class _PlacedIn(Strict, frozen=True):
    name: PlacedName
    cluster: ClusterRef
    role: Role
    index: Annotated[int, Meta(ge=1, le=100000)]
    host: HostRef
    numa_node: NodeId
    numa_nodes: Annotated[tuple[NodeId, ...], Meta(max_length=MAX_GUEST_CELLS)] = ()
    guest_threads: Annotated[int, Meta(ge=1, le=2)] = 1
    guest_cores: tuple[GuestCore, ...] = ()
    nics: tuple[_NicIn, ...] = ()


class _ObjectiveIn(Strict, frozen=True):
    moved: Annotated[int, Meta(ge=0)]
    rack_spread: Annotated[int, Meta(ge=0)]
    cross_numa_nics: Annotated[int, Meta(ge=0)]


class _PlacementIn(Strict, frozen=True):
    vms: tuple[_PlacedIn, ...]
    notes: tuple[str, ...] = ()  # written for people; a later run makes its own
    # the quality of the placement as it was written (absent from files of an older bmslice)
    proven_optimal: bool = False
    moved: tuple[PlacedName, ...] = ()
    objective: _ObjectiveIn | None = None


def placement_from_dict(data: Any, origin: str) -> Placement:
    """Read a placement written by `placement_to_dict`; a malformed one is refused, not guessed at."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: not a bmslice placement (a JSON object with 'vms')")
    read = validated(data, _PlacementIn, origin)
    vms = tuple(
        PlacedVm(
            name=vm.name,
            cluster=vm.cluster,
            role=vm.role,
            index=vm.index,
            host=vm.host,
            numa_node=vm.numa_node,
            numa_nodes=vm.numa_nodes,
            guest_threads=vm.guest_threads,
            guest_cores=tuple(tuple(int(cpu) for cpu in core.split(",")) for core in vm.guest_cores),
            nics=tuple(NicAssignment(n.kind, n.pf, n.address, n.numa_node, n.vlan, n.count) for n in vm.nics),
        )
        for vm in read.vms
    )
    # absent from files of an older bmslice
    objective = None if read.objective is None else Objective(**msgspec.structs.asdict(read.objective))
    seen: set[str] = set()
    for vm in vms:
        spans = vm.numa_nodes
        if spans and (spans[0] != vm.numa_node or len(set(spans)) != len(spans) or len(spans) < 2):
            raise SpecError(
                f"{origin}: VM {vm.name!r}: numa_nodes {list(vm.numa_nodes)} must be two or more distinct nodes, "
                f"numa_node ({vm.numa_node}) first"
            )
        if vm.name in seen:
            raise SpecError(f"{origin}: VM {vm.name!r} is placed twice; a VM has one place (keep one entry)")
        seen.add(vm.name)
    return Placement(vms, proven_optimal=read.proven_optimal, moved=read.moved, objective=objective)


__all__ = [
    "ANY",
    "Cluster",
    "ControlPlanes",
    "Fleet",
    "InventoryHost",
    "JunosStyle",
    "NicAssignment",
    "NicKind",
    "NicRequest",
    "NodeUsage",
    "Objective",
    "PlacedVm",
    "Placement",
    "RackSpread",
    "Role",
    "Spread",
    "SwitchPort",
    "SwitchSpec",
    "VmRequest",
    "VmSize",
    "Workers",
    "fleet_from_data",
    "load_fleet",
    "placement_from_dict",
    "placement_to_dict",
]
