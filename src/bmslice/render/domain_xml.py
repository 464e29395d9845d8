"""Domain <-> libvirt domain XML, built and read with lxml.

Element order follows libvirt's own output so rendered files are stable and diff well.
No policy here: every decision was made in the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from bmslice.cpuset import CpuSet
from bmslice.errors import RenderError
from bmslice.model.plan import GuestTopology
from bmslice.render.domain_model import (
    BMSLICE_NS,
    BMSLICE_NS_PREFIX,
    Disk,
    Domain,
    DomainCell,
    ResctrlTune,
    VcpuSched,
    VfInterface,
)

_E = etree.Element
_Sub = etree.SubElement


def _pci_address(parent: etree._Element, address: str, **extra: str) -> None:
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    attrs = {**extra, "domain": f"0x{domain}", "bus": f"0x{bus}", "slot": f"0x{slot}", "function": f"0x{function}"}
    _Sub(parent, "address", attrs)


def _vf_interface(devices: etree._Element, vf: VfInterface, port: int | None = None) -> None:
    el = _Sub(devices, "interface", type="hostdev", managed="yes")
    _Sub(el, "mac", address=vf.mac)
    _Sub(el, "driver", name="vfio")
    if vf.address is None:  # render_plan refuses such a plan, apply resolves the address first
        raise RenderError("a VF interface without its PCI address: libvirt rejects it")
    _pci_address(_Sub(el, "source"), vf.address, type="pci")
    if vf.vlan is not None:
        _Sub(_Sub(el, "vlan"), "tag", id=str(vf.vlan))
    _guest_address(el, port)


def _cputune(root: etree._Element, dom: Domain) -> None:
    tune = _Sub(root, "cputune")
    for vcpu, cpus in dom.vcpupins:
        _Sub(tune, "vcpupin", vcpu=str(vcpu), cpuset=cpus.format())
    if dom.emulatorpin is not None:
        _Sub(tune, "emulatorpin", cpuset=dom.emulatorpin.format())
    for iothread, cpus in dom.iothreadpins:
        _Sub(tune, "iothreadpin", iothread=str(iothread), cpuset=cpus.format())
    for sched in dom.vcpusched:
        attrs = {"vcpus": sched.vcpus.format(), "scheduler": sched.scheduler}
        if sched.priority is not None:
            attrs["priority"] = str(sched.priority)
        _Sub(tune, "vcpusched", attrs)
    for cachetune in dom.cachetunes:
        el = _Sub(tune, "cachetune", vcpus=cachetune.vcpus.format())
        for cache_id, kib in cachetune.entries:
            _Sub(el, "cache", id=str(cache_id), level="3", type="both", size=str(kib), unit="KiB")
    for memorytune in dom.memorytunes:
        el = _Sub(tune, "memorytune", vcpus=memorytune.vcpus.format())
        for node, bandwidth in memorytune.entries:
            _Sub(el, "node", id=str(node), bandwidth=str(bandwidth))


def _memory_backing(root: etree._Element, dom: Domain) -> None:
    if not (dom.hugepage_kib or dom.nosharepages or dom.memory_locked):
        return
    backing = _Sub(root, "memoryBacking")
    if dom.hugepage_kib:
        _Sub(_Sub(backing, "hugepages"), "page", size=str(dom.hugepage_kib), unit="KiB")
    if dom.nosharepages:
        _Sub(backing, "nosharepages")
    if dom.memory_locked:
        _Sub(backing, "locked")


def _features(root: etree._Element, dom: Domain) -> None:
    features = _Sub(root, "features")
    _Sub(features, "acpi")
    _Sub(features, "apic")
    if dom.kvm_hint_dedicated:
        _Sub(_Sub(features, "kvm"), "hint-dedicated", state="on")
    if dom.pmu is not None:
        _Sub(features, "pmu", state="on" if dom.pmu else "off")


def _cpu(root: etree._Element, dom: Domain) -> None:
    attrs = {"mode": dom.cpu_mode}
    if dom.cpu_mode == "host-passthrough":
        attrs.update(check="none", migratable="off")
    cpu = _Sub(root, "cpu", attrs)
    if dom.topology is not None:
        t = dom.topology
        _Sub(cpu, "topology", sockets=str(t.sockets), dies=str(t.dies), cores=str(t.cores), threads=str(t.threads))
    for feature in dom.required_features:
        _Sub(cpu, "feature", policy="require", name=feature)
    for feature in dom.disabled_features:
        _Sub(cpu, "feature", policy="disable", name=feature)
    if dom.cells:
        numa = _Sub(cpu, "numa")
        for cell in dom.cells:
            el = _Sub(numa, "cell", id=str(cell.id), cpus=cell.cpus.format(), memory=str(cell.memory_kib), unit="KiB")
            if cell.distances:
                distances = _Sub(el, "distances")
                for other, value in enumerate(cell.distances):
                    _Sub(distances, "sibling", id=str(other), value=str(value))


def _disk(devices: etree._Element, disk: Disk) -> None:
    el = _Sub(devices, "disk", type="file", device=disk.device)
    driver = {"name": "qemu", "type": disk.format}
    if disk.iothread is not None:
        driver["iothread"] = str(disk.iothread)
    _Sub(el, "driver", driver)
    _Sub(el, "source", file=disk.path)
    _Sub(el, "target", dev=disk.target, bus=disk.bus)
    if disk.readonly:
        _Sub(el, "readonly")


def _cell_ports(devices: etree._Element, dom: Domain) -> dict[str, int]:
    """One pcie-expander-bus per guest cell that has devices (bound to the cell: the guest's
    kernel reports the cell as the devices' NUMA node), a root port on it per device; the
    controller index of each device's root port, by the device's host address."""
    cell_of = dict(dom.device_cells)
    index = 1  # 0 is the pcie-root
    expander: dict[int, int] = {}
    for cell in sorted(set(cell_of.values())):
        el = _Sub(devices, "controller", type="pci", index=str(index), model="pcie-expander-bus")
        _Sub(_Sub(el, "target"), "node").text = str(cell)
        expander[cell] = index
        index += 1
    ports: dict[str, int] = {}
    slots: dict[int, int] = {}
    for address, cell in dom.device_cells:
        bus = expander[cell]
        el = _Sub(devices, "controller", type="pci", index=str(index), model="pcie-root-port")
        _pci_address(el, f"0000:{bus:02x}:{slots.get(bus, 0):02x}.0", type="pci")
        slots[bus] = slots.get(bus, 0) + 1
        ports[address] = index
        index += 1
    return ports


def _guest_address(parent: etree._Element, port: int | None) -> None:
    if port is not None:
        _pci_address(parent, f"0000:{port:02x}:00.0", type="pci")


def _devices(root: etree._Element, dom: Domain) -> None:
    devices = _Sub(root, "devices")
    ports = _cell_ports(devices, dom)
    for disk in dom.disks:
        _disk(devices, disk)
    for address in dom.hostdevs:
        hostdev = _Sub(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
        _Sub(hostdev, "driver", name="vfio")
        _pci_address(_Sub(hostdev, "source"), address)
        _guest_address(hostdev, ports.get(address))
    for vf in dom.vf_interfaces:
        _vf_interface(devices, vf, ports.get(vf.address) if vf.address else None)
    serial = _Sub(devices, "serial", type="pty")
    _Sub(serial, "target", port="0")
    console = _Sub(devices, "console", type="pty")
    _Sub(console, "target", type="serial", port="0")
    _Sub(devices, "memballoon", model="none")  # no ballooning: memory is pinned for VFIO anyway


def to_element(dom: Domain) -> etree._Element:
    root = _E("domain", type=dom.type)
    _Sub(root, "name").text = dom.name
    _Sub(root, "uuid").text = dom.uuid
    if dom.plan_json is not None:
        meta = _Sub(root, "metadata")
        _Sub(meta, f"{{{BMSLICE_NS}}}slice", nsmap={"bmslice": BMSLICE_NS}).text = dom.plan_json
    _Sub(root, "memory", unit="KiB").text = str(dom.memory_kib)
    _Sub(root, "currentMemory", unit="KiB").text = str(dom.memory_kib)
    if dom.hard_limit_kib is not None:
        _Sub(_Sub(root, "memtune"), "hard_limit", unit="KiB").text = str(dom.hard_limit_kib)
    _memory_backing(root, dom)
    _Sub(root, "vcpu", placement="static").text = str(dom.vcpus)
    if dom.iothreads:
        _Sub(root, "iothreads").text = str(dom.iothreads)
    _cputune(root, dom)
    if dom.numa_nodeset is not None and dom.numa_mode is not None:
        numatune = _Sub(root, "numatune")
        _Sub(numatune, "memory", mode=dom.numa_mode, nodeset=dom.numa_nodeset.format())
        for cell in dom.cells:
            _Sub(numatune, "memnode", cellid=str(cell.id), mode=dom.numa_mode, nodeset=str(cell.host_node))
    os_el = _Sub(root, "os")
    _Sub(os_el, "type", arch="x86_64", machine="q35").text = "hvm"
    _Sub(os_el, "boot", dev="hd")
    _features(root, dom)
    _cpu(root, dom)
    _Sub(root, "clock", offset="utc")
    _Sub(root, "on_poweroff").text = "destroy"
    _Sub(root, "on_reboot").text = "restart"
    _Sub(root, "on_crash").text = "destroy"
    _devices(root, dom)
    return root


def to_xml(dom: Domain) -> str:
    return etree.tostring(to_element(dom), pretty_print=True, encoding="unicode")


# --- reading back -----------------------------------------------------------------


def _int(el: etree._Element | None, default: int = 0) -> int:
    return int(el.text) if el is not None and el.text else default


def _kib(el: etree._Element | None) -> int:
    if el is None or not el.text:
        return 0
    return _to_kib(el.text, el.get("unit"))


def _to_kib(value: str, unit: str | None) -> int:
    factor = {"b": 1 / 1024, "bytes": 1 / 1024, "kib": 1, "k": 1, "mib": 1024, "m": 1024, "gib": 1048576, "g": 1048576}
    return int(int(value) * factor.get((unit or "KiB").lower(), 1))


def _read_tunes(tune: etree._Element | None, tag: str, child: str, key: str, value: str) -> tuple[ResctrlTune, ...]:
    """<cachetune>s (L3 entries, sizes in KiB whatever unit libvirt wrote) or <memorytune>s."""
    out = []
    for el in tune.findall(tag) if tune is not None else []:
        entries = []
        for item in el.findall(child):
            if child == "cache" and item.get("level") != "3":
                continue
            amount = (
                _to_kib(item.get(value, "0"), item.get("unit", "B")) if child == "cache" else int(item.get(value, "0"))
            )
            entries.append((int(item.get(key, "0")), amount))
        out.append(ResctrlTune(CpuSet.parse(el.get("vcpus", "")), tuple(sorted(entries))))
    return tuple(out)


def _address_text(el: etree._Element) -> str:
    def part(name: str, width: int) -> str:
        return f"{int(el.get(name, '0'), 0):0{width}x}"

    return f"{part('domain', 4)}:{part('bus', 2)}:{part('slot', 2)}.{int(el.get('function', '0'), 0)}"


def _read_topology(cpu: etree._Element | None) -> GuestTopology | None:
    topo = cpu.find("topology") if cpu is not None else None
    if topo is None:
        return None
    return GuestTopology(
        int(topo.get("sockets", "1")),
        int(topo.get("cores", "1")),
        int(topo.get("threads", "1")),
        int(topo.get("dies", "1")),
    )


def _read_disks(root: etree._Element) -> tuple[Disk, ...]:
    out = []
    for el in root.findall("devices/disk"):
        source, target, driver = el.find("source"), el.find("target"), el.find("driver")
        if source is None or target is None or source.get("file") is None:
            continue
        iothread = driver.get("iothread") if driver is not None else None
        out.append(
            Disk(
                path=source.get("file", ""),
                target=target.get("dev", ""),
                device=el.get("device", "disk"),
                format=driver.get("type", "raw") if driver is not None else "raw",
                bus=target.get("bus", ""),
                iothread=int(iothread) if iothread else None,
                readonly=el.find("readonly") is not None,
            )
        )
    return tuple(out)


def _read_vf_interfaces(root: etree._Element) -> tuple[VfInterface, ...]:
    out = []
    for el in root.findall("devices/interface[@type='hostdev']"):
        addr = el.find("source/address")
        if addr is None:
            continue
        mac = el.find("mac")
        tag = el.find("vlan/tag")
        out.append(
            VfInterface(
                _address_text(addr),
                mac.get("address", "") if mac is not None else "",
                int(tag.get("id", "0")) if tag is not None else None,
            )
        )
    return tuple(out)


def _read_vcpusched(tune: etree._Element | None) -> tuple[VcpuSched, ...]:
    """One VcpuSched per (scheduler, priority): libvirt writes <vcpusched vcpus='2-7'> back as
    one element per vCPU, which must read as the same setting."""
    merged: dict[tuple[str, int | None], CpuSet] = {}
    for el in tune.findall("vcpusched") if tune is not None else []:
        key = (el.get("scheduler", ""), _opt_int(el.get("priority")))
        merged[key] = merged.get(key, CpuSet()) | CpuSet.parse(el.get("vcpus", ""))
    return tuple(VcpuSched(vcpus, scheduler, priority) for (scheduler, priority), vcpus in merged.items())


def _opt_int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip() else None


def _state(el: etree._Element | None) -> bool | None:
    """A feature's state: None when absent; a bare element (no state attribute) means on."""
    return None if el is None else el.get("state", "on") == "on"


def _features_named(cpu: etree._Element | None, policy: str) -> tuple[str, ...]:
    found = cpu.findall("feature") if cpu is not None else []
    return tuple(f.get("name", "") for f in found if f.get("policy") == policy)


def _read_cells(root: etree._Element) -> tuple[DomainCell, ...]:
    bound = {int(m.get("cellid", "0")): CpuSet.parse(m.get("nodeset", "")) for m in root.findall("numatune/memnode")}
    out = []
    for el in root.findall("cpu/numa/cell"):
        cell = int(el.get("id", "0"))
        nodes = bound.get(cell, CpuSet())
        distances = tuple(int(s.get("value", "0")) for s in el.findall("distances/sibling"))
        memory = _to_kib(el.get("memory", "0"), el.get("unit", "KiB"))
        out.append(DomainCell(cell, CpuSet.parse(el.get("cpus", "")), memory, nodes.min() if nodes else -1, distances))
    return tuple(out)


def _read_device_cells(root: etree._Element) -> tuple[tuple[str, int], ...]:
    """Host address -> guest cell, for devices behind a pcie-expander-bus bound to a cell."""
    controllers = {el.get("index"): el for el in root.findall("devices/controller[@type='pci']")}

    def cell_behind(address: etree._Element | None) -> int | None:
        if address is None or address.get("type", "pci") != "pci":
            return None
        port = controllers.get(str(int(address.get("bus", "0"), 0)))
        upstream = port.find("address") if port is not None else None
        if upstream is None:
            return None
        expander = controllers.get(str(int(upstream.get("bus", "0"), 0)))
        if expander is None or expander.get("model") != "pcie-expander-bus":
            return None
        node = expander.findtext("target/node")
        return int(node) if node is not None and node.strip() else None

    out = []
    for dev in (*root.findall("devices/hostdev[@type='pci']"), *root.findall("devices/interface[@type='hostdev']")):
        source = dev.find("source/address")
        cell = cell_behind(dev.find("address"))
        if source is not None and cell is not None:
            out.append((_address_text(source), cell))
    return tuple(sorted(out))


def from_xml(text: str | bytes) -> Domain:
    """Parse domain XML (as libvirt returns it) into a Domain; unknown elements are ignored."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(text.encode() if isinstance(text, str) else text, parser)
    tune = root.find("cputune")
    emulator = tune.find("emulatorpin") if tune is not None else None
    numa = root.find("numatune/memory")
    cpu = root.find("cpu")
    page = root.find("memoryBacking/hugepages/page")
    meta = root.find(f"metadata/{{{BMSLICE_NS}}}slice")
    hard_limit = root.find("memtune/hard_limit")
    return Domain(
        name=root.findtext("name", ""),
        uuid=root.findtext("uuid", ""),
        type=root.get("type", ""),
        memory_kib=_kib(root.find("memory")),
        vcpus=_int(root.find("vcpu")),
        iothreads=_int(root.find("iothreads")),
        vcpupins=tuple(
            (int(p.get("vcpu", "0")), CpuSet.parse(p.get("cpuset", "")))
            for p in (tune.findall("vcpupin") if tune is not None else [])
        ),
        emulatorpin=CpuSet.parse(emulator.get("cpuset", "")) if emulator is not None else None,
        iothreadpins=tuple(
            (int(p.get("iothread", "0")), CpuSet.parse(p.get("cpuset", "")))
            for p in (tune.findall("iothreadpin") if tune is not None else [])
        ),
        numa_mode=numa.get("mode") if numa is not None else None,
        numa_nodeset=CpuSet.parse(numa.get("nodeset", "")) if numa is not None else None,
        cpu_mode=cpu.get("mode", "") if cpu is not None else "",
        topology=_read_topology(cpu),
        disabled_features=_features_named(cpu, "disable"),
        hostdevs=tuple(_address_text(addr) for addr in root.findall("devices/hostdev[@type='pci']/source/address")),
        hugepage_kib=int(page.get("size", "0")) if page is not None else None,
        vf_interfaces=_read_vf_interfaces(root),
        disks=_read_disks(root),
        plan_json=meta.text if meta is not None else None,
        vcpusched=_read_vcpusched(tune),
        memory_locked=root.find("memoryBacking/locked") is not None,
        nosharepages=root.find("memoryBacking/nosharepages") is not None,
        hard_limit_kib=_kib(hard_limit) if hard_limit is not None else None,
        pmu=_state(root.find("features/pmu")),
        kvm_hint_dedicated=bool(_state(root.find("features/kvm/hint-dedicated"))),
        required_features=_features_named(cpu, "require"),
        cachetunes=_read_tunes(tune, "cachetune", "cache", "id", "size"),
        memorytunes=_read_tunes(tune, "memorytune", "node", "id", "bandwidth"),
        cells=_read_cells(root),
        device_cells=_read_device_cells(root),
    )


@dataclass(frozen=True)
class SliceMetadata:
    """A domain's bmslice metadata element as libvirt keeps it: any version's, any content."""

    namespace: str  # BMSLICE_NS for a record this version reads
    text: str  # the record: plan JSON
    elements: int  # child elements, which no bmslice version writes
    copies: int = 1  # bmslice elements in <metadata>: libvirt keeps one per namespace, a hand edit more


def slice_metadata(text: str | bytes) -> SliceMetadata | None:
    """The (first) bmslice element of a domain's <metadata> (None: the domain is not a slice)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(text.encode() if isinstance(text, str) else text, parser)
    found = [
        el
        for el in root.iterfind("metadata/*")
        if isinstance(el.tag, str)  # not a comment
        and (etree.QName(el).namespace or "").startswith(BMSLICE_NS_PREFIX)
    ]
    if not found:
        return None
    first = found[0]
    return SliceMetadata(etree.QName(first).namespace or "", first.text or "", len(first), len(found))
