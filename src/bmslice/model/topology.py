"""The host as bmslice sees it: one typed, frozen model whatever the source.

Every reader (sysfs tree, libvirt capabilities + node devices, hwloc XML) returns a
`HostTopology`; the planner only ever sees this model. OS CPU numbers are kept as the
kernel gives them: no logical renumbering.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bmslice.cpuset import CpuSet
from bmslice.model.distro import Distro, distro_of

NETWORK_CLASS_PREFIX = "0x02"
BRIDGE_CLASS_PREFIX = "0x0604"


# domain:bus:slot.function; the slot is 5 bits (0x00-0x1f): libvirt refuses slot 0x20 in a domain's XML
_PCI_ADDRESS = re.compile(r"^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([01][0-9a-fA-F])\.([0-7])$")


def canonical_pci_address(text: str) -> str | None:
    """Canonical form of a PCI address, None for anything else.

    >>> canonical_pci_address("01:00.0"), canonical_pci_address("0000:AF:00.1"), canonical_pci_address("eno1")
    ('0000:01:00.0', '0000:af:00.1', None)
    """
    match = _PCI_ADDRESS.fullmatch(text)  # the whole text: "01:00.0\n" is not an address
    if not match:
        return None
    domain, bus, slot, function = match.groups()
    return f"{int(domain or '0', 16):04x}:{bus.lower()}:{slot.lower()}.{function}"


def nodedev_name(address: str) -> str:
    """Node device name as libvirt spells a PCI address: 0000:01:00.0 -> pci_0000_01_00_0."""
    return "pci_" + address.replace(":", "_").replace(".", "_")


@dataclass(frozen=True)
class Cpu:
    id: int
    package: int
    core: int
    node: int | None
    siblings: CpuSet
    online: bool = True
    die: int = 0


@dataclass(frozen=True)
class Hugepages:
    size_kib: int
    total: int
    free: int


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: CpuSet
    memory_mib: int
    free_mib: int | None = None
    hugepages: tuple[Hugepages, ...] = ()
    distances: tuple[int, ...] = ()

    def hugepages_of(self, size_kib: int) -> Hugepages:
        for pages in self.hugepages:
            if pages.size_kib == size_kib:
                return pages
        return Hugepages(size_kib, 0, 0)


@dataclass(frozen=True)
class NetInterface:
    """A kernel network interface; `master` is the bond or bridge it is enslaved to."""

    name: str
    pci_address: str | None = None
    mac: str | None = None
    master: str | None = None
    master_kind: str | None = None  # "bond" | "bridge" | None


@dataclass(frozen=True)
class PciDevice:
    address: str  # canonical "0000:01:00.0"
    class_code: str  # "0x020000"
    vendor: str  # "0x8086"
    device: str  # "0x1528"
    numa_node: int | None
    iommu_group: int | None
    driver: str | None
    interfaces: tuple[str, ...] = ()
    sriov_totalvfs: int = 0
    sriov_numvfs: int = 0
    sriov_offset: int | None = None  # First VF Offset and VF Stride (PCI SR-IOV capability)
    sriov_stride: int | None = None
    physfn: str | None = None
    virtfns: tuple[str, ...] = ()
    description: str | None = None

    @property
    def is_network(self) -> bool:
        return self.class_code.startswith(NETWORK_CLASS_PREFIX)

    @property
    def is_bridge(self) -> bool:
        return self.class_code.startswith(BRIDGE_CLASS_PREFIX)

    @property
    def libvirt_name(self) -> str:
        return nodedev_name(self.address)


@dataclass(frozen=True)
class VfState:
    """A VF's settings as its PF's driver reports them (netlink; live hosts only)."""

    pf_interface: str
    index: int
    mac: str | None  # None: unset (all zeros)
    vlan: int | None  # None: untagged
    trust: bool | None = None  # None: the driver did not say
    spoofchk: bool | None = None


@dataclass(frozen=True)
class Core:
    """One physical core: its online hardware threads, all on one NUMA node."""

    cpus: CpuSet
    package: int
    node: int

    @property
    def first(self) -> int:
        return self.cpus.min()

    @property
    def threads(self) -> int:
        return len(self.cpus)


@dataclass(frozen=True)
class CacheDomain:
    """One last-level (L3) cache instance and the CPUs sharing it.

    `id` is the kernel's cache id: the one resctrl's schemata, libvirt's `<cache id=...>` and
    `<memorytune><node id=...>` name. On AMD EPYC each CCX (Zen 2) or CCD (Zen 3/4) has its
    own, so a NUMA node holds several; on most Intel servers one spans a socket.
    """

    id: int
    cpus: CpuSet
    size_kib: int
    node: int | None = None  # the NUMA node of its CPUs; None when they span several
    level: int = 3


@dataclass(frozen=True)
class ResctrlL3:
    """/sys/fs/resctrl/info/L3: cache allocation (Intel CAT, AMD L3 QoS)."""

    cbm_mask: int  # every way, e.g. 0x7ff for 11 ways
    min_cbm_bits: int
    num_closids: int
    shareable_bits: int = 0

    @property
    def ways(self) -> int:
        return self.cbm_mask.bit_count()


@dataclass(frozen=True)
class ResctrlMb:
    """/sys/fs/resctrl/info/MB: memory bandwidth allocation.

    `percent` is False where the schemata value is not a percentage: AMD takes absolute
    limits (multiples of 1/8 GB/s, 2048 = unlimited) and the mba_MBps mount option MBps.
    """

    bandwidth_gran: int
    min_bandwidth: int
    num_closids: int
    percent: bool = True


@dataclass(frozen=True)
class ResctrlGroup:
    """A resctrl group as its schemata file says; name "" is the default group (the host's)."""

    name: str
    l3: tuple[tuple[int, int], ...] = ()  # (cache id, way mask)
    mb: tuple[tuple[int, int], ...] = ()  # (domain id, value)

    def l3_mask(self, cache_id: int) -> int:
        return dict(self.l3).get(cache_id, 0)


@dataclass(frozen=True)
class Resctrl:
    """The kernel's resource control as discovered; absent (None on the host) without resctrl."""

    mounted: bool  # /sys/fs/resctrl/info exists only once resctrl is mounted
    l3: ResctrlL3 | None = None
    mb: ResctrlMb | None = None
    l3_cdp: bool = False  # mounted with cdp: L3CODE/L3DATA instead of L3
    groups: tuple[ResctrlGroup, ...] = ()  # the default group first

    @property
    def closids(self) -> int:
        """How many groups (the default one included) the kernel can give distinct settings."""
        counts = [r.num_closids for r in (self.l3, self.mb) if r is not None]
        return min(counts) if counts else 0


@dataclass(frozen=True)
class HostTopology:
    cpu_vendor: str  # "GenuineIntel" | "AuthenticAMD" | other
    kernel_cmdline: str
    default_route_interface: str | None
    cpus: tuple[Cpu, ...]
    numa_nodes: tuple[NumaNode, ...]
    pci_devices: tuple[PciDevice, ...] = ()
    net_interfaces: tuple[NetInterface, ...] = ()
    cpu_model: str = ""
    cpu_flags: frozenset[str] = frozenset()
    iommu_active: bool | None = None  # None: the source cannot tell
    source: str = ""
    hostname: str = ""
    warnings: tuple[str, ...] = field(default=())
    management_interfaces: tuple[str, ...] = ()  # carry the address of the current SSH session, etc.
    vf_states: tuple[VfState, ...] = ()
    kernel_release: str = ""  # /proc/sys/kernel/osrelease, e.g. "6.1.0-18-amd64"; "" when the source cannot tell
    os_ids: tuple[str, ...] = ()  # ID and ID_LIKE of /etc/os-release (model/distro.py); () when unknown

    @property
    def distro(self) -> Distro:
        return distro_of(self.os_ids)

    l3_domains: tuple[CacheDomain, ...] = ()  # empty: the source does not say
    resctrl: Resctrl | None = None  # None: no resctrl on the host, or the source cannot tell

    @cached_property
    def online_cpus(self) -> CpuSet:
        return CpuSet.from_iter(c.id for c in self.cpus if c.online)

    @cached_property
    def cores(self) -> tuple[Core, ...]:
        """Physical cores from online sibling sets, ordered by their lowest CPU."""
        by_id = {c.id: c for c in self.cpus if c.online}
        seen: set[int] = set()
        cores: list[Core] = []
        for cpu in sorted(by_id.values(), key=lambda c: c.id):
            if cpu.id in seen:
                continue
            members = (cpu.siblings & self.online_cpus) | CpuSet.of(cpu.id)
            seen.update(members)
            node = cpu.node if cpu.node is not None else 0
            cores.append(Core(members, cpu.package, node))
        return tuple(cores)

    @cached_property
    def smt(self) -> bool:
        return any(core.threads > 1 for core in self.cores)

    def node(self, node_id: int) -> NumaNode:
        for node in self.numa_nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def l3_of(self, cpu: int) -> CacheDomain | None:
        for domain in self.l3_domains:
            if cpu in domain.cpus:
                return domain
        return None

    def pci(self, address: str) -> PciDevice | None:
        for dev in self.pci_devices:
            if dev.address == address:
                return dev
        return None

    def pci_by_interface(self, name: str) -> PciDevice | None:
        for dev in self.pci_devices:
            if name in dev.interfaces:
                return dev
        return None

    def interface(self, name: str) -> NetInterface | None:
        for iface in self.net_interfaces:
            if iface.name == name:
                return iface
        return None

    def iommu_group_members(self, group: int) -> tuple[PciDevice, ...]:
        return tuple(d for d in self.pci_devices if d.iommu_group == group)

    @property
    def packages(self) -> tuple[int, ...]:
        return tuple(sorted({c.package for c in self.cpus if c.online}))


def topology_to_dict(topo: HostTopology) -> dict[str, Any]:
    """The JSON form printed by `bmslice discover --json`."""
    return {
        "source": topo.source,
        "hostname": topo.hostname,
        "cpu_vendor": topo.cpu_vendor,
        "cpu_model": topo.cpu_model,
        "kernel_cmdline": topo.kernel_cmdline,
        "kernel_release": topo.kernel_release,
        "os_ids": list(topo.os_ids),
        "default_route_interface": topo.default_route_interface,
        "iommu_active": topo.iommu_active,
        "cpus": [
            {
                "id": c.id,
                "package": c.package,
                "die": c.die,
                "core": c.core,
                "node": c.node,
                "siblings": c.siblings.sorted(),
                "online": c.online,
            }
            for c in topo.cpus
        ],
        "cores": [{"cpus": core.cpus.sorted(), "package": core.package, "node": core.node} for core in topo.cores],
        "numa_nodes": [
            {
                "id": n.id,
                "cpus": n.cpus.sorted(),
                "memory_mib": n.memory_mib,
                "free_mib": n.free_mib,
                "hugepages": [{"size_kib": h.size_kib, "total": h.total, "free": h.free} for h in n.hugepages],
                "distances": list(n.distances),
            }
            for n in topo.numa_nodes
        ],
        "pci_devices": [
            {
                "address": d.address,
                "class": d.class_code,
                "vendor": d.vendor,
                "device": d.device,
                "description": d.description,
                "numa_node": d.numa_node,
                "iommu_group": d.iommu_group,
                "driver": d.driver,
                "interfaces": list(d.interfaces),
                "sriov_totalvfs": d.sriov_totalvfs,
                "sriov_numvfs": d.sriov_numvfs,
                "sriov_offset": d.sriov_offset,
                "sriov_stride": d.sriov_stride,
                "physfn": d.physfn,
                "virtfns": list(d.virtfns),
            }
            for d in topo.pci_devices
        ],
        "net_interfaces": [
            {
                "name": i.name,
                "pci_address": i.pci_address,
                "mac": i.mac,
                "master": i.master,
                "master_kind": i.master_kind,
            }
            for i in topo.net_interfaces
        ],
        "vf_states": [
            {
                "pf_interface": v.pf_interface,
                "index": v.index,
                "mac": v.mac,
                "vlan": v.vlan,
                "trust": v.trust,
                "spoofchk": v.spoofchk,
            }
            for v in topo.vf_states
        ],
        "l3_domains": [
            {"id": d.id, "level": d.level, "cpus": d.cpus.sorted(), "size_kib": d.size_kib, "node": d.node}
            for d in topo.l3_domains
        ],
        "resctrl": _resctrl_to_dict(topo.resctrl),
        "warnings": list(topo.warnings),
    }


def _resctrl_to_dict(resctrl: Resctrl | None) -> dict[str, Any] | None:
    if resctrl is None:
        return None
    l3, mb = resctrl.l3, resctrl.mb
    return {
        "mounted": resctrl.mounted,
        "l3": None
        if l3 is None
        else {
            "cbm_mask": f"{l3.cbm_mask:x}",
            "ways": l3.ways,
            "min_cbm_bits": l3.min_cbm_bits,
            "num_closids": l3.num_closids,
            "shareable_bits": f"{l3.shareable_bits:x}",
        },
        "l3_cdp": resctrl.l3_cdp,
        "mb": None
        if mb is None
        else {
            "bandwidth_gran": mb.bandwidth_gran,
            "min_bandwidth": mb.min_bandwidth,
            "num_closids": mb.num_closids,
            "percent": mb.percent,
        },
        "groups": [
            {
                "name": g.name,
                "l3": {str(i): f"{m:x}" for i, m in g.l3},
                "mb": {str(i): v for i, v in g.mb},
            }
            for g in resctrl.groups
        ],
    }
