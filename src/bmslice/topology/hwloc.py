"""Read a host from `lstopo --of xml` output (hwloc 2.x; hwloc 1.x tolerated).

hwloc 2.x attaches NUMANode objects as memory children of a CPU-side object (Package,
Die, Group); hwloc 1.x makes NUMANode a parent of Socket/Package and cores. Both write a
`nodeset` on every CPU-side object, so a PU's node is read from its own nodeset and
structure is only used for packages, dies and cores. CPU numbers are the PU `os_index`,
exactly as the kernel numbers them.

hwloc knows nothing of the kernel command line, routes, IOMMU groups, drivers or SR-IOV;
those stay empty and `HostTopology.warnings` says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import replace

from lxml import etree

from bmslice.cpuset import MAX_CPU_ID, CpuSet
from bmslice.errors import TopologyError
from bmslice.model.grammar import kernel_ifname, link_address, printable_text
from bmslice.model.topology import (
    CacheDomain,
    Cpu,
    HostTopology,
    Hugepages,
    NetInterface,
    NumaNode,
    PciDevice,
    canonical_pci_address,
)
from bmslice.safe_text import shown
from bmslice.topology.caches import l3_domains

PACKAGE_TYPES = ("Package", "Socket")  # "Socket" is hwloc < 1.11's name for a package
NETWORK_OSDEV = "2"  # HWLOC_OBJ_OSDEV_NETWORK: kernel netdevs (not OpenFabrics HCAs, "3")

# "0200 [8086:1572] [8086:0006] 02": class+subclass, [vendor:device], [subsystem], revision.
_PCI_TYPE = re.compile(r"^([0-9a-fA-F]{4}) \[([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\]")

# Numbers as hwloc writes them (%u, %llu): ASCII digits, nothing else ("8GB", "-1", "NaN" and
# "1e999" are not numbers of an export). Bounds are what the value can mean.
_DIGITS = re.compile(r"[0-9]{1,20}")
# hwloc 1.x writes NUMA latencies as "%f": digits, an optional fraction and exponent.
_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?(?:[eE][+-]?[0-9]{1,3})?")
U32 = 2**32 - 1
U64 = 2**64 - 1
MAX_NODE_ID = 1023  # Linux has at most 1024 NUMA nodes (NODES_SHIFT 10)
MAX_BITMAP_WORDS = (MAX_CPU_ID + 1) // 32  # no cpuset or nodeset names an id above MAX_CPU_ID

# lstopo writes <!DOCTYPE topology SYSTEM "hwloc2.dtd">: never fetch or apply it.
_PARSER = etree.XMLParser(
    resolve_entities=False, load_dtd=False, no_network=True, dtd_validation=False, remove_blank_text=True
)

UNKNOWN_FROM_HWLOC = (
    "hwloc XML has no kernel command line, default route, IOMMU groups, PCI drivers or SR-IOV links; "
    "those are reported empty"
)


def topology_from_hwloc(xml_text: str | bytes, source: str) -> HostTopology:
    """Build the host model from an hwloc XML export."""
    root = _parse(xml_text)
    machine = root.find("object")
    if machine is None:
        raise TopologyError("hwloc XML has no root object")
    warnings: list[str] = []
    objects = list(machine.iter("object"))
    cpus = _read_cpus(objects)
    nodes = _read_nodes(root, machine, objects, cpus, warnings)
    if len(nodes) == 1:  # a non-NUMA 1.x export may leave PU nodesets empty
        cpus = [c if c.node is not None else replace(c, node=nodes[0].id) for c in cpus]
    pci_devices, interfaces = _read_pci(objects, warnings)
    l3 = _read_l3(objects, cpus)
    warnings.append(UNKNOWN_FROM_HWLOC)
    return HostTopology(
        cpu_vendor=_info(objects, "CPUVendor", warnings),
        kernel_cmdline="",
        default_route_interface=None,
        cpus=tuple(cpus),
        numa_nodes=tuple(nodes),
        pci_devices=tuple(pci_devices),
        net_interfaces=tuple(interfaces),
        cpu_model=_info(objects, "CPUModel", warnings),
        cpu_flags=frozenset(),
        iommu_active=None,
        source=source,
        hostname=_text(machine, "HostName", _own_info(machine, "HostName") or ""),
        kernel_release=_text(machine, "OSRelease", _own_info(machine, "OSRelease") or ""),
        warnings=tuple(warnings),
        l3_domains=l3,
    )


# --- parsing helpers ------------------------------------------------------------------


def _parse(xml_text: str | bytes) -> etree._Element:
    # Encode first: lxml refuses a str that carries an XML encoding declaration.
    data = xml_text.encode("utf-8") if isinstance(xml_text, str) else xml_text
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise TopologyError(f"cannot parse hwloc XML: {exc}") from None
    if root.tag != "topology":
        raise TopologyError(f"not an hwloc XML export: root element is <{root.tag}>, expected <topology>")
    return root


def _where(element: etree._Element) -> str:
    kind = element.get("type")
    return f"hwloc XML line {element.sourceline}: {f'{kind} object' if kind else f'<{element.tag}>'}"


def _number(text: str | None, where: str, what: str, limit: int) -> int:
    if text is None or not _DIGITS.fullmatch(text) or int(text) > limit:
        raise TopologyError(f"{where}: bad {what}={shown(text)}: not a whole number from 0 to {limit}")
    return int(text)


def _int(element: etree._Element, attr: str, limit: int = U32) -> int:
    """A required unsigned attribute, at most `limit`."""
    return _number(element.get(attr), _where(element), attr, limit)


def _size(element: etree._Element, attr: str) -> int:
    """A size in bytes (local_memory, cache_size); 0 when absent."""
    return 0 if element.get(attr) is None else _int(element, attr, U64)


def _decimal(element: etree._Element, attr: str, default: str) -> float:
    """hwloc 1.x's "%f" values: finite and non-negative, never NaN, inf or 1e999."""
    text = element.get(attr, default)
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not math.isfinite(value) or value > U32:
        raise TopologyError(f"{_where(element)}: bad {attr}={shown(text)}: not a number from 0 to {U32}")
    return value


def _mask(text: str | None) -> CpuSet:
    """hwloc bitmap "0x00000003,0xffffffff" (32-bit words, most significant first).

    A leading "0xf...f" word marks an infinite set; only the finite part is kept.
    """
    words = [w.strip() for w in (text or "").split(",") if w.strip()]
    if words and words[0].lower() == "0xf...f":
        words = words[1:]
    if len(words) > MAX_BITMAP_WORDS:
        raise TopologyError(f"hwloc XML: bitmap {shown(text)} names ids above {MAX_CPU_ID}")
    hexes = [w.lower().removeprefix("0x") for w in words]
    digits = "".join(h.rjust(8, "0") for h in hexes)
    if not re.fullmatch(r"[0-9a-f]*", digits) or any(len(h) > 8 for h in hexes):
        raise TopologyError(f"hwloc XML: bad bitmap {shown(text)}")
    value = int(digits or "0", 16)
    return CpuSet.from_iter(i for i in range(value.bit_length()) if value >> i & 1)


def _own_info(element: etree._Element, name: str) -> str | None:
    for info in element.iterfind("info"):
        if info.get("name") == name:
            return info.get("value")
    return None


def _text(element: etree._Element, name: str, value: str) -> str:
    """An <info> value bmslice prints and records, in its grammar (an attribute may hold &#10; or U+202E)."""
    try:
        return printable_text(value)
    except ValueError as exc:
        raise TopologyError(f"{_where(element)}: info {name}: {exc}; refused") from None


def _info(objects: list[etree._Element], name: str, warnings: list[str]) -> str:
    """An <info> found on a package first (where hwloc 2 puts CPU infos), else anywhere."""
    packages = [o for o in objects if o.get("type") in PACKAGE_TYPES]
    for obj in [*packages, *objects]:
        value = _own_info(obj, name)
        if value:
            return _text(obj, name, value.strip())
    warnings.append(f"hwloc XML has no {name} info")
    return ""


def _nearest(element: etree._Element, types: Iterable[str]) -> etree._Element | None:
    wanted = set(types)
    for ancestor in element.iterancestors("object"):
        if ancestor.get("type") in wanted:
            return ancestor
    return None


# --- CPUs -----------------------------------------------------------------------------


def _pu_id(pu: etree._Element) -> int:
    return _int(pu, "os_index", MAX_CPU_ID)


def _node_id(node: etree._Element) -> int:
    return _int(node, "os_index", MAX_NODE_ID)


def _pu_ids(container: etree._Element) -> CpuSet:
    return CpuSet.from_iter(_pu_id(pu) for pu in container.iter("object") if pu.get("type") == "PU")


def _pu_node(pu: etree._Element) -> int | None:
    """The lowest node in the PU's nodeset: its DRAM node when HBM or CXL nodes are local too.

    The kernel lists each CPU under exactly one node; the lowest local node is that one.
    """
    local = _mask(pu.get("nodeset"))
    if local:
        return local.min()
    node = _nearest(pu, ("NUMANode",))  # hwloc 1.x without nodesets on PUs
    return _node_id(node) if node is not None else None


def _read_cpu(pu: etree._Element) -> Cpu:
    pu_id = _pu_id(pu)
    core = _nearest(pu, ("Core",))
    package = _nearest(pu, PACKAGE_TYPES)
    die = _nearest(pu, ("Die",))
    return Cpu(
        id=pu_id,
        package=_int(package, "os_index") if package is not None else 0,
        core=_int(core, "os_index") if core is not None else pu_id,
        node=_pu_node(pu),
        siblings=_pu_ids(core) if core is not None else CpuSet.of(pu_id),
        die=_int(die, "os_index") if die is not None else 0,
    )


def _read_cpus(objects: list[etree._Element]) -> list[Cpu]:
    # hwloc only exports PUs it can use: offline CPUs are absent, not marked offline.
    cpus = [_read_cpu(o) for o in objects if o.get("type") == "PU"]
    if not cpus:
        raise TopologyError("hwloc XML has no PU objects")
    return sorted(cpus, key=lambda c: c.id)


def _is_l3(element: etree._Element) -> bool:
    """hwloc 2: type L3Cache; hwloc 1.x: type Cache at depth 3 (cache_type 0 unified, 1 data)."""
    kind = element.get("type")
    return kind == "L3Cache" or (kind == "Cache" and element.get("depth") == "3" and element.get("cache_type") != "2")


def _read_l3(objects: list[etree._Element], cpus: list[Cpu]) -> tuple[CacheDomain, ...]:
    """L3 caches with their cpuset and size; the kernel id is `os_index` when hwloc kept it."""
    elements = sorted((o for o in objects if _is_l3(o)), key=lambda o: _mask(o.get("cpuset")).min())
    found = []
    for ordinal, element in enumerate(elements):
        os_index = element.get("os_index")
        cache_id = _int(element, "os_index") if os_index is not None else ordinal
        found.append((cache_id, _mask(element.get("cpuset")), _size(element, "cache_size") // 1024))
    return l3_domains(found, cpus)


# --- NUMA nodes -----------------------------------------------------------------------


def _hugepages(node: etree._Element) -> tuple[Hugepages, ...]:
    """Every page_type but the smallest (the base page). hwloc has no free counts: all free."""
    pools = {_int(p, "size", U64) // 1024: _int(p, "count", U64) for p in node.iterfind("page_type")}
    if pools:
        del pools[min(pools)]
    return tuple(Hugepages(size, total, total) for size, total in sorted(pools.items()))


def _read_node(element: etree._Element, cpus: list[Cpu], distances: dict[int, tuple[int, ...]]) -> NumaNode:
    node_id = _node_id(element)
    return NumaNode(
        id=node_id,
        cpus=CpuSet.from_iter(c.id for c in cpus if c.node == node_id),
        memory_mib=_size(element, "local_memory") // (1024 * 1024),
        hugepages=_hugepages(element),
        distances=distances.get(node_id, ()),
    )


def _read_nodes(
    root: etree._Element,
    machine: etree._Element,
    objects: list[etree._Element],
    cpus: list[Cpu],
    warnings: list[str],
) -> list[NumaNode]:
    elements = [o for o in objects if o.get("type") == "NUMANode"]
    if not elements:
        return [_machine_as_node(machine, cpus, warnings)]
    node_ids = [_node_id(e) for e in elements]
    distances = _distances_v2(root, node_ids) or _distances_v1(machine, node_ids)
    if not distances and len(node_ids) == 1:
        distances = {node_ids[0]: (10,)}  # hwloc exports no trivial matrix; sysfs would say "10"
    nodes = sorted((_read_node(e, cpus, distances) for e in elements), key=lambda n: n.id)
    if any(p.total for n in nodes for p in n.hugepages):
        warnings.append("hwloc XML gives hugepage pool sizes only; assumed all free")
    return nodes


def _machine_as_node(machine: etree._Element, cpus: list[Cpu], warnings: list[str]) -> NumaNode:
    """hwloc 1.x on a non-NUMA machine has no NUMANode: memory sits on the Machine object."""
    warnings.append("hwloc XML has no NUMANode; assumed one node 0 holding every CPU")
    return NumaNode(
        id=0,
        cpus=CpuSet.from_iter(c.id for c in cpus),
        memory_mib=_size(machine, "local_memory") // (1024 * 1024),
        hugepages=_hugepages(machine),
        distances=(10,),
    )


def _rows(values: list[int], order: list[int]) -> dict[int, tuple[int, ...]]:
    """Square matrix in `order` -> each node's row, columns sorted by node id like sysfs."""
    n = len(order)
    by_pair = {(order[i], order[j]): values[i * n + j] for i in range(n) for j in range(n)}
    ids = sorted(order)
    return {a: tuple(by_pair[(a, b)] for b in ids) for a in ids}


def _distances_v2(root: etree._Element, node_ids: list[int]) -> dict[int, tuple[int, ...]]:
    """<distances2 type="NUMANode" indexing="os">: indexes, then values split over elements."""
    for matrix in root.iter("distances2"):
        if matrix.get("type") != "NUMANode" or matrix.get("indexing", "os") != "os":
            continue
        where = _where(matrix)
        indexes = " ".join(i.text or "" for i in matrix.iterfind("indexes")).split()
        order = [_number(x, where, "indexes", MAX_NODE_ID) for x in indexes]
        values = [
            _number(x, where, "u64values", U32)
            for x in " ".join(v.text or "" for v in matrix.iterfind("u64values")).split()
        ]
        if sorted(order) == sorted(node_ids) and len(values) == len(order) ** 2:
            return _rows(values, order)
    return {}


def _distances_v1(machine: etree._Element, node_ids: list[int]) -> dict[int, tuple[int, ...]]:
    """hwloc 1.x <distances latency_base=B><latency value=V/>...: distance V*B, objects in
    logical order, which for NUMA nodes is the order they appear in the document."""
    for matrix in machine.iter("distances"):
        values = [_decimal(lat, "value", "0") for lat in matrix.iterfind("latency")]
        nbobjs = _int(matrix, "nbobjs") if matrix.get("nbobjs") is not None else 0
        if nbobjs == len(node_ids) and len(values) == len(node_ids) ** 2:
            base = _decimal(matrix, "latency_base", "1")
            distances = [round(v * base) for v in values]
            if max(distances, default=0) > U32:
                raise TopologyError(f"{_where(matrix)}: a distance above {U32}")
            return _rows(distances, node_ids)
    return {}


# --- PCI devices and interfaces -------------------------------------------------------


def _pci_node(element: etree._Element) -> int | None:
    """Locality from the nearest ancestor with a nodeset: I/O objects carry none themselves.

    A device hanging off the Machine of a multi-node host has no single local node.
    """
    for ancestor in element.iterancestors("object"):
        nodeset = ancestor.get("nodeset")
        if nodeset is not None:
            local = _mask(nodeset)
            return local.min() if len(local) == 1 else None
    return None


def _checked(element: etree._Element, what: str, value: str, grammar: Callable[[str], str]) -> str:
    try:
        return grammar(value)
    except ValueError as exc:
        raise TopologyError(f"{_where(element)}: {what}: {exc}; refused") from None


def _net_children(element: etree._Element, address: str) -> list[NetInterface]:
    out = []
    for osdev in element.iterfind("object"):
        if osdev.get("type") != "OSDev" or osdev.get("osdev_type") != NETWORK_OSDEV:
            continue
        mac = _own_info(osdev, "Address")
        out.append(
            NetInterface(
                name=_checked(osdev, "name", osdev.get("name", ""), kernel_ifname),
                pci_address=address,
                mac=_checked(osdev, "Address", mac, link_address) if mac else None,
            )
        )
    return out


def _description(element: etree._Element) -> str | None:
    # Names come from pci.ids at export time, when hwloc found it.
    parts = [_own_info(element, "PCIVendor"), _own_info(element, "PCIDevice")]
    return " ".join(p for p in parts if p) or None


def _read_pci_device(element: etree._Element) -> tuple[PciDevice, list[NetInterface]]:
    """One PCIDev or Bridge with its network interfaces."""
    busid = element.get("pci_busid", "")
    address = canonical_pci_address(busid)
    match = _PCI_TYPE.match(element.get("pci_type", ""))
    if address is None or match is None:
        raise TopologyError(
            f"{_where(element)}: bad PCI object pci_busid={shown(busid)} pci_type={shown(element.get('pci_type'))}"
        )
    class_id, vendor, device = (g.lower() for g in match.groups())
    interfaces = _net_children(element, address)
    pci = PciDevice(
        address=address,
        # hwloc keeps class and subclass only; the programming interface is taken as 00.
        class_code=f"0x{class_id}00",
        vendor=f"0x{vendor}",
        device=f"0x{device}",
        numa_node=_pci_node(element),
        iommu_group=None,
        driver=None,
        interfaces=tuple(sorted(i.name for i in interfaces)),
        description=_description(element),
    )
    return pci, interfaces


def _read_pci(objects: list[etree._Element], warnings: list[str]) -> tuple[list[PciDevice], list[NetInterface]]:
    """PCIDev objects and PCI-to-PCI bridges (a host bridge has no pci_busid)."""
    devices: list[PciDevice] = []
    interfaces: list[NetInterface] = []
    for element in objects:
        if element.get("type") in ("PCIDev", "Bridge") and element.get("pci_busid"):
            pci, own = _read_pci_device(element)
            devices.append(pci)
            interfaces += own
    if not devices:
        warnings.append("hwloc XML has no PCI devices (exported without I/O discovery?)")
    return sorted(devices, key=lambda d: d.address), sorted(interfaces, key=lambda i: i.name)
