"""Old and odd kernels, as the field has them: the design note's server on Ubuntu 18.04's 4.15
(no sriov_offset/sriov_stride in sysfs), hex-mask-only topology, NUL-padded captures, no NUMA."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from bmslice.cpuset import CpuSet
from bmslice.errors import RenderError
from bmslice.model.plan import AT_APPLY
from bmslice.model.spec import load_spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from bmslice.render.artifacts import render_plan
from bmslice.topology.pci_config import sriov_routing
from bmslice.topology.sysfs import read_host_tree
from treebuilder import (
    HostSpec,
    NodeMemory,
    PciSpec,
    add_vfs,
    cpu_layout,
    pci_config,
    server1_kernel415_spec,
    server1_spec,
    snapshot,
    write_tree,
)

REPO = Path(__file__).resolve().parents[1]
KERNEL415 = REPO / "tests/data/trees/server1-kernel4.15"
THREE_WORKERS = REPO / "tests/data/server1-kernel4.15-vfs.yaml"
BLUE, GREEN = "Blue_k8s_cluster_worker1", "Green_k8s_cluster_worker1"


def bmslice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bmslice.cli.main", *args], capture_output=True, text=True, check=False
    )


def without_source(topo: HostTopology) -> HostTopology:
    return replace(topo, source="", warnings=())


# --- the design note's server on kernel 4.15 -------------------------------------------------


def test_kernel415_tree_matches_its_builder(tmp_path: Path) -> None:
    assert snapshot(write_tree(server1_kernel415_spec(), tmp_path / "host")) == snapshot(KERNEL415)


def test_kernel415_has_no_routing_files_but_config_space() -> None:
    pf = KERNEL415 / "sys/bus/pci/devices/0000:01:00.1"
    assert (pf / "sriov_totalvfs").read_text() == "63\n"
    assert not (pf / "sriov_offset").exists() and not (pf / "sriov_stride").exists()
    assert len((pf / "config").read_bytes()) == 4096


def test_offset_and_stride_come_from_config_space() -> None:
    topo = read_host_tree(KERNEL415)
    routing = {d.address: (d.sriov_totalvfs, d.sriov_offset, d.sriov_stride) for d in topo.pci_devices}
    assert routing["0000:01:00.0"] == routing["0000:01:00.1"] == (63, 0x80, 2)  # X540
    assert routing["0000:08:00.0"] == (7, 0x80, 4)  # I350
    assert routing["0000:00:01.0"] == (0, None, None)  # the root port: no SR-IOV, config not read for it
    assert topo.warnings == ()


def test_third_vm_takes_a_vf_of_eno2_while_blue_takes_another() -> None:
    """The kernel will create X540 PF 1's VFs at 01:10.1, 01:10.3: the plan must name exactly those."""
    plan = make_plan(read_host_tree(KERNEL415), load_spec(THREE_WORKERS), origin=str(THREE_WORKERS))
    blue, green = plan.vm(BLUE).devices, plan.vm(GREEN).devices
    assert [(d.pf, d.vf_index, d.address, d.vlan) for d in blue] == [("0000:01:00.1", 0, "0000:01:10.1", 200)]
    assert [(d.pf, d.vf_index, d.address, d.vlan) for d in green] == [("0000:01:00.1", 1, "0000:01:10.3", 300)]
    assert [(p.interface, p.numvfs_before, p.numvfs) for p in plan.host.sriov] == [("eno2", 0, 2)]
    assert plan.vm("Red_k8s_cluster_worker1").devices[0].address == "0000:01:00.0"


def test_planned_vf_addresses_are_where_the_kernel_puts_them(tmp_path: Path) -> None:
    """Independently of the planner's arithmetic: make the VFs in a copy of the tree the way ixgbe
    places them (devfn 0x80 + 2n + function) and read them back through the PF's virtfn links."""
    plan = make_plan(read_host_tree(KERNEL415), load_spec(THREE_WORKERS))
    root = shutil.copytree(KERNEL415, tmp_path / "host", symlinks=True)
    (root / "sys/bus/pci/devices/0000:01:00.1/sriov_numvfs").write_text("2\n")
    add_vfs(root, server1_kernel415_spec(), "0000:01:00.1", 2, first_group=60)
    made = read_host_tree(root).pci("0000:01:00.1")
    assert made is not None and len(made.virtfns) == 2
    planned = [d.address for vm in (BLUE, GREEN) for d in plan.vm(vm).devices]
    assert planned == list(made.virtfns)


def test_plan_cli_on_the_kernel415_tree() -> None:
    result = bmslice("plan", str(THREE_WORKERS), "--host-root", str(KERNEL415), "--json")
    assert result.returncode == 0, result.stderr
    vms = {vm["name"]: vm for vm in json.loads(result.stdout)["vms"]}
    assert [d["address"] for d in vms[BLUE]["devices"]] == ["0000:01:10.1"]
    assert [d["address"] for d in vms[GREEN]["devices"]] == ["0000:01:10.3"]
    assert "resolved at apply time" not in result.stderr


# --- neither sysfs nor config space knows: the address is resolved at apply time ---------


def blind_server1() -> HostSpec:
    """What a reader without root sees on 4.15: sysfs without routing, config space cut at 64 bytes."""
    return replace(server1_kernel415_spec(), pci_config=False)


def _blind_tree(tmp_path: Path) -> Path:
    root = write_tree(blind_server1(), tmp_path / "host")
    for pf in ("0000:01:00.0", "0000:01:00.1"):
        (root / f"sys/bus/pci/devices/{pf}/config").write_bytes(pci_config(blind_server1().pci[1])[:64])
    return root


def test_vf_without_routing_is_planned_by_pf_and_index(tmp_path: Path) -> None:
    topo = read_host_tree(_blind_tree(tmp_path))
    assert all(d.sriov_offset is None for d in topo.pci_devices)
    plan = make_plan(topo, load_spec(THREE_WORKERS))
    blue = plan.vm(BLUE).devices[0]
    assert (blue.pf, blue.vf_index, blue.address) == ("0000:01:00.1", 0, None)
    assert any(
        w.startswith(f"{BLUE}: the PCI address of VF 0 of eno2 is resolved at apply time") for w in plan.warnings
    )
    with pytest.raises(RenderError, match=f"the PCI address of VF 0 of eno2 for {BLUE}, VF 1 of eno2 for {GREEN} is"):
        render_plan(plan)  # libvirt would reject the domain (below): render says so and what to do


def test_render_refuses_vfs_whose_address_only_apply_knows(tmp_path: Path) -> None:
    """`render` writes nothing, and says why and the ways out, in one line with exit 2."""
    out = tmp_path / "out"
    result = bmslice("render", str(THREE_WORKERS), "--host-root", str(_blind_tree(tmp_path)), "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert errors == [
        f"error: the PCI address of VF 0 of eno2 for {BLUE}, VF 1 of eno2 for {GREEN} is resolved at apply time, "
        "once the VF exists, and libvirt rejects a VF interface without one: render on the host as root (the PF's "
        "SR-IOV capability gives First VF Offset and VF Stride), from a --host-root tree with sriov_offset and "
        "sriov_stride (Linux 4.16+) or whose PF already has the VFs (bmslice host-apply makes them), or let "
        "`bmslice apply` define the slice"
    ]
    assert not out.exists()
    # each way out renders: the tree with config space (root's read), and one whose PF has its VFs
    assert bmslice("render", str(THREE_WORKERS), "--host-root", str(KERNEL415), "--out", str(out)).returncode == 0
    grown = tmp_path / "grown"
    add_vfs(write_tree(blind_server1(), grown), blind_server1(), "0000:01:00.1", 2, first_group=70)
    (grown / "sys/bus/pci/devices/0000:01:00.1/sriov_numvfs").write_text("2\n")
    made = bmslice("render", str(THREE_WORKERS), "--host-root", str(grown), "--out", str(tmp_path / "out2"))
    assert made.returncode == 0, made.stderr


def _validates(xml: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    tool = shutil.which("virt-xml-validate")
    assert tool is not None, "virt-xml-validate is missing: install libvirt-clients (scripts/setup-host.sh does)"
    return subprocess.run([tool, str(path), "domain"], capture_output=True, text=True, timeout=60, check=False)


def _defines(conn: Any, xml: str) -> str | None:
    """None when libvirt defines `xml` (then undefined again), else libvirt's complaint."""
    import libvirt

    try:
        dom = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    except libvirt.libvirtError as exc:
        return str(exc.get_error_message())
    dom.undefine()
    return None


@pytest.mark.libvirtd
def test_what_apply_defines_for_such_a_vf_is_valid_and_a_source_without_address_is_not(tmp_path: Path) -> None:
    """The XML apply defines once the VF exists passes virt-xml-validate and `virsh define` (test
    driver and the real libvirtd); the same interface with a <source> but no address, as render
    once wrote it, is rejected by all three: why render refuses rather than write it."""
    import libvirt

    from bmslice.apply.sriov import resolve_vf_addresses
    from bmslice.render.domain_model import domain_from_plan
    from bmslice.render.domain_xml import to_xml
    from libvirt_fixtures import open_qemu, unique_prefix

    tree = write_tree(blind_server1(), tmp_path / "host")
    vm = make_plan(read_host_tree(tree), load_spec(THREE_WORKERS)).vm(BLUE)
    assert [d.address for d in vm.devices] == [None]
    add_vfs(tree, blind_server1(), "0000:01:00.1", 2, first_group=70)  # what apply's sriov_numvfs step makes
    name = f"{unique_prefix()}-blue"
    resolved = replace(resolve_vf_addresses(tree, vm), name=name, domain_type="qemu")
    xml = to_xml(domain_from_plan(resolved))
    root = etree.fromstring(xml.encode())
    source = root.find("devices/interface[@type='hostdev']/source")
    assert source is not None and source.find("address") is not None
    for address in source.findall("address"):
        source.remove(address)
    source.append(etree.Comment(" the VF's PCI address is resolved at apply time "))
    without = etree.tostring(root, encoding="unicode")

    assert _validates(xml, tmp_path).returncode == 0
    assert _validates(without, tmp_path).returncode != 0
    test_driver = libvirt.open("test:///default")
    qemu = open_qemu()
    try:
        for conn in (test_driver, qemu):
            assert _defines(conn, xml) is None
            assert _defines(conn, without) is not None
    finally:
        for conn in (test_driver, qemu):
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByName(name).undefine()
            conn.close()


def test_plan_json_and_table_say_resolved_at_apply_time(tmp_path: Path) -> None:
    root = write_tree(blind_server1(), tmp_path / "host")
    as_json = bmslice("plan", str(THREE_WORKERS), "--host-root", str(root), "--json")
    assert as_json.returncode == 0, as_json.stderr
    vms = {vm["name"]: vm for vm in json.loads(as_json.stdout)["vms"]}
    assert [(d["address"], d["vf_index"]) for d in vms[GREEN]["devices"]] == [(None, 1)]
    from bmslice.cli.plan_text import plan_lines

    text = "\n".join(plan_lines(make_plan(read_host_tree(root), load_spec(THREE_WORKERS))))
    assert f"{AT_APPLY} (VF 1 of eno2, VLAN 300" in text
    assert f"warning: {GREEN}: the PCI address of VF 1 of eno2 is resolved at apply time" in text


def test_through_libvirt_existing_vfs_keep_their_address_new_ones_wait_for_apply() -> None:
    """libvirt lists a PF's VFs but not where new ones will go (the design note's nodedev XML)."""
    from test_discover_libvirt import server1 as server1_through_libvirt

    nics = [{"sriov": {"pf": "0000:01:00.1", "count": 2}}, {"sriov": {"pf": "0000:08:00.0", "count": 2}}]
    vm = {"name": "a", "vcpus": 2, "memory": "2GiB", "nics": nics}
    plan = make_plan(server1_through_libvirt(), spec_from_data({"vms": [vm]}, "spec.yaml"))
    assert [(d.pf, d.vf_index, d.address) for d in plan.vm("a").devices] == [
        ("0000:01:00.1", 0, None),
        ("0000:01:00.1", 1, None),
        ("0000:08:00.0", 0, "0000:08:10.0"),  # made before: libvirt names them
        ("0000:08:00.0", 1, "0000:08:10.4"),
    ]
    assert any(
        w.startswith("a: the PCI address of VF 0, 1 of 0000:01:00.1 is resolved at apply time") for w in plan.warnings
    )


# --- config space parsing: what a real or broken capability list looks like -----------------


def test_config_space_parser_on_real_and_broken_chains() -> None:
    x540 = next(d for d in server1_kernel415_spec().pci if d.address == "0000:01:00.1")
    full = pci_config(x540)
    routing = sriov_routing(full)
    assert routing is not None and (routing.offset, routing.stride) == (128, 2)
    assert sriov_routing(full[:64]) is None  # what anyone but root reads
    assert sriov_routing(full[:0x170]) is None  # cut inside the SR-IOV capability
    assert sriov_routing(pci_config(replace(x540, sriov_totalvfs=None))) is None  # AER only: no SR-IOV
    looped = bytearray(full)
    looped[0x100:0x104] = (0x0001 | 1 << 16 | 0x100 << 20).to_bytes(4, "little")  # AER pointing at itself
    assert sriov_routing(bytes(looped)) is None
    gone = bytes(full[:0x100]) + b"\xff" * (4096 - 0x100)  # a function that went away reads all ones
    assert sriov_routing(gone) is None
    zero = bytearray(full)
    zero[0x174:0x178] = bytes(4)  # offset 0: the kernel refuses such a PF too
    assert sriov_routing(bytes(zero)) is None


# --- topology from hex masks only, NUL-padded captures, no NUMA ---------------------------------


def test_hex_masks_give_the_same_topology(tmp_path: Path) -> None:
    spec = HostSpec(cpus=cpu_layout(2, 20, 2, socket_order="interleave"))  # 80 CPUs: masks of 3 words
    listed = read_host_tree(write_tree(spec, tmp_path / "lists"))
    masked_root = write_tree(replace(spec, cpu_lists=False), tmp_path / "masks")
    assert not list(masked_root.rglob("thread_siblings_list")) and not list(masked_root.rglob("cpulist"))
    assert (masked_root / "sys/devices/system/node/node1/cpumap").read_text() == "aaaa,aaaaaaaa,aaaaaaaa\n"
    masked = read_host_tree(masked_root)
    assert without_source(masked) == without_source(listed)
    assert masked.cpus[1].siblings == CpuSet.of(1, 41) and masked.node(1).cpus == CpuSet.from_iter(range(1, 80, 2))


def test_nul_padded_values_read_as_the_value(tmp_path: Path) -> None:
    """Captures made with `dd bs=4096` carry the rest of the page as NUL bytes."""
    spec = replace(server1_spec(), pci=server1_spec().pci[:3])
    clean = read_host_tree(write_tree(spec, tmp_path / "clean"))
    root = write_tree(spec, tmp_path / "padded")
    for path in [*root.rglob("*_list"), *root.rglob("cpulist"), *root.rglob("sriov_*"), root / "proc/cmdline"]:
        if path.is_file() and not path.is_symlink():
            path.write_bytes(path.read_bytes() + b"\0" * 100)
    padded = read_host_tree(root)
    assert without_source(padded) == without_source(clean)
    assert padded.kernel_cmdline == clean.kernel_cmdline and "\0" not in padded.kernel_cmdline


def test_machine_without_numa_is_one_node_and_plans(tmp_path: Path) -> None:
    nic = PciSpec("0000:01:00.0", numa_node=-1, iommu_group=3, driver="ixgbe", interfaces=("eno1",), sriov_totalvfs=8)
    mgmt = PciSpec("0000:02:00.0", numa_node=-1, iommu_group=4, driver="igb", interfaces=("eno2",))
    spec = HostSpec(
        cpus=cpu_layout(1, 4, 2), numa=False, node_memory={0: NodeMemory(16384)}, pci=(nic, mgmt), default_route="eno2"
    )
    root = write_tree(spec, tmp_path / "host")
    assert not (root / "sys/devices/system/node").exists()
    topo = read_host_tree(root)
    assert [n.id for n in topo.numa_nodes] == [0] and topo.node(0).memory_mib == 16384
    vms = [
        {"name": "a", "vcpus": 2, "memory": "2GiB", "hugepages": "2M", "nics": [{"passthrough": "eno1"}]},
        {"name": "b", "vcpus": 2, "memory": "2GiB", "emulator": "host"},
    ]
    plan = make_plan(topo, spec_from_data({"vms": vms}, "spec.yaml"))
    assert plan.vm("a").numa_nodes == plan.vm("b").numa_nodes == (0,)
    assert plan.warnings == ()  # numa_node -1 on a one-node machine is no news
    assert [(h.node, h.size_kib, h.pages) for h in plan.host.hugepages] == [(0, 2048, 1024)]


@pytest.mark.parametrize("passthrough", [True, False], ids=["passthrough", "no-device"])
def test_iommu_args_only_when_a_device_is_passed_through(passthrough: bool) -> None:
    topo = read_host_tree(KERNEL415)
    nics = [{"sriov": {"pf": "eno2"}}] if passthrough else []
    plan = make_plan(topo, spec_from_data({"vms": [{"name": "a", "vcpus": 2, "memory": "2GiB", "nics": nics}]}, "s"))
    iommu = [a for a in plan.host.kernel_args if a.partition("=")[0] in ("intel_iommu", "amd_iommu", "iommu")]
    assert iommu == (["intel_iommu=on", "iommu=pt"] if passthrough else [])
    assert any(a.startswith("isolcpus=") for a in plan.host.kernel_args)


def test_gather_captures_what_old_kernels_have(tmp_path: Path) -> None:
    """scripts/gather-host-tree keeps SR-IOV PFs' config space and the hex masks, so a capture of a
    4.15 host plans its VFs like the host itself."""
    source = write_tree(replace(server1_kernel415_spec(), cpu_lists=False), tmp_path / "source")
    out = tmp_path / "captured"
    gather = [sys.executable, str(REPO / "scripts/gather-host-tree"), str(out), "--root", str(source)]
    subprocess.run(gather, check=True, capture_output=True)
    assert (out / "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.1/config").is_file()
    captured = read_host_tree(out)
    assert without_source(captured) == without_source(read_host_tree(source))
    pf = captured.pci("0000:01:00.1")
    assert pf is not None and (pf.sriov_offset, pf.sriov_stride) == (0x80, 2)
