"""Discovery from sysfs/procfs trees: synthetic (treebuilder), committed, captured and live."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bmslice.cpuset import CpuSet
from bmslice.errors import TopologyError
from bmslice.model.topology import HostTopology, Hugepages, canonical_pci_address
from bmslice.topology.sysfs import read_host_tree
from treebuilder import (
    CpuSpec,
    HostSpec,
    NodeMemory,
    PciSpec,
    cpu_layout,
    server1_spec,
    snapshot,
    vf_specs,
    write_tree,
)

REPO = Path(__file__).resolve().parents[1]
SERVER1 = REPO / "examples" / "server1" / "host"
DEBIAN12_VM2 = REPO / "tests" / "data" / "trees" / "debian12-vm2"
GATHER = REPO / "scripts" / "gather-host-tree"


def build(tmp_path: Path, spec: HostSpec) -> Path:
    return write_tree(spec, tmp_path / "host")


def discover(tmp_path: Path, spec: HostSpec) -> HostTopology:
    return read_host_tree(build(tmp_path, spec))


def without_source(topo: HostTopology) -> HostTopology:
    return replace(topo, source="", warnings=())


NIC = PciSpec("0000:01:00.0", iommu_group=20, driver="ixgbe", interfaces=("eno1",))


# --- the design note's server ---------------------------------------------------------


def test_server1_cpus_and_nodes() -> None:
    topo = read_host_tree(SERVER1)
    assert topo.cpu_vendor == "GenuineIntel"
    assert topo.cpu_model == "Intel(R) Xeon(R) CPU E5-2620 v2 @ 2.10GHz"
    assert "vmx" in topo.cpu_flags
    assert topo.hostname == "server1"
    assert [c.id for c in topo.cpus] == list(range(24))
    assert topo.online_cpus == CpuSet.parse("0-23")
    for n in range(12):
        assert topo.cpus[n].siblings == CpuSet.of(n, n + 12)
        assert topo.cpus[n + 12].siblings == CpuSet.of(n, n + 12)
        assert topo.cpus[n].package == topo.cpus[n + 12].package == n % 2
        assert topo.cpus[n].core == topo.cpus[n + 12].core == n // 2
    assert [n.id for n in topo.numa_nodes] == [0, 1]
    assert topo.node(0).cpus == CpuSet.from_iter(range(0, 24, 2))
    assert topo.node(1).cpus == CpuSet.from_iter(range(1, 24, 2))
    assert all(c.node == c.id % 2 for c in topo.cpus)
    assert topo.node(0).memory_mib == topo.node(1).memory_mib == 32768
    assert topo.node(0).distances == (10, 21)
    assert topo.node(0).hugepages_of(2048) == Hugepages(2048, 0, 0)
    assert len(topo.cores) == 12 and topo.smt
    assert topo.warnings == ()


def test_server1_devices_and_proc() -> None:
    topo = read_host_tree(SERVER1)
    assert topo.kernel_cmdline.endswith("ro intel_iommu=on")
    assert topo.iommu_active is True
    assert topo.default_route_interface == "eno3"
    nics = [d for d in topo.pci_devices if d.is_network]
    assert [(d.address, d.interfaces, d.numa_node, d.iommu_group, d.driver, d.sriov_totalvfs) for d in nics] == [
        ("0000:01:00.0", ("eno1",), 0, 25, "ixgbe", 63),
        ("0000:01:00.1", ("eno2",), 0, 26, "ixgbe", 63),
        ("0000:08:00.0", ("eno3",), 0, 30, "igb", 7),
        ("0000:08:00.1", ("eno4",), 0, 31, "igb", 7),
    ]
    assert {(d.vendor, d.device, d.class_code, d.sriov_numvfs) for d in nics[:2]} == {
        ("0x8086", "0x1528", "0x020000", 0)
    }
    assert nics[2].device == "0x1521"
    bridge = topo.pci("0000:00:01.0")
    assert bridge is not None and bridge.is_bridge and bridge.driver == "pcieport" and bridge.iommu_group == 1
    assert [i.name for i in topo.net_interfaces] == ["eno1", "eno2", "eno3", "eno4", "lo", "virbr0"]
    eno1 = topo.interface("eno1")
    assert eno1 is not None and eno1.pci_address == "0000:01:00.0" and eno1.master is None
    virbr0 = topo.interface("virbr0")
    assert virbr0 is not None and virbr0.pci_address is None


def test_server1_tree_matches_its_builder(tmp_path: Path) -> None:
    """The committed tree is generated; regenerating it must give identical files and links."""
    regenerated = build(tmp_path, server1_spec())
    assert snapshot(regenerated) == snapshot(SERVER1)


# --- CPU numbering and NUMA layouts ---------------------------------------------------


def test_no_smt(tmp_path: Path) -> None:
    topo = discover(tmp_path, HostSpec(cpus=cpu_layout(1, 4, 1)))
    assert all(c.siblings == CpuSet.of(c.id) for c in topo.cpus)
    assert not topo.smt and len(topo.cores) == 4


def test_adjacent_siblings(tmp_path: Path) -> None:
    topo = discover(tmp_path, HostSpec(cpus=cpu_layout(2, 4, 2, siblings="adjacent")))
    assert topo.cpus[0].siblings == CpuSet.of(0, 1)
    assert topo.cpus[7].siblings == CpuSet.of(6, 7)
    assert [c.package for c in topo.cpus] == [0] * 8 + [1] * 8
    assert [core.cpus for core in topo.cores][:2] == [CpuSet.of(0, 1), CpuSet.of(2, 3)]


def test_amd_several_nodes_per_socket(tmp_path: Path) -> None:
    spec = HostSpec(cpus=cpu_layout(2, 8, 2, nodes_per_socket=4), vendor="AuthenticAMD")
    topo = discover(tmp_path, spec)
    assert topo.cpu_vendor == "AuthenticAMD" and "svm" in topo.cpu_flags
    assert [n.id for n in topo.numa_nodes] == list(range(8))
    assert topo.node(0).cpus == CpuSet.of(0, 1, 16, 17)
    assert topo.node(7).cpus == CpuSet.of(14, 15, 30, 31)
    assert topo.node(0).distances == (10, 16, 16, 16, 21, 21, 21, 21)
    assert {c.package for c in topo.cpus if c.node == 5} == {1}
    assert topo.cpus[16].siblings == CpuSet.of(0, 16)


def test_explicit_cpu_table(tmp_path: Path) -> None:
    """An explicit cpu -> (package, core, node) table: the design note's interleaved layout."""
    table = tuple(CpuSpec(cpu, package=cpu % 2, core=cpu % 12 // 2, node=cpu % 2) for cpu in range(24))
    topo = discover(tmp_path, HostSpec(cpus=table))
    assert topo.node(0).cpus == CpuSet.from_iter(range(0, 24, 2))
    assert topo.cpus[3].siblings == CpuSet.of(3, 15)
    assert table == cpu_layout(2, 6, 2, socket_order="interleave")


def test_offline_cpus_are_kept(tmp_path: Path) -> None:
    # Spread numbering on 2x6x2: CPU 13 is core 1 of socket 0 (sibling of 1); 19 is core 1 of socket 1.
    topo = discover(tmp_path, HostSpec(cpus=cpu_layout(2, 6, 2, offline={13, 19})))
    assert len(topo.cpus) == 24
    cpu13, cpu19 = topo.cpus[13], topo.cpus[19]
    assert not cpu13.online and not cpu19.online
    assert (cpu13.package, cpu13.node, cpu13.siblings) == (0, 0, CpuSet.of(13))
    assert (cpu19.package, cpu19.node) == (1, 1)
    assert topo.cpus[1].siblings == CpuSet.of(1) and topo.cpus[1].online
    assert topo.online_cpus == CpuSet.parse("0-23,^13,^19")
    assert CpuSet.of(1) in [core.cpus for core in topo.cores]
    assert 13 not in topo.node(0).cpus  # the kernel drops offline CPUs from node cpulists


def test_no_numa_support(tmp_path: Path) -> None:
    spec = HostSpec(cpus=cpu_layout(1, 4, 2), numa=False, node_memory={0: NodeMemory(8192, 4096)})
    topo = discover(tmp_path, spec)
    assert [n.id for n in topo.numa_nodes] == [0]
    assert topo.node(0).cpus == CpuSet.parse("0-7")
    assert (topo.node(0).memory_mib, topo.node(0).free_mib) == (8192, 4096)
    assert all(c.node == 0 for c in topo.cpus)


def test_node_hugepages(tmp_path: Path) -> None:
    pools = ((2048, 512, 500), (1048576, 4, 4))
    topo = discover(tmp_path, HostSpec(cpus=cpu_layout(1, 2, 1), node_memory={0: NodeMemory(4096, hugepages=pools)}))
    assert topo.node(0).hugepages == (Hugepages(2048, 512, 500), Hugepages(1048576, 4, 4))


# --- PCI devices and interfaces -------------------------------------------------------


def test_pci_numa_node_minus_one_is_unknown(tmp_path: Path) -> None:
    topo = discover(tmp_path, HostSpec(cpus=cpu_layout(2, 2, 1), pci=(replace(NIC, numa_node=-1),)))
    dev = topo.pci("0000:01:00.0")
    assert dev is not None and dev.numa_node is None
    assert any("0000:01:00.0" in w and "numa_node -1" in w for w in topo.warnings)


def test_numa_node_minus_one_on_one_node_is_no_warning(tmp_path: Path) -> None:
    """With one node every device is local to it: -1 is what such firmware says, not a problem."""
    topo = discover(tmp_path, HostSpec(cpus=cpu_layout(1, 2, 1), pci=(replace(NIC, numa_node=-1),)))
    dev = topo.pci("0000:01:00.0")
    assert dev is not None and dev.numa_node is None
    assert topo.warnings == ()


def test_bond_and_bridge_membership(tmp_path: Path) -> None:
    spec = HostSpec(
        cpus=cpu_layout(1, 2, 1),
        pci=(
            replace(NIC, interfaces=("eno1",)),
            replace(NIC, address="0000:01:00.1", iommu_group=21, interfaces=("eno2",)),
            replace(NIC, address="0000:02:00.0", iommu_group=22, interfaces=("eno3",)),
        ),
        virtual_interfaces={"lo": "", "bond0": "bond", "br0": "bridge"},
        masters={"eno1": "bond0", "eno2": "bond0", "eno3": "br0", "bond0": "br0"},
    )
    root = build(tmp_path, spec)
    topo = read_host_tree(root)
    kinds = {i.name: (i.master, i.master_kind) for i in topo.net_interfaces}
    assert kinds["eno1"] == kinds["eno2"] == ("bond0", "bond")
    assert kinds["eno3"] == kinds["bond0"] == ("br0", "bridge")
    assert kinds["br0"] == (None, None)
    # Either side of the link is enough: drop the member's marker, keep the master's.
    shutil.rmtree(root / "sys/class/net/eno1/bonding_slave")
    shutil.rmtree(root / "sys/class/net/eno3/brport")
    master_kinds = {i.name: i.master_kind for i in read_host_tree(root).net_interfaces}
    assert master_kinds["eno1"] == "bond" and master_kinds["eno3"] == "bridge"


def test_sriov_vf_and_physfn(tmp_path: Path) -> None:
    pf = replace(NIC, sriov_totalvfs=63, sriov_numvfs=2)
    vfs = vf_specs(pf, 2, first_group=40)
    topo = discover(tmp_path, HostSpec(cpus=cpu_layout(1, 2, 1), pci=(pf, *vfs)))
    read_pf = topo.pci("0000:01:00.0")
    assert read_pf is not None
    assert (read_pf.sriov_totalvfs, read_pf.sriov_numvfs) == (63, 2)
    assert read_pf.virtfns == ("0000:01:10.0", "0000:01:10.2")
    vf = topo.pci("0000:01:10.2")
    assert vf is not None and vf.physfn == "0000:01:00.0" and vf.iommu_group == 41 and vf.driver == "ixgbevf"


def test_iommu_group_membership_includes_non_nics(tmp_path: Path) -> None:
    audio = PciSpec("0000:01:00.1", class_code="0x040300", device="0x1aef", iommu_group=20)
    topo = discover(tmp_path, HostSpec(cpus=cpu_layout(1, 2, 1), pci=(NIC, audio)))
    assert [d.address for d in topo.iommu_group_members(20)] == ["0000:01:00.0", "0000:01:00.1"]


def test_pci_entries_as_directories(tmp_path: Path) -> None:
    """Hand-made trees may hold real directories where Linux has symlinks."""
    root = build(tmp_path, HostSpec(cpus=cpu_layout(1, 2, 1), pci=(NIC,)))
    before = read_host_tree(root)
    entry = root / "sys/bus/pci/devices/0000:01:00.0"
    target = entry.resolve()
    entry.unlink()
    shutil.copytree(target, entry, symlinks=True)
    shutil.rmtree(target)
    assert without_source(read_host_tree(root)).pci_devices == without_source(before).pci_devices


def test_absolute_symlinks_stay_inside_the_root(tmp_path: Path) -> None:
    root = build(tmp_path, HostSpec(cpus=cpu_layout(1, 2, 1), pci=(NIC,)))
    link = root / "sys/class/net/eno1"
    absolute = "/" + (link.parent / os.readlink(link)).resolve().relative_to(root.resolve()).as_posix()
    link.unlink()
    link.symlink_to(absolute)
    eno1 = read_host_tree(root).interface("eno1")
    assert eno1 is not None and eno1.pci_address == "0000:01:00.0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("01:00.0", "0000:01:00.0"), ("0000:AB:1f.7", "0000:ab:1f.7"), ("virtio2", None), ("0000:01:00.8", None)],
)
def test_canonical_pci_address(text: str, expected: str | None) -> None:
    assert canonical_pci_address(text) == expected


# --- /proc and missing or broken files ------------------------------------------------


def test_default_route_takes_the_lowest_metric(tmp_path: Path) -> None:
    spec = HostSpec(cpus=cpu_layout(1, 2, 1), extra_default_routes=(("eno4", 100), ("eno2", 10), ("eno9", 50)))
    assert discover(tmp_path, spec).default_route_interface == "eno2"


def test_missing_optional_files(tmp_path: Path) -> None:
    spec = HostSpec(
        cpus=cpu_layout(1, 2, 2),
        node_memory={0: NodeMemory(4096, hugepages=())},
        iommu=False,
        pci=(NIC,),
        default_route="eno1",
        hostname=None,
    )
    root = build(tmp_path, spec)
    for rel in ("proc/net/route", "proc/cpuinfo", "proc/cmdline", "sys/devices/system/node/node0/distance"):
        (root / rel).unlink()
    shutil.rmtree(root / "sys/kernel/iommu_groups")
    topo = read_host_tree(root)
    assert topo.iommu_active is False
    assert topo.default_route_interface is None
    assert (topo.cpu_vendor, topo.kernel_cmdline, topo.hostname) == ("", "", "")
    assert topo.node(0).hugepages == () and topo.node(0).hugepages_of(2048) == Hugepages(2048, 0, 0)
    assert topo.node(0).distances == ()
    dev = topo.pci("0000:01:00.0")
    assert dev is not None and dev.iommu_group is None and dev.sriov_totalvfs == 0


def test_iommu_off_has_no_groups(tmp_path: Path) -> None:
    topo = discover(tmp_path, HostSpec(cpus=cpu_layout(1, 2, 1), iommu=False, pci=(NIC,)))
    assert topo.iommu_active is False
    assert all(d.iommu_group is None for d in topo.pci_devices)


def test_malformed_value_is_a_warning(tmp_path: Path) -> None:
    root = build(tmp_path, HostSpec(cpus=cpu_layout(1, 2, 1)))
    (root / "sys/devices/system/cpu/cpu1/topology/core_id").write_text("garbage\n")
    topo = read_host_tree(root)
    assert topo.cpus[1].core == 1  # unknown core falls back to the CPU's own number
    assert any("core_id" in w for w in topo.warnings)


def test_missing_cpu_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    with pytest.raises(TopologyError, match="sys/devices/system/cpu") as raised:
        read_host_tree(tmp_path)
    assert "\n" not in str(raised.value)
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    with pytest.raises(TopologyError, match="no CPUs"):
        read_host_tree(tmp_path)


# --- real machines --------------------------------------------------------------------


def test_captured_debian12_vm() -> None:
    topo = read_host_tree(DEBIAN12_VM2)
    assert topo.online_cpus == CpuSet.of(0, 1)
    assert topo.cpu_vendor == "AuthenticAMD"
    assert [n.id for n in topo.numa_nodes] == [0] and topo.node(0).memory_mib > 0
    assert topo.iommu_active is False
    assert topo.default_route_interface == "eth0"
    eth0 = topo.interface("eth0")
    assert eth0 is not None and eth0.pci_address == "0000:00:03.0"  # virtio-net, one level below the PCI dev
    dev = topo.pci_by_interface("eth0")
    assert dev is not None and dev.driver == "virtio-pci" and dev.is_network and dev.numa_node is None


def test_gather_round_trip(tmp_path: Path) -> None:
    """scripts/gather-host-tree run on a tree captures everything discovery reads."""
    pf = replace(NIC, sriov_totalvfs=7, sriov_numvfs=1)
    spec = HostSpec(
        cpus=cpu_layout(2, 2, 2, offline={7}),
        pci=(pf, *vf_specs(pf, 1, 30)),
        virtual_interfaces={"lo": "", "br0": "bridge"},
        masters={"eno1": "br0"},
        default_route="br0",
    )
    source = build(tmp_path, spec)
    out = tmp_path / "captured"
    subprocess.run([sys.executable, str(GATHER), str(out), "--root", str(source)], check=True, capture_output=True)
    assert without_source(read_host_tree(out)) == without_source(read_host_tree(source))


def test_live_machine() -> None:
    if not Path("/sys/devices/system/cpu").is_dir():
        pytest.skip("no sysfs here")
    topo = read_host_tree(Path("/"))
    assert len(topo.online_cpus) >= 1
    assert topo.numa_nodes and topo.source == "sysfs:/"
