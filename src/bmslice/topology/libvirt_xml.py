"""Read a host from libvirt's XML: the capabilities document plus node device descriptions.

Pure functions of XML text; the libvirt calls that fetch it live in `bmslice.apply.connection`.
The capabilities give CPUs, NUMA cells, page pools and the IOMMU state; node devices give
PCI functions (ids, class, IOMMU group, SR-IOV links, NUMA node, driver) and the network
interfaces hanging off them. Whatever libvirt cannot know (kernel command line, routes,
bond/bridge membership) is left empty and named in `HostTopology.warnings`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from lxml import etree

from bmslice.cpuset import CpuListError, CpuSet
from bmslice.errors import TopologyError
from bmslice.model.grammar import driver_name, kernel_ifname, link_address, pci_class, pci_id
from bmslice.model.topology import (
    CacheDomain,
    Cpu,
    HostTopology,
    Hugepages,
    NetInterface,
    NumaNode,
    PciDevice,
    Resctrl,
    ResctrlL3,
    ResctrlMb,
)
from bmslice.numbers import decimal, hexadecimal
from bmslice.safe_text import one_line, shown
from bmslice.topology.caches import l3_domains

# libvirt names vendors after its cpu_map files, not after the CPUID vendor string the
# rest of bmslice (and /proc/cpuinfo) uses.
_VENDORS = {"Intel": "GenuineIntel", "AMD": "AuthenticAMD", "Hygon": "HygonGenuine"}

# Multipliers to KiB for the units libvirt accepts in memory elements (see formatdomain).
_UNIT_KIB = {
    "b": 1 / 1024,
    "bytes": 1 / 1024,
    "kb": 1000 / 1024,
    "k": 1,
    "kib": 1,
    "mb": 1000**2 / 1024,
    "m": 1024,
    "mib": 1024,
    "gb": 1000**3 / 1024,
    "g": 1024**2,
    "gib": 1024**2,
    "tb": 1000**4 / 1024,
    "t": 1024**3,
    "tib": 1024**3,
}

# No DTD, no entities, no network: the XML comes from a daemon or a file we do not control.
_PARSER = etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, remove_blank_text=True)

UNKNOWN_CMDLINE = "kernel command line is unknown through libvirt; isolation settings cannot be checked"
UNKNOWN_ROUTE = "default route is unknown through libvirt; the management interface cannot be protected"
UNKNOWN_MASTERS = "bond and bridge membership of interfaces is unknown through libvirt"


@dataclass(frozen=True)
class LibvirtHostInfo:
    """Facts libvirt gives through calls other than the capabilities XML; all optional.

    `cpus` and `memory_mib` come from virNodeGetInfo and only matter when the capabilities
    lack a NUMA topology (libvirt's test driver, some non-Linux hosts). `cell_free_mib` is
    virNodeGetCellsFreeMemory per cell; `free_pages` is virNodeGetFreePages keyed by
    (cell, page size in KiB).
    """

    hostname: str = ""
    cpus: int | None = None
    memory_mib: int | None = None
    cell_free_mib: Mapping[int, int] = field(default_factory=dict)
    free_pages: Mapping[tuple[int, int], int] = field(default_factory=dict)


def topology_from_libvirt(
    capabilities_xml: str,
    nodedev_xmls: Sequence[str],
    source: str,
    host_info: LibvirtHostInfo | None = None,
) -> HostTopology:
    """Build the host model from virConnectGetCapabilities() and virNodeDeviceGetXMLDesc() output."""
    info = host_info or LibvirtHostInfo()
    warnings: list[str] = []
    host = _parse(capabilities_xml, "libvirt capabilities").find("host")
    if host is None:
        raise TopologyError("libvirt capabilities have no <host> element")
    cpus, nodes = _read_cells(host, info, warnings)
    devices = [_parse(text, "libvirt node device") for text in nodedev_xmls]
    interfaces = _read_interfaces(devices)
    pci_devices = _read_pci_devices(devices, interfaces, warnings)
    vendor = _cpu_vendor(host, warnings)
    l3, resctrl = read_caches(host, cpus, vendor)
    warnings += [UNKNOWN_CMDLINE, UNKNOWN_ROUTE]
    if interfaces:
        warnings.append(UNKNOWN_MASTERS)
    return HostTopology(
        cpu_vendor=vendor,
        kernel_cmdline="",
        default_route_interface=None,
        cpus=tuple(cpus),
        numa_nodes=tuple(nodes),
        pci_devices=tuple(pci_devices),
        net_interfaces=tuple(interfaces),
        cpu_model=host.findtext("cpu/model", "").strip(),
        cpu_flags=_cpu_flags(host),
        iommu_active=_iommu_active(host),
        source=source,
        hostname=info.hostname,
        warnings=tuple(warnings),
        l3_domains=l3,
        resctrl=resctrl,
    )


def cell_ids(capabilities_xml: str) -> list[int]:
    """NUMA cell ids in the capabilities, for callers that query free memory per cell."""
    root = _parse(capabilities_xml, "libvirt capabilities")
    return sorted(_int(cell.get("id"), "cell id") for cell in root.iterfind("host/topology/cells/cell"))


def page_sizes_kib(capabilities_xml: str) -> list[int]:
    """Page sizes the host supports (host/cpu/pages), base page included."""
    root = _parse(capabilities_xml, "libvirt capabilities")
    pages = root.iterfind("host/cpu/pages")
    return sorted({_to_kib(_int(p.get("size"), "page size"), p.get("unit"), "page size") for p in pages})


# --- parsing helpers ------------------------------------------------------------------


def _parse(text: str, what: str) -> etree._Element:
    # Encode first: lxml refuses a str that carries an XML encoding declaration.
    try:
        return etree.fromstring(text.encode("utf-8"), _PARSER)
    except etree.XMLSyntaxError as exc:
        raise TopologyError(f"cannot parse {what} XML: {exc}") from None


def _int(text: str | None, what: str) -> int:
    """Decimal or 0x-prefixed integer; libvirt writes both depending on the element."""
    if text is None or not text.strip():
        raise TopologyError(f"libvirt XML: missing {what}")
    value = text.strip()
    # Not int(value, 0): that rejects decimal with leading zeros ("08"); not int(value): that reads "١٢" and "6_4".
    number = hexadecimal(value) if value.lower().startswith("0x") else decimal(value)
    if number is None:
        raise TopologyError(f"libvirt XML: {what} is not an integer: {shown(text)}")
    return number


def _opt_int(text: str | None, what: str) -> int | None:
    return None if text is None or not text.strip() else _int(text, what)


def _to_kib(value: int, unit: str | None, what: str) -> int:
    factor = _UNIT_KIB.get((unit or "KiB").lower())
    if factor is None:
        raise TopologyError(f"libvirt XML: unknown unit {unit!r} for {what}")
    return int(value * factor)


# --- host CPU -------------------------------------------------------------------------


def _cpu_vendor(host: etree._Element, warnings: list[str]) -> str:
    vendor = host.findtext("cpu/vendor", "").strip()
    if not vendor:
        warnings.append("libvirt capabilities name no host CPU vendor")
    return _VENDORS.get(vendor, vendor)


def _cpu_flags(host: etree._Element) -> frozenset[str]:
    """Features libvirt lists on top of the named CPU model: not the full /proc/cpuinfo set.

    Also takes host feature markers written as bare elements (<features><pae/></features>).
    """
    named = {f.get("name", "") for f in host.iterfind("cpu/feature")}
    bare = {str(child.tag) for child in host.iterfind("cpu/features/*")}
    return frozenset((named | bare) - {""})


def _iommu_active(host: etree._Element) -> bool | None:
    # libvirt says "yes" when /sys/kernel/iommu_groups is populated, i.e. the IOMMU is on.
    iommu = host.find("iommu")
    if iommu is None:
        return None
    return iommu.get("support") == "yes"


# --- caches and resource control --------------------------------------------------------


def _bank_kib(element: etree._Element, attr: str, what: str) -> int:
    return _to_kib(_int(element.get(attr), what), element.get("unit"), what)


def _l3_control(bank: etree._Element, size_kib: int) -> tuple[ResctrlL3 | None, bool]:
    """A bank's <control granularity= min= maxAllocs=>: ways = size / granularity; (None, True) under CDP."""
    controls = bank.findall("control")
    if any(c.get("type") in ("code", "data") for c in controls):
        return None, True
    for control in controls:
        granularity = _bank_kib(control, "granularity", "cache control granularity")
        if granularity <= 0:
            continue
        minimum = control.get("min")
        min_kib = _bank_kib(control, "min", "cache control min") if minimum is not None else granularity
        ways = size_kib // granularity
        closids = _int(control.get("maxAllocs"), "cache control maxAllocs")
        return ResctrlL3((1 << ways) - 1, max(1, min_kib // granularity), closids), False
    return None, False


def _mb_control(host: etree._Element, vendor: str) -> ResctrlMb | None:
    for control in host.iterfind("memory_bandwidth/node/control"):
        return ResctrlMb(
            bandwidth_gran=_int(control.get("granularity"), "memory bandwidth granularity"),
            min_bandwidth=_opt_int(control.get("min"), "memory bandwidth min") or 0,
            num_closids=_int(control.get("maxAllocs"), "memory bandwidth maxAllocs"),
            percent=vendor not in ("AuthenticAMD", "HygonGenuine"),
        )
    return None


def read_caches(
    host: etree._Element, cpus: Sequence[Cpu], vendor: str
) -> tuple[tuple[CacheDomain, ...], Resctrl | None]:
    """<cache><bank id= level='3' size= unit= cpus=> and their <control>s, plus <memory_bandwidth>.

    libvirt writes <control> only when resctrl is mounted; without any, whether the host
    has resctrl is unknown here (None). Groups are not in the capabilities.
    """
    found = []
    l3: ResctrlL3 | None = None
    cdp = False
    for bank in host.iterfind("cache/bank"):
        if bank.get("level") != "3":
            continue
        size = _bank_kib(bank, "size", "cache bank size")
        try:
            shared = CpuSet.parse(bank.get("cpus", ""))
        except CpuListError as exc:
            raise TopologyError(f"libvirt capabilities: cache bank {bank.get('id')}: {exc}") from None
        found.append((_int(bank.get("id"), "cache bank id"), shared, size))
        control, bank_cdp = _l3_control(bank, size)
        l3, cdp = l3 or control, cdp or bank_cdp
    mb = _mb_control(host, vendor)
    resctrl = Resctrl(mounted=True, l3=l3, mb=mb, l3_cdp=cdp) if l3 or mb or cdp else None
    return l3_domains(found, cpus), resctrl


# --- NUMA cells -----------------------------------------------------------------------


def _read_cells(host: etree._Element, info: LibvirtHostInfo, warnings: list[str]) -> tuple[list[Cpu], list[NumaNode]]:
    cells = host.findall("topology/cells/cell")
    if not cells:
        return _fallback_single_node(host, info, warnings)
    cpus: list[Cpu] = []
    nodes: list[NumaNode] = []
    for cell in cells:
        node = _read_cell(cell, info, warnings)
        cpus += [_read_cpu(el, node.id, warnings) for el in cell.iterfind("cpus/cpu")]
        nodes.append(node)
    _warn_assumed_free_pages(nodes, info, warnings)
    cpus.sort(key=lambda c: c.id)
    nodes.sort(key=lambda n: n.id)
    return cpus, nodes


def _read_cell(cell: etree._Element, info: LibvirtHostInfo, warnings: list[str]) -> NumaNode:
    node_id = _int(cell.get("id"), "cell id")
    memory = cell.find("memory")
    cpu_ids = (_int(c.get("id"), "cpu id") for c in cell.iterfind("cpus/cpu"))
    return NumaNode(
        id=node_id,
        cpus=CpuSet.from_iter(cpu_ids),
        memory_mib=_to_kib(_int(memory.text, "cell memory"), memory.get("unit"), "cell memory") // 1024
        if memory is not None
        else 0,
        free_mib=info.cell_free_mib.get(node_id),
        hugepages=_read_cell_hugepages(cell, node_id, info),
        distances=_read_distances(cell),
    )


def _read_cell_hugepages(cell: etree._Element, node_id: int, info: LibvirtHostInfo) -> tuple[Hugepages, ...]:
    """Every page pool but the smallest, which is the base page size and not a hugepage pool.

    The capabilities only give the pool size; free counts come from virNodeGetFreePages when
    the caller had them, otherwise the whole pool is assumed free (and a warning says so).
    """
    pools: dict[int, int] = {}
    for pages in cell.iterfind("pages"):
        size = _to_kib(_int(pages.get("size"), "page size"), pages.get("unit"), "page size")
        pools[size] = _int(pages.text, "page count")
    if not pools:
        return ()
    del pools[min(pools)]
    return tuple(
        Hugepages(size, total, info.free_pages.get((node_id, size), total)) for size, total in sorted(pools.items())
    )


def _warn_assumed_free_pages(nodes: list[NumaNode], info: LibvirtHostInfo, warnings: list[str]) -> None:
    assumed = [
        f"node {n.id} {p.size_kib} KiB"
        for n in nodes
        for p in n.hugepages
        if p.total and (n.id, p.size_kib) not in info.free_pages
    ]
    if assumed:
        warnings.append(
            "free hugepages unknown (libvirt capabilities give pool sizes only); assumed all free: "
            + ", ".join(assumed)
        )


def _read_distances(cell: etree._Element) -> tuple[int, ...]:
    siblings = [
        (_int(s.get("id"), "sibling id"), _int(s.get("value"), "distance")) for s in cell.iterfind("distances/sibling")
    ]
    return tuple(value for _, value in sorted(siblings))


def _read_cpu(element: etree._Element, node_id: int, warnings: list[str]) -> Cpu:
    cpu_id = _int(element.get("id"), "cpu id")
    siblings_text = element.get("siblings")
    if siblings_text is None:
        # Old libvirt writes bare <cpu id=N/> for CPUs without sysfs topology: offline ones.
        warnings.append(f"CPU {cpu_id} has no topology in libvirt capabilities; treated as offline")
        return Cpu(id=cpu_id, package=0, core=cpu_id, node=node_id, siblings=CpuSet.of(cpu_id), online=False)
    try:
        siblings = CpuSet.parse(siblings_text)
    except CpuListError as exc:
        raise TopologyError(f"libvirt capabilities: CPU {cpu_id}: {exc}") from None
    return Cpu(
        id=cpu_id,
        package=_int(element.get("socket_id"), f"socket_id of CPU {cpu_id}"),
        core=_int(element.get("core_id"), f"core_id of CPU {cpu_id}"),
        node=node_id,
        siblings=siblings,
        die=_opt_int(element.get("die_id"), f"die_id of CPU {cpu_id}") or 0,
    )


def _fallback_cpu_count(host: etree._Element, info: LibvirtHostInfo) -> int:
    """virNodeGetInfo's active CPU count, else the product of host/cpu/topology."""
    if info.cpus is not None:
        return info.cpus
    topology = host.find("cpu/topology")
    if topology is None:
        return 0
    count = 1
    for attr in ("sockets", "dies", "cores", "threads"):
        count *= _opt_int(topology.get(attr), f"cpu topology {attr}") or 1
    return count


def _fallback_single_node(
    host: etree._Element, info: LibvirtHostInfo, warnings: list[str]
) -> tuple[list[Cpu], list[NumaNode]]:
    """No <cells>: one node 0 holding the CPUs we can count, each its own core.

    Sibling layout is not guessed from thread counts: Intel and AMD number SMT threads
    differently, and a wrong guess would pin two vCPUs onto one core.
    """
    count = _fallback_cpu_count(host, info)
    warnings.append(
        f"libvirt capabilities have no NUMA topology; assumed one node 0 with {count} CPU(s) "
        "and unknown SMT siblings, packages and cores"
    )
    cpus = [Cpu(id=i, package=0, core=i, node=0, siblings=CpuSet.of(i)) for i in range(count)]
    node = NumaNode(
        id=0,
        cpus=CpuSet.from_iter(range(count)),
        memory_mib=info.memory_mib or 0,
        free_mib=info.cell_free_mib.get(0),
        distances=(10,),
    )
    return cpus, [node]


# --- node devices ---------------------------------------------------------------------


def _capability(device: etree._Element, kind: str) -> etree._Element | None:
    return device.find(f"capability[@type='{kind}']")


def _address_of(element: etree._Element) -> str:
    """<address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/> -> "0000:01:00.0"."""
    parts = [_int(element.get(k), f"PCI address {k}") for k in ("domain", "bus", "slot", "function")]
    return _format_pci(*parts)


_PCI_LIMITS = (0xFFFF_FFFF, 0xFF, 0x1F, 0x7)  # domain, bus, slot (device), function


def _format_pci(domain: int, bus: int, slot: int, function: int) -> str:
    if any(not 0 <= part <= limit for part, limit in zip((domain, bus, slot, function), _PCI_LIMITS, strict=True)):
        raise TopologyError(f"libvirt XML: PCI address {domain}:{bus}:{slot}.{function} is out of range")
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"


def _checked(device: etree._Element, what: str, value: str, grammar: Callable[[str], str]) -> str:
    """A node device's value in its grammar; else one line naming the device and the value."""
    try:
        return grammar(value)
    except ValueError as exc:
        raise TopologyError(f"libvirt node device {one_line(device.findtext('name', '?'))}: {what}: {exc}") from None


def _pci_address(pci: etree._Element) -> str:
    # <domain>/<bus>/<slot>/<function> are decimal in libvirt's output; _int also takes 0x.
    parts = [_int(pci.findtext(k), f"PCI {k}") for k in ("domain", "bus", "slot", "function")]
    return _format_pci(*parts)


def _read_interfaces(devices: list[etree._Element]) -> list[NetInterface]:
    """Net node devices; the parent's PCI address links each to its function."""
    pci_by_name = {
        d.findtext("name", ""): _pci_address(cap) for d in devices if (cap := _capability(d, "pci")) is not None
    }
    interfaces = []
    for device in devices:
        net = _capability(device, "net")
        if net is None:
            continue
        mac = net.findtext("address", "").strip()
        interfaces.append(
            NetInterface(
                name=_checked(device, "interface", net.findtext("interface", "").strip(), kernel_ifname),
                pci_address=pci_by_name.get(device.findtext("parent", "").strip()),
                mac=_checked(device, "address", mac, link_address) if mac else None,
            )
        )
    return sorted(interfaces, key=lambda i: i.name)


def _class_code(device: etree._Element, pci: etree._Element) -> str:
    """ "0x020000"; older libvirt writes no <class>, which gives "" (unknown)."""
    text = pci.findtext("class", "").strip()
    return _checked(device, "class", text, pci_class) if text else ""


def _id_of(device: etree._Element, pci: etree._Element, tag: str) -> str:
    element = pci.find(tag)
    text = (element.get("id") or "") if element is not None else ""
    return _checked(device, f"{tag} id", text, pci_id) if text else ""


def _driver(device: etree._Element) -> str | None:
    name = device.findtext("driver/name")
    return _checked(device, "driver", name, driver_name) if name else None


def _read_pci_device(device: etree._Element, pci: etree._Element, interfaces: tuple[str, ...]) -> PciDevice:
    vfs = _capability(pci, "virt_functions")
    vf_addresses = tuple(_address_of(a) for a in vfs.iterfind("address")) if vfs is not None else ()
    physfn = pci.find("capability[@type='phys_function']/address")
    group = pci.find("iommuGroup")
    numa = pci.find("numa")
    return PciDevice(
        address=_pci_address(pci),
        class_code=_class_code(device, pci),
        vendor=_id_of(device, pci, "vendor"),
        device=_id_of(device, pci, "product"),
        numa_node=_numa_node(numa),
        iommu_group=_opt_int(group.get("number"), "iommuGroup number") if group is not None else None,
        driver=_driver(device),
        interfaces=interfaces,
        sriov_totalvfs=(_opt_int(vfs.get("maxCount"), "maxCount") or 0) if vfs is not None else 0,
        sriov_numvfs=len(vf_addresses),
        physfn=_address_of(physfn) if physfn is not None else None,
        virtfns=vf_addresses,
        description=(pci.findtext("product") or "").strip() or None,
    )


def _numa_node(numa: etree._Element | None) -> int | None:
    # libvirt omits <numa> when sysfs says -1; be tolerant of a literal -1 too.
    node = _opt_int(numa.get("node"), "numa node") if numa is not None else None
    return node if node is not None and node >= 0 else None


def _read_pci_devices(
    devices: list[etree._Element], interfaces: list[NetInterface], warnings: list[str]
) -> list[PciDevice]:
    names: dict[str, list[str]] = {}
    for iface in interfaces:
        if iface.pci_address:
            names.setdefault(iface.pci_address, []).append(iface.name)
    result = []
    for device in devices:
        pci = _capability(device, "pci")
        if pci is not None:
            address = _pci_address(pci)
            result.append(_read_pci_device(device, pci, tuple(sorted(names.get(address, ())))))
    result.sort(key=lambda d: d.address)
    _warn_missing(result, warnings)
    return result


def _warn_missing(devices: list[PciDevice], warnings: list[str]) -> None:
    no_class = [d.address for d in devices if not d.class_code]
    if no_class:
        warnings.append(f"libvirt gives no PCI class for {', '.join(no_class)} (older libvirt does not report it)")
    no_node = [d.address for d in devices if d.numa_node is None]
    if no_node:
        warnings.append(f"{len(no_node)} PCI device(s) have no NUMA node in libvirt: {', '.join(no_node)}")
