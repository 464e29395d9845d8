"""Discovery of L3 cache domains and resctrl: sysfs trees, hwloc XML and libvirt capabilities."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bmslice.cli.main import main
from bmslice.cpuset import CpuSet
from bmslice.model.topology import ResctrlGroup
from bmslice.topology.hwloc import topology_from_hwloc
from bmslice.topology.libvirt_xml import topology_from_libvirt
from bmslice.topology.resctrl import format_schemata, parse_schemata, read_group_tasks
from bmslice.topology.sysfs import FsRoot, read_host_tree
from treebuilder import (
    GroupSpec,
    HostSpec,
    L3Spec,
    ResctrlSpec,
    cpu_layout,
    epyc_spec,
    server1_spec,
    skx_snc_spec,
    write_tree,
)

DATA = Path(__file__).parent / "data"


def tree(tmp_path: Path, spec: HostSpec) -> Path:
    return write_tree(spec, tmp_path / "host")


def test_epyc_tree_has_two_l3_domains_per_node(tmp_path: Path) -> None:
    topo = read_host_tree(tree(tmp_path, epyc_spec()))
    assert [d.id for d in topo.l3_domains] == list(range(0, 32, 2))  # the kernel's ids, not a count
    assert all(d.size_kib == 32768 and d.level == 3 for d in topo.l3_domains)
    by_node: dict[int | None, list[int]] = {}
    for d in topo.l3_domains:
        by_node.setdefault(d.node, []).append(d.id)
    assert by_node == {n: [4 * n, 4 * n + 2] for n in range(8)}
    first = topo.l3_domains[0]
    assert first.cpus == CpuSet.parse("0-3,64-67")  # 4 cores with both threads
    assert topo.l3_of(66) == first and topo.l3_of(4) == topo.l3_domains[1]
    assert topo.warnings == ()


def test_l3_spanning_two_nodes_has_no_single_node(tmp_path: Path) -> None:
    """Sub-NUMA clustering: one L3 per socket, two NUMA nodes under it."""
    topo = read_host_tree(tree(tmp_path, skx_snc_spec()))
    assert [(d.id, d.node, d.cpus.format()) for d in topo.l3_domains] == [
        (0, None, "0-19,40-59"),
        (1, None, "20-39,60-79"),
    ]


def test_no_cache_directories_means_no_domains() -> None:
    topo = read_host_tree(Path(__file__).resolve().parents[1] / "examples" / "server1" / "host")
    assert topo.l3_domains == () and topo.resctrl is None


def test_offline_cpus_and_missing_ids(tmp_path: Path) -> None:
    spec = replace(server1_spec(), cpus=cpu_layout(1, 4, 2, offline=[5]))
    spec = replace(spec, l3=(L3Spec(7, (0, 1, 4, 5), 8192), L3Spec(9, (2, 3, 6, 7), 8192)))
    root = tree(tmp_path, spec)
    topo = read_host_tree(root)
    assert [(d.id, d.cpus.format()) for d in topo.l3_domains] == [(7, "0-1,4"), (9, "2-3,6-7")]
    for index in root.glob("sys/devices/system/cpu/cpu*/cache/index3/id"):
        index.unlink()  # a kernel before 4.14
    old = read_host_tree(root)
    assert [(d.id, d.cpus.format()) for d in old.l3_domains] == [(0, "0-1,4"), (1, "2-3,6-7")]
    assert any("no id in sysfs" in w for w in old.warnings)


def test_bad_cache_size_is_a_warning(tmp_path: Path) -> None:
    root = tree(tmp_path, epyc_spec())
    (root / "sys/devices/system/cpu/cpu0/cache/index3/size").write_text("lots\n")
    topo = read_host_tree(root)
    assert any("cpu0/cache/index3/size: not a cache size" in w for w in topo.warnings)


# --- resctrl ------------------------------------------------------------------------------


def test_resctrl_absent_unmounted_and_mounted(tmp_path: Path) -> None:
    base = replace(skx_snc_spec(), resctrl=None)
    assert read_host_tree(tree(tmp_path / "a", base)).resctrl is None
    unmounted = read_host_tree(tree(tmp_path / "b", replace(base, resctrl=ResctrlSpec(mounted=False)))).resctrl
    assert unmounted is not None and not unmounted.mounted and unmounted.l3 is None
    topo = read_host_tree(tree(tmp_path / "c", skx_snc_spec()))
    rc = topo.resctrl
    assert rc is not None and rc.mounted
    assert rc.l3 is not None and (rc.l3.cbm_mask, rc.l3.ways, rc.l3.min_cbm_bits, rc.l3.num_closids) == (
        0x7FF,
        11,
        1,
        16,
    )
    assert rc.mb is not None and (rc.mb.bandwidth_gran, rc.mb.min_bandwidth, rc.mb.num_closids) == (10, 10, 8)
    assert rc.mb.percent and rc.closids == 8  # the kernel gives out min(L3, MB) CLOSIDs
    assert rc.groups == (ResctrlGroup("", ((0, 0x7FF), (1, 0x7FF)), ((0, 100), (1, 100))),)


def test_amd_and_mba_mbps_bandwidth_is_not_percent(tmp_path: Path) -> None:
    amd = read_host_tree(tree(tmp_path / "amd", epyc_spec())).resctrl
    assert amd is not None and amd.mb is not None and not amd.mb.percent
    assert amd.groups[0].mb[0] == (0, 2048)
    mbps = replace(skx_snc_spec(), resctrl=ResctrlSpec(mount_options="rw,relatime,mba_MBps"))
    rc = read_host_tree(tree(tmp_path / "mbps", mbps)).resctrl
    assert rc is not None and rc.mb is not None and not rc.mb.percent


def test_cdp_has_no_plain_l3(tmp_path: Path) -> None:
    rc = read_host_tree(tree(tmp_path, replace(skx_snc_spec(), resctrl=ResctrlSpec(cdp=True)))).resctrl
    assert rc is not None and rc.l3 is None and rc.l3_cdp


def test_groups_and_tasks(tmp_path: Path) -> None:
    groups = {
        "qemu-3-red-vcpus_0-3": GroupSpec("    L3:0=600;1=7ff\n    MB: 0= 40;1=100\n", (4101, 4102)),
        "other": GroupSpec("L3:0=001;1=001\n"),
    }
    root = tree(tmp_path, replace(skx_snc_spec(), resctrl=ResctrlSpec(groups=groups)))
    (root / "sys/fs/resctrl/mon_groups").mkdir()  # monitoring, not an allocation group
    rc = read_host_tree(root).resctrl
    assert rc is not None
    assert [g.name for g in rc.groups] == ["", "other", "qemu-3-red-vcpus_0-3"]
    red = rc.groups[2]
    assert red.l3_mask(0) == 0x600 and red.l3_mask(1) == 0x7FF and red.l3_mask(5) == 0
    assert red.mb == ((0, 40), (1, 100))
    assert read_group_tasks(FsRoot(root), "qemu-3-red-vcpus_0-3") == (4101, 4102)


def test_schemata_parse_and_format() -> None:
    assert parse_schemata("L2:0=f\nL3CODE:0=1\n  L3:0=0ff;x=1;1\nSMBA:0=2048\n") == (((0, 255),), ())
    text = format_schemata({1: 0x30, 0: 0x7C0}, {0: 30, 1: 40})
    assert text == "L3:0=7c0;1=30\nMB:0=30;1=40\n"
    assert parse_schemata(text) == (((0, 0x7C0), (1, 0x30)), ((0, 30), (1, 40)))


# --- hwloc and libvirt ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["l3-2pack.xml", "l3-2pack-v1.xml"])
def test_hwloc_l3_caches(name: str) -> None:
    topo = topology_from_hwloc((DATA / "hwloc" / name).read_text(), name)
    assert [(d.id, d.node, d.size_kib, d.cpus.format()) for d in topo.l3_domains] == [
        (0, 0, 32768, "0-7"),
        (1, 0, 32768, "8-15"),
        (2, 1, 32768, "16-23"),
        (3, 1, 32768, "24-31"),
    ]
    assert topo.resctrl is None  # hwloc does not know


def test_hwloc_real_machine_keeps_the_os_index() -> None:
    topo = topology_from_hwloc((DATA / "hwloc" / "real-machine.xml").read_text(), "x")
    assert [(d.id, d.cpus.format(), d.size_kib) for d in topo.l3_domains] == [(0, "0-1", 32768)]


def test_libvirt_cache_banks_and_controls() -> None:
    caps = (DATA / "libvirt" / "l3-resctrl-capabilities.xml").read_text()
    topo = topology_from_libvirt(caps, [], "libvirt")
    assert [(d.id, d.node, d.size_kib, d.cpus.format()) for d in topo.l3_domains] == [
        (0, 0, 16384, "0-3,16-19"),
        (1, 0, 16384, "4-7,20-23"),
        (2, 1, 16384, "8-11,24-27"),
        (3, 1, 16384, "12-15,28-31"),
    ]
    rc = topo.resctrl
    assert rc is not None and rc.l3 is not None and rc.mb is not None
    assert (rc.l3.ways, rc.l3.min_cbm_bits, rc.l3.num_closids) == (16, 2, 16)  # 16 MiB / 1 MiB, min 2 MiB
    assert (rc.mb.bandwidth_gran, rc.mb.min_bandwidth, rc.mb.num_closids, rc.mb.percent) == (10, 10, 8, True)
    server1 = topology_from_libvirt((DATA / "libvirt" / "server1-capabilities.xml").read_text(), [], "x")
    assert [d.id for d in server1.l3_domains] == [0, 1] and server1.resctrl is None  # no <control>: unknown


def test_libvirt_cdp_controls() -> None:
    caps = (DATA / "libvirt" / "l3-resctrl-capabilities.xml").read_text()
    cdp = caps.replace("type='both' maxAllocs='16'", "type='code' maxAllocs='8'")
    rc = topology_from_libvirt(cdp, [], "libvirt").resctrl
    assert rc is not None and rc.l3 is None and rc.l3_cdp


# --- discover shows them ------------------------------------------------------------------


def test_discover_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tree(tmp_path, epyc_spec())
    assert main(["discover", "--host-root", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["l3_domains"][1] == {
        "id": 2,
        "level": 3,
        "cpus": [4, 5, 6, 7, 68, 69, 70, 71],
        "size_kib": 32768,
        "node": 0,
    }
    assert data["resctrl"]["l3"] == {
        "cbm_mask": "ffff",
        "ways": 16,
        "min_cbm_bits": 1,
        "num_closids": 16,
        "shareable_bits": "0",
    }
    assert data["resctrl"]["mb"]["percent"] is False
    assert main(["discover", "--host-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "L3 caches" in out and "│ 2     │ 0            │ 32MiB │ 4-7,68-71" in out
    assert "resctrl: L3 16 ways (at least 1 a group), 16 CLOSIDs; MB granularity 1 (absolute units)" in out
    shutil.rmtree(root / "sys/fs/resctrl/info")
    assert main(["discover", "--host-root", str(root)]) == 0
    assert "resctrl: supported, not mounted" in capsys.readouterr().out
