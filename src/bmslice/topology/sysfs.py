"""Read a host from a sysfs/procfs tree: the live machine (root "/") or a captured copy.

Every path is the one Linux uses, taken relative to a root directory, the way hwloc's
HWLOC_FSROOT works: `read_host_tree(Path("/"))` reads this machine and
`read_host_tree(Path("tests/data/trees/x"))` reads a tree captured by
`scripts/gather-host-tree` or written by `tests/treebuilder.py`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bmslice.cpuset import MAX_CPU_ID, CpuSet
from bmslice.errors import TopologyError
from bmslice.model.distro import os_ids
from bmslice.model.grammar import (
    driver_name,
    kernel_cmdline,
    kernel_ifname,
    link_address,
    pci_class,
    pci_id,
    printable_text,
)
from bmslice.model.spec import MAX_NUMA_NODE, MAX_VFS
from bmslice.model.topology import (
    Cpu,
    HostTopology,
    Hugepages,
    NetInterface,
    NumaNode,
    PciDevice,
    canonical_pci_address,
)
from bmslice.numbers import decimal, hexadecimal, is_decimal
from bmslice.safe_text import shown
from bmslice.topology.fsroot import FsRoot as FsRoot  # re-exported: fleet.verify imports it from here
from bmslice.topology.pci_config import sriov_routing

CPU_DIR = "sys/devices/system/cpu"
NODE_DIR = "sys/devices/system/node"
PCI_DIR = "sys/bus/pci/devices"
NET_DIR = "sys/class/net"
IOMMU_DIR = "sys/kernel/iommu_groups"
HUGEPAGES_DIR = "sys/kernel/mm/hugepages"
PCI_CONFIG_BYTES = 4096  # PCI Express extended config space

_HUGEPAGES = re.compile(r"hugepages-([0-9]+)kB")
_VIRTIO = re.compile(r"virtio[0-9]+")


def read_host_tree(root: Path | str = Path("/")) -> HostTopology:
    """Discover a host from ROOT/sys and ROOT/proc; raise TopologyError without CPU information."""
    # Cache and resctrl readers live in their own modules and read through FsRoot (defined here).
    from bmslice.topology.caches import read_l3_domains
    from bmslice.topology.resctrl import read_resctrl

    fs = FsRoot(Path(root))
    if not fs.is_dir(CPU_DIR):
        raise TopologyError(f"no CPU topology: {fs.display(CPU_DIR)} does not exist")
    nodes = _read_nodes(fs)
    cpus = _read_cpus(fs, nodes)
    if not cpus:
        raise TopologyError(f"no CPUs listed in {fs.display(CPU_DIR)}")
    if not nodes:
        nodes = [_single_node(fs, cpus)]
    interfaces = _read_net_interfaces(fs)
    vendor, model, flags = _read_cpuinfo(fs)
    return HostTopology(
        cpu_vendor=vendor,
        kernel_cmdline=checked(fs, "proc/cmdline", fs.read_line("proc/cmdline") or "", kernel_cmdline),
        default_route_interface=_default_route(fs),
        cpus=tuple(cpus),
        numa_nodes=tuple(nodes),
        pci_devices=tuple(_read_pci_devices(fs, interfaces, nodes)),
        net_interfaces=tuple(interfaces),
        cpu_model=model,
        cpu_flags=flags,
        iommu_active=bool(fs.listdir(IOMMU_DIR)),
        source=f"sysfs:{fs.root}",
        hostname=_text(fs, "proc/sys/kernel/hostname"),
        l3_domains=read_l3_domains(fs, cpus),
        resctrl=read_resctrl(fs, vendor),
        warnings=tuple(fs.warnings),
        kernel_release=_text(fs, "proc/sys/kernel/osrelease"),
        os_ids=_os_ids(fs),
    )


def _os_ids(fs: FsRoot) -> tuple[str, ...]:
    """/etc/os-release, else /usr/lib/os-release (os-release(5): the second is the fallback)."""
    for rel in ("etc/os-release", "usr/lib/os-release"):
        text = fs.read(rel)
        if text is not None:
            return os_ids(text)
    return ()


# --- CPUs -----------------------------------------------------------------------------


def _cpu_ids(fs: FsRoot) -> list[int]:
    # "present" excludes hot-plug slots that "possible" lists but that have no CPU in them.
    present = fs.read_cpuset(f"{CPU_DIR}/present")
    return present.sorted() if present else fs.numbered(CPU_DIR, "cpu", MAX_CPU_ID)


def _is_online(fs: FsRoot, cpu_id: int, online: CpuSet | None, has_dir: bool) -> bool:
    flag = fs.read_int(f"{CPU_DIR}/cpu{cpu_id}/online") if has_dir else None
    if flag is not None:
        return flag == 1
    # cpu0 usually has no online file because it cannot be unplugged.
    return online is None or cpu_id in online


def _cpu_nodes(fs: FsRoot, nodes: list[NumaNode], cpu_ids: Iterable[int]) -> dict[int, int]:
    """CPU -> node from node cpulists, then cpuN/nodeM links (kept for offline CPUs)."""
    if not nodes:
        return dict.fromkeys(cpu_ids, 0)
    mapping = {cpu: node.id for node in nodes for cpu in node.cpus}
    for cpu_id in cpu_ids:
        if cpu_id not in mapping:
            linked = fs.numbered(f"{CPU_DIR}/cpu{cpu_id}", "node", MAX_NUMA_NODE)
            if linked:
                mapping[cpu_id] = linked[0]
    return mapping


def _read_cpu(fs: FsRoot, cpu_id: int, online: bool, node: int | None, has_dir: bool) -> Cpu:
    topo = f"{CPU_DIR}/cpu{cpu_id}/topology"
    package = core = die = None
    siblings = CpuSet()
    if has_dir and fs.is_dir(topo):  # one look instead of six reads where an offline CPU has none
        package = fs.read_int(f"{topo}/physical_package_id", signed=True)  # -1: unknown
        core = fs.read_int(f"{topo}/core_id", signed=True)
        die = fs.read_int(f"{topo}/die_id", signed=True)
        if online:
            siblings = _cpus(fs, f"{topo}/thread_siblings_list", f"{topo}/thread_siblings") or CpuSet()
    return Cpu(
        id=cpu_id,
        package=package if package is not None and package >= 0 else -1,  # settled by _infer_packages
        # Unknown core: its own number, like the libvirt reader, so it never merges with a real core.
        core=core if core is not None and core >= 0 else cpu_id,
        node=node,
        siblings=siblings | CpuSet.of(cpu_id),
        online=online,
        die=die if die is not None and die >= 0 else 0,
    )


def _infer_packages(fs: FsRoot, cpus: list[Cpu]) -> list[Cpu]:
    """An offline CPU has no topology dir; its node's package is the best guess (else 0, said once)."""
    packages: dict[int | None, set[int]] = defaultdict(set)
    for cpu in cpus:
        if cpu.package >= 0:
            packages[cpu.node].add(cpu.package)
    out: list[Cpu] = []
    assumed: list[int] = []
    for cpu in cpus:
        if cpu.package < 0:
            known = packages.get(cpu.node, set())
            if cpu.node is not None and len(known) == 1:
                cpu = replace(cpu, package=next(iter(known)))
            else:
                assumed.append(cpu.id)
                cpu = replace(cpu, package=0)
        out.append(cpu)
    if assumed:
        fs.warnings.append(f"CPU {CpuSet.from_iter(assumed)}: package unknown (no topology in sysfs); assumed 0")
    return out


def _cpus(fs: FsRoot, listed: str, mask: str) -> CpuSet | None:
    """A CPU list file, else the hex mask that older kernels give alone (thread_siblings, node cpumap)."""
    cpus = fs.read_cpuset(listed)
    return cpus if cpus is not None else fs.read_cpumask(mask)


def _read_cpus(fs: FsRoot, nodes: list[NumaNode]) -> list[Cpu]:
    ids = _cpu_ids(fs)
    online = fs.read_cpuset(f"{CPU_DIR}/online")
    node_of = _cpu_nodes(fs, nodes, ids)
    # A CPU without its cpuN directory (a bare tree, an empty slot) has no file to read: one
    # listing instead of a lookup per file keeps 30,000 such CPUs to a fraction of a second.
    dirs = set(fs.listdir(CPU_DIR))
    cpus = []
    for i in ids:
        has_dir = f"cpu{i}" in dirs
        cpus.append(_read_cpu(fs, i, _is_online(fs, i, online, has_dir), node_of.get(i), has_dir))
    return _infer_packages(fs, cpus)


# --- NUMA nodes and memory ------------------------------------------------------------


def _meminfo_mib(text: str | None, key: str) -> int | None:
    """Find "<key>: N kB" in /proc/meminfo or a node's meminfo ("Node 0 MemTotal: N kB")."""
    for line in (text or "").splitlines():
        label, _, value = line.partition(":")
        if label.split()[-1:] == [key]:
            fields = value.split()
            if fields and (kib := decimal(fields[0])) is not None:
                return kib // 1024
    return None


def _read_hugepages(fs: FsRoot, rel: str) -> tuple[Hugepages, ...]:
    pools = []
    for name in fs.listdir(rel):
        match = _HUGEPAGES.fullmatch(name)
        size_kib = decimal(match.group(1)) if match else None
        if match and size_kib is None:  # more digits than any counter the kernel writes
            fs.warnings.append(f"{fs.display(rel)}/{shown(name, 40)}: not a page size; ignored")
        if size_kib is not None:
            total = fs.read_int(f"{rel}/{name}/nr_hugepages") or 0
            free = fs.read_int(f"{rel}/{name}/free_hugepages") or 0
            pools.append(Hugepages(size_kib, total, free))
    return tuple(sorted(pools, key=lambda p: p.size_kib))


def _read_node(fs: FsRoot, node_id: int) -> NumaNode:
    rel = f"{NODE_DIR}/node{node_id}"
    meminfo = fs.read(f"{rel}/meminfo")
    distances = (fs.read_line(f"{rel}/distance") or "").split()
    return NumaNode(
        id=node_id,
        cpus=_cpus(fs, f"{rel}/cpulist", f"{rel}/cpumap") or CpuSet(),
        memory_mib=_meminfo_mib(meminfo, "MemTotal") or 0,
        free_mib=_meminfo_mib(meminfo, "MemFree"),
        hugepages=_read_hugepages(fs, f"{rel}/hugepages"),
        distances=tuple(int(d) for d in distances if is_decimal(d)),
    )


def _read_nodes(fs: FsRoot) -> list[NumaNode]:
    return [_read_node(fs, n) for n in fs.numbered(NODE_DIR, "node", MAX_NUMA_NODE)]


def read_numa_nodes(root: Path, cpus: Sequence[Cpu]) -> tuple[NumaNode, ...]:
    """The NUMA nodes alone, as `read_host_tree` reads them (memory, free hugepages): what changes
    while a host runs, for a reader that keeps the rest of its topology."""
    fs = FsRoot(root)
    return tuple(_read_nodes(fs) or [_single_node(fs, list(cpus))])


def _single_node(fs: FsRoot, cpus: list[Cpu]) -> NumaNode:
    """A kernel without NUMA support: one node holding every online CPU and all memory."""
    meminfo = fs.read("proc/meminfo")
    return NumaNode(
        id=0,
        cpus=CpuSet.from_iter(c.id for c in cpus if c.online),
        memory_mib=_meminfo_mib(meminfo, "MemTotal") or 0,
        free_mib=_meminfo_mib(meminfo, "MemFree"),
        hugepages=_read_hugepages(fs, HUGEPAGES_DIR),
        distances=(10,),
    )


# --- PCI devices ----------------------------------------------------------------------


@dataclass(frozen=True)
class _PciLinks:
    physfn: str | None
    virtfns: tuple[str, ...]


def vf_of(fs: FsRoot, pf: str, index: int) -> str | None:
    """PCI address of VF `index` of `pf`, from the PF's virtfn link (None: that VF does not exist)."""
    target = fs.link_name(f"{PCI_DIR}/{pf}/virtfn{index}")
    return canonical_pci_address(target) if target else None


def _read_sriov_links(fs: FsRoot, rel: str) -> _PciLinks:
    physfn = fs.link_name(f"{rel}/physfn")
    virtfns = (fs.link_name(f"{rel}/virtfn{n}") for n in fs.numbered(rel, "virtfn", MAX_VFS - 1))
    return _PciLinks(
        physfn=canonical_pci_address(physfn) if physfn else None,
        virtfns=tuple(a for a in (canonical_pci_address(v) for v in virtfns if v) if a),
    )


def _pci_numa_node(fs: FsRoot, rel: str) -> int | None:
    node = fs.read_int(f"{rel}/numa_node", signed=True)
    return node if node is not None and node >= 0 else None


def _pci_iommu_group(fs: FsRoot, rel: str) -> int | None:
    group = fs.link_name(f"{rel}/iommu_group")
    return decimal(group) if group else None


def _sriov_routing(fs: FsRoot, rel: str, totalvfs: int) -> tuple[int | None, int | None]:
    """First VF Offset and VF Stride: sysfs from Linux 4.16, else the PF's config space (root only)."""
    offset, stride = fs.read_int(f"{rel}/sriov_offset"), fs.read_int(f"{rel}/sriov_stride")
    if totalvfs <= 0 or (offset is not None and stride is not None):
        return offset, stride
    try:
        config = fs.read_bytes(f"{rel}/config", limit=PCI_CONFIG_BYTES)
    except OSError:
        config = None
    routing = sriov_routing(config) if config is not None else None
    return (routing.offset, routing.stride) if routing is not None else (None, None)


def checked(fs: FsRoot, rel: str, value: str, grammar: Callable[[str], str]) -> str:
    """`value`, read from ROOT/rel, when it matches `grammar`; else one line naming the file and the value.

    What a tree says reaches modprobe.d, udev rules and Junos lines: a driver or an interface
    named "x\\ninstall ..." is refused here, not carried along.
    """
    try:
        return grammar(value)
    except ValueError as exc:
        raise TopologyError(f"{fs.display(rel)}: {exc}; refused") from None


def _optional(fs: FsRoot, rel: str, grammar: Callable[[str], str]) -> str:
    """A one-line attribute in its grammar; "" when the file is absent or empty (unknown)."""
    value = fs.read_line(rel)
    return checked(fs, rel, value, grammar) if value else ""


def _read_pci_device(fs: FsRoot, name: str, address: str, interfaces: tuple[str, ...]) -> PciDevice:
    rel = f"{PCI_DIR}/{name}"
    links = _read_sriov_links(fs, rel)
    totalvfs = fs.read_int(f"{rel}/sriov_totalvfs") or 0
    offset, stride = _sriov_routing(fs, rel, totalvfs)
    driver = fs.link_name(f"{rel}/driver")
    return PciDevice(
        address=address,
        class_code=_optional(fs, f"{rel}/class", pci_class),
        vendor=_optional(fs, f"{rel}/vendor", pci_id),
        device=_optional(fs, f"{rel}/device", pci_id),
        numa_node=_pci_numa_node(fs, rel),
        iommu_group=_pci_iommu_group(fs, rel),
        driver=checked(fs, f"{rel}/driver", driver, driver_name) if driver is not None else None,
        interfaces=interfaces,
        sriov_totalvfs=totalvfs,
        sriov_numvfs=fs.read_int(f"{rel}/sriov_numvfs") or 0,
        sriov_offset=offset,
        sriov_stride=stride,
        physfn=links.physfn,
        virtfns=links.virtfns,
    )


def _read_pci_devices(fs: FsRoot, interfaces: list[NetInterface], nodes: list[NumaNode]) -> list[PciDevice]:
    by_pci: dict[str, list[str]] = {}
    for iface in interfaces:
        if iface.pci_address:
            by_pci.setdefault(iface.pci_address, []).append(iface.name)
    devices = []
    for name in fs.listdir(PCI_DIR):
        address = canonical_pci_address(name)
        if address is None:  # the kernel names each entry by its address: anything else is no device of its
            raise TopologyError(f"{fs.display(PCI_DIR)}: {shown(name)} is not a PCI address like 0000:01:00.0; refused")
        net = f"{PCI_DIR}/{name}/net"
        names = set(by_pci.get(address, ())) | {checked(fs, net, n, kernel_ifname) for n in fs.listdir(net)}
        devices.append(_read_pci_device(fs, name, address, tuple(sorted(names))))
    devices.sort(key=lambda d: d.address)
    if sum(1 for node in nodes if node.cpus) > 1:  # with one node, every device is local to it
        _warn_unknown_locality(fs, devices)
    return devices


def _warn_unknown_locality(fs: FsRoot, devices: list[PciDevice]) -> None:
    unknown = [d.address for d in devices if d.numa_node is None]
    if unknown:
        fs.warnings.append(
            f"{len(unknown)} PCI device(s) report numa_node -1 (no locality from firmware): {', '.join(unknown)}"
        )


# --- network interfaces ---------------------------------------------------------------


def _interface_pci_address(fs: FsRoot, rel: str) -> str | None:
    device = fs.link_name(f"{rel}/device")
    if device is None:
        return None
    if _VIRTIO.fullmatch(device):
        # virtio-net hangs off a virtio bus device whose parent is the PCI function.
        return canonical_pci_address(fs.resolve(f"{rel}/device").parent.name)
    return canonical_pci_address(device)


def _master_kind(fs: FsRoot, rel: str, master: str | None) -> str | None:
    if master is None:
        return None
    master_rel = f"{NET_DIR}/{master}"
    if fs.is_dir(f"{rel}/bonding_slave") or fs.is_dir(f"{master_rel}/bonding"):
        return "bond"
    if fs.is_dir(f"{rel}/brport") or fs.is_dir(f"{master_rel}/bridge"):
        return "bridge"
    return None


def _read_net_interface(fs: FsRoot, name: str) -> NetInterface:
    rel = f"{NET_DIR}/{name}"
    master = fs.link_name(f"{rel}/master")
    if master is not None:
        checked(fs, f"{rel}/master", master, kernel_ifname)
    return NetInterface(
        name=checked(fs, NET_DIR, name, kernel_ifname),
        pci_address=_interface_pci_address(fs, rel),
        mac=_optional(fs, f"{rel}/address", link_address) or None,
        master=master,
        master_kind=_master_kind(fs, rel, master),
    )


def _read_net_interfaces(fs: FsRoot) -> list[NetInterface]:
    return [_read_net_interface(fs, name) for name in fs.listdir(NET_DIR)]


# --- /proc ----------------------------------------------------------------------------


def _read_cpuinfo(fs: FsRoot) -> tuple[str, str, frozenset[str]]:
    """vendor_id, model name and flags of the first processor entry."""
    fields: dict[str, str] = {}
    for line in (fs.read("proc/cpuinfo") or "").splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    vendor, model = (
        checked(fs, "proc/cpuinfo", fields.get(key, ""), printable_text) for key in ("vendor_id", "model name")
    )
    return vendor, model, frozenset(fields.get("flags", "").split())


def _text(fs: FsRoot, rel: str) -> str:
    """A one-line name the kernel reports (hostname, release), checked: it is printed and recorded."""
    return checked(fs, rel, fs.read_line(rel) or "", printable_text)


def _default_route(fs: FsRoot) -> str | None:
    """Interface of the lowest-metric default route in /proc/net/route (hex fields)."""
    best: tuple[int, str] | None = None
    for line in (fs.read("proc/net/route") or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[1] != "00000000" or fields[7] != "00000000":
            continue
        flags, metric = hexadecimal(fields[3]), decimal(fields[6])
        if flags is None or metric is None:  # the kernel writes hex flags and a decimal metric, in ASCII
            raise TopologyError(f"{fs.display('proc/net/route')}: {shown(line, 80)} is not a route line; refused")
        if flags & 1 and (best is None or metric < best[0]):
            best = (metric, checked(fs, "proc/net/route", fields[0], kernel_ifname))
    return best[1] if best else None
