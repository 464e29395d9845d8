"""Discovery from `lstopo --of xml` exports; fixtures and the commands that made them are in
tests/data/hwloc/ (see its README)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmslice.cpuset import CpuSet
from bmslice.errors import TopologyError
from bmslice.model.topology import HostTopology, Hugepages, NetInterface, PciDevice
from bmslice.topology.hwloc import UNKNOWN_FROM_HWLOC, _mask, topology_from_hwloc

DATA = Path(__file__).parent / "data" / "hwloc"


def load(name: str) -> HostTopology:
    return topology_from_hwloc((DATA / name).read_bytes(), f"hwloc:{name}")


# --- server1 from the design note -----------------------------------------------------


@pytest.mark.parametrize("name", ["server1.xml", "server1-v1.xml"])
def test_server1_matches_the_design_note(name: str) -> None:
    topo = load(name)
    # lscpu: 24 CPUs, 2 sockets x 6 cores x 2 threads; node0 even, node1 odd.
    assert topo.online_cpus == CpuSet.parse("0-23")
    assert topo.node(0).cpus == CpuSet.parse("0,2,4,6,8,10,12,14,16,18,20,22")
    assert topo.node(1).cpus == CpuSet.parse("1,3,5,7,9,11,13,15,17,19,21,23")
    # thread_siblings_list: "0,12", "1,13", ... "11,23".
    assert sorted(str(c.siblings) for c in topo.cpus) == sorted(f"{n},{n + 12}" for n in range(12) for _ in (0, 1))
    for cpu in topo.cpus:
        assert (cpu.package, cpu.node) == (cpu.id % 2, cpu.id % 2)
    assert [core.cpus for core in topo.cores] == [CpuSet.of(n, n + 12) for n in range(12)]
    assert [core.package for core in topo.cores] == [n % 2 for n in range(12)]
    assert topo.smt and topo.packages == (0, 1)
    assert [(n.memory_mib, n.distances, n.hugepages) for n in topo.numa_nodes] == [
        (32768, (10, 21), ()),
        (32768, (21, 10), ()),
    ]
    assert topo.cpu_vendor == "GenuineIntel"
    assert topo.cpu_model == "Intel(R) Xeon(R) CPU E5-2620 v2 @ 2.10GHz"


def test_server1_v1_and_v2_agree() -> None:
    v2, v1 = load("server1.xml"), load("server1-v1.xml")
    assert (v1.cpus, v1.numa_nodes) == (v2.cpus, v2.numa_nodes)


def test_server1_what_hwloc_cannot_tell() -> None:
    topo = load("server1.xml")
    assert (topo.kernel_cmdline, topo.default_route_interface, topo.iommu_active) == ("", None, None)
    assert topo.cpu_flags == frozenset() and topo.pci_devices == ()
    assert UNKNOWN_FROM_HWLOC in topo.warnings
    assert any("no PCI devices" in w for w in topo.warnings)
    assert topo.source == "hwloc:server1.xml"


def test_str_and_bytes_input_agree() -> None:
    raw = (DATA / "server1.xml").read_bytes()
    assert topology_from_hwloc(raw.decode(), "s") == topology_from_hwloc(raw, "s")


# --- other shapes ---------------------------------------------------------------------


def test_two_packages_with_two_numa_nodes_each() -> None:
    topo = load("2pack-2numa.xml")
    assert [(n.id, n.cpus, n.memory_mib) for n in topo.numa_nodes] == [
        (node, CpuSet.parse(f"{8 * node}-{8 * node + 7}"), 16384) for node in range(4)
    ]
    assert [n.distances for n in topo.numa_nodes] == [
        (10, 12, 32, 32),
        (12, 10, 32, 32),
        (32, 32, 10, 12),
        (32, 32, 12, 10),
    ]
    for cpu in topo.cpus:
        assert (cpu.package, cpu.die, cpu.node) == (cpu.id // 16, cpu.id // 8, cpu.id // 8)
        assert cpu.siblings == CpuSet.of(cpu.id & ~1, cpu.id | 1)
    assert len(topo.cores) == 16 and topo.packages == (0, 1)
    assert topo.cpu_vendor == "AuthenticAMD" and topo.cpu_model == ""
    assert any("no CPUModel" in w for w in topo.warnings)


def test_no_smt() -> None:
    topo = load("no-smt.xml")
    assert topo.online_cpus == CpuSet.parse("0-7") and not topo.smt
    assert all(core.threads == 1 for core in topo.cores) and len(topo.cores) == 8
    assert [(n.id, n.memory_mib, n.distances) for n in topo.numa_nodes] == [(0, 8192, (10,))]
    assert topo.cpu_vendor == ""
    assert any("no CPUVendor" in w for w in topo.warnings)


def test_pci_locality_devices() -> None:
    topo = load("pci-locality.xml")
    assert [(d.address, d.class_code, d.numa_node, d.interfaces) for d in topo.pci_devices] == [
        ("0000:00:17.0", "0x010600", None, ()),  # under the Machine: no single local node
        ("0000:17:00.0", "0x060400", 0, ()),  # PCI-to-PCI bridge
        ("0000:18:00.0", "0x020000", 0, ("eno1",)),
        ("0000:18:00.1", "0x020000", 0, ("eno2",)),
        ("0000:af:00.0", "0x020700", 1, ("ib0",)),  # mlx5_0 is an OpenFabrics device, not a netdev
    ]
    assert topo.pci("0000:18:00.0") == PciDevice(
        address="0000:18:00.0",
        class_code="0x020000",
        vendor="0x8086",
        device="0x1572",
        numa_node=0,
        iommu_group=None,
        driver=None,
        interfaces=("eno1",),
        description="Intel Corporation Ethernet Controller X710 for 10GbE SFP+",
    )
    bridge = topo.pci("0000:17:00.0")
    assert bridge is not None and bridge.is_bridge
    assert topo.interface("eno2") == NetInterface("eno2", "0000:18:00.1", "3c:fd:fe:00:00:02")
    assert [i.name for i in topo.net_interfaces] == ["eno1", "eno2", "ib0"]


def test_pci_locality_host() -> None:
    topo = load("pci-locality.xml")
    assert topo.hostname == "pcibox"
    assert topo.node(0).hugepages == (Hugepages(2048, 512, 512), Hugepages(1048576, 0, 0))
    assert topo.node(1).hugepages == (Hugepages(2048, 0, 0), Hugepages(1048576, 2, 2))
    assert [n.distances for n in topo.numa_nodes] == [(10, 21), (21, 10)]
    assert any("assumed all free" in w for w in topo.warnings)
    assert [c.cpus for c in topo.cores] == [CpuSet.of(0, 2), CpuSet.of(1, 3)]


def test_real_machine() -> None:
    topo = load("real-machine.xml")
    assert topo.online_cpus == CpuSet.of(0, 1) and not topo.smt
    assert [(n.id, n.cpus, n.memory_mib) for n in topo.numa_nodes] == [(0, CpuSet.of(0, 1), 5082)]
    assert (topo.cpu_vendor, topo.cpu_model, topo.hostname) == ("AuthenticAMD", "AMD EPYC", "vm")
    nic = topo.pci_by_interface("eth0")
    assert nic is not None and nic.is_network
    assert (nic.address, nic.vendor, nic.device) == ("0000:00:03.0", "0x1af4", "0x1041")
    assert topo.interface("eth0") == NetInterface("eth0", "0000:00:03.0", "02:fc:00:00:00:01")


# --- format details and errors --------------------------------------------------------

V1_NO_NUMA = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE topology SYSTEM "hwloc.dtd">
<topology>
  <object type="Machine" os_index="0" cpuset="0x00000003" local_memory="4294967296">
    <page_type size="4096" count="1048576"/>
    <info name="CPUVendor" value="GenuineIntel"/>
    <object type="Socket" os_index="0" cpuset="0x00000003">
      <object type="Core" os_index="0" cpuset="0x00000003">
        <object type="PU" os_index="0" cpuset="0x00000001"/>
        <object type="PU" os_index="1" cpuset="0x00000002"/>
      </object>
    </object>
  </object>
</topology>"""


def test_hwloc1_without_numa_node() -> None:
    topo = topology_from_hwloc(V1_NO_NUMA, "x")
    assert [(n.id, n.cpus, n.memory_mib) for n in topo.numa_nodes] == [(0, CpuSet.of(0, 1), 4096)]
    assert all(c.node == 0 and c.siblings == CpuSet.of(0, 1) for c in topo.cpus)
    assert topo.cpu_vendor == "GenuineIntel"  # found on the Machine when no package has it


def test_multiword_masks() -> None:
    assert _mask("0x00000001,0x00000000") == CpuSet.of(32)
    assert _mask("0xf...f,0x00000003") == CpuSet.of(0, 1)
    assert _mask("0x5") == CpuSet.of(0, 2)


def test_no_dtd_or_external_entity_is_loaded() -> None:
    leaky = V1_NO_NUMA.replace(
        '<!DOCTYPE topology SYSTEM "hwloc.dtd">',
        '<!DOCTYPE topology SYSTEM "http://127.0.0.1:9/hwloc.dtd" [<!ENTITY leak SYSTEM "file:///etc/hostname">]>',
    ).replace('value="GenuineIntel"', 'value="&leak;"')
    with pytest.raises(TopologyError, match="external entity"):
        topology_from_hwloc(leaky, "x")


@pytest.mark.parametrize(
    ("xml", "fragment"),
    [
        ("not xml", "cannot parse hwloc XML"),
        ("<capabilities/>", "expected <topology>"),
        ('<topology><object type="Machine" os_index="0"/></topology>', "no PU objects"),
        ('<topology><object type="Machine"><object type="PU" os_index="x"/></object></topology>', "bad os_index"),
    ],
)
def test_bad_input_raises_topology_error(xml: str, fragment: str) -> None:
    with pytest.raises(TopologyError, match=fragment):
        topology_from_hwloc(xml, "x")
