"""SR-IOV VFs and NIC safety: planning on host trees, apply on trees + libvirt's test driver,
netlink for real inside a network namespace."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from lxml import etree

from bmslice.errors import ApplyError, PlanError
from bmslice.model.spec import spec_from_data
from bmslice.plan.planner import make_plan
from bmslice.plan.sriov import vf_address
from bmslice.render.artifacts import render_plan
from bmslice.render.sriov_files import VF_HOOK_PATH as HOOK
from bmslice.topology.sysfs import read_host_tree
from schema import schema_errors
from treebuilder import HostSpec, NodeMemory, PciSpec, cpu_layout, server1_spec, vf_specs, write_tree

ROOT = Path(__file__).parents[1]

NIC = PciSpec("", device="0x1528", driver="ixgbe", sriov_totalvfs=8, sriov_offset=128, sriov_stride=2)


def two_socket_sriov() -> HostSpec:
    """2 sockets x 4 cores x 2 threads, one dual-port SR-IOV NIC per socket, mgmt on a third NIC."""
    return HostSpec(
        cpus=cpu_layout(2, 4, 2),
        node_memory={0: NodeMemory(32768), 1: NodeMemory(32768)},
        default_route="eno1",
        pci=(
            PciSpec("0000:02:00.0", device="0x1521", driver="igb", iommu_group=5, interfaces=("eno1",)),
            replace(NIC, address="0000:18:00.0", numa_node=0, iommu_group=10, interfaces=("ens1f0",)),
            replace(NIC, address="0000:18:00.1", numa_node=0, iommu_group=11, interfaces=("ens1f1",)),
            replace(NIC, address="0000:af:00.0", numa_node=1, iommu_group=20, interfaces=("ens2f0",)),
            replace(NIC, address="0000:af:00.1", numa_node=1, iommu_group=21, interfaces=("ens2f1",)),
        ),
    )


def spec(vms: list[dict[str, object]], host: dict[str, object] | None = None) -> object:
    return spec_from_data({"host": host or {}, "vms": vms}, "spec.yaml")


def tree_digest(root: Path) -> str:
    """Every file, its content and every link target: proof that nothing changed."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def sriov_tree(tmp_path: Path) -> Path:
    return write_tree(two_socket_sriov(), tmp_path / "host")


def test_vf_addresses_follow_offset_and_stride() -> None:
    assert [vf_address("0000:18:00.1", 128, 2, i) for i in range(3)] == ["0000:18:10.1", "0000:18:10.3", "0000:18:10.5"]
    assert vf_address("0000:af:00.0", 384, 1, 0) == "0000:b0:10.0"


def test_vfs_land_on_the_vm_node_with_vlan_and_mac(sriov_tree: Path) -> None:
    topo = read_host_tree(sriov_tree)
    pfs = ["ens1f0", "ens2f0"]
    s = spec(
        [
            {
                "name": "red",
                "vcpus": 4,
                "memory": "4GiB",
                "numa_node": 1,
                "nics": [{"sriov": {"pf": pfs, "vlan": 100}}],
            },
            {
                "name": "blue",
                "vcpus": 4,
                "memory": "4GiB",
                "numa_node": 0,
                "nics": [{"sriov": {"pf": pfs, "vlan": 200}}],
            },
        ]
    )
    plan = make_plan(topo, s)
    red, blue = plan.vm("red"), plan.vm("blue")
    assert [(d.pf, d.vf_index, d.vlan) for d in red.devices] == [("0000:af:00.0", 0, 100)]
    assert [(d.pf, d.vf_index, d.vlan) for d in blue.devices] == [("0000:18:00.0", 0, 200)]
    assert not red.warnings and not blue.warnings
    assert {(p.address, p.numvfs_before, p.numvfs) for p in plan.host.sriov} == {
        ("0000:18:00.0", 0, 1),
        ("0000:af:00.0", 0, 1),
    }
    xml = render_plan(plan)["red.xml"]
    assert schema_errors(xml) is None
    iface = etree.fromstring(xml.encode()).find("devices/interface[@type='hostdev']")
    assert iface.find("vlan/tag").get("id") == "100"
    assert iface.find("mac").get("address") == red.devices[0].mac
    assert int(red.devices[0].mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast
    assert dict(iface.find("source/address").attrib) == {
        "type": "pci",
        "domain": "0x0000",
        "bus": "0xaf",
        "slot": "0x10",
        "function": "0x0",
    }


def test_second_run_keeps_the_vf_assignment(sriov_tree: Path) -> None:
    topo = read_host_tree(sriov_tree)
    one = {"name": "red", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "ens2f0", "vlan": 100, "count": 2}}]}
    first = make_plan(topo, spec([one]))
    assert make_plan(topo, spec([one])) == first  # deterministic
    two = {"name": "green", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "ens2f0", "vlan": 300}}]}
    again = make_plan(topo, spec([two, one]), keep=first.vms)
    assert again.vm("red").devices == first.vm("red").devices
    assert [d.vf_index for d in again.vm("green").devices] == [2]


def test_design_note_third_vm_needs_blue_on_a_vf_too() -> None:
    topo = read_host_tree(ROOT / "examples/server1/host")
    green = {
        "name": "Green_worker",
        "vcpus": 2,
        "memory": "4GiB",
        "emulator": "host",
        "nics": [{"sriov": {"pf": "eno2", "vlan": 300}}],
    }
    red = {
        "name": "Red_k8s_cluster_worker1",
        "vcpus": 6,
        "memory": "8GiB",
        "numa_node": 0,
        "nics": [{"passthrough": "eno1"}],
    }
    blue_whole = {
        "name": "Blue_k8s_cluster_worker1",
        "vcpus": 6,
        "memory": "8GiB",
        "numa_node": 1,
        "nics": [{"passthrough": "eno2"}],
    }
    with pytest.raises(PlanError, match=r"eno2\) is passed through whole to Blue_k8s_cluster_worker1"):
        make_plan(topo, spec([red, blue_whole, green]))
    blue_vf = {**blue_whole, "nics": [{"sriov": {"pf": "eno2", "vlan": 200}}]}
    plan = make_plan(topo, spec([red, blue_vf, green]))
    assert [d.address for d in plan.vm("Blue_k8s_cluster_worker1").devices] == ["0000:01:10.1"]
    assert [d.address for d in plan.vm("Green_worker").devices] == ["0000:01:10.3"]
    assert plan.vm("Green_worker").emulator_cpus.issubset(plan.host.reserved_cpus)
    assert [(p.interface, p.numvfs) for p in plan.host.sriov] == [("eno2", 2)]


# --- safety refusals, each through the CLI against a tree: message + nothing changed ------------


def run_apply(
    tree: Path, vms: list[dict[str, object]], tmp_path: Path, host: dict[str, object] | None = None
) -> subprocess.CompletedProcess[str]:
    spec_file = tmp_path / f"spec-{uuid.uuid4().hex[:6]}.yaml"
    spec_file.write_text(yaml.safe_dump({"host": host or {}, "vms": vms}))
    env = {**os.environ, "BMSLICE_LOCK_DIR": str(tmp_path / "locks")}
    cmd = [
        sys.executable,
        "-m",
        "bmslice.cli.main",
        "apply",
        str(spec_file),
        "--connect",
        "test:///default",
        "--host-root",
        str(tree),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def refused_once(
    tree: Path, vms: list[dict[str, object]], tmp_path: Path, host: dict[str, object] | None = None
) -> str:
    """Apply on `tree` is refused with one `error:` line (returned) and leaves the tree as it was."""
    before = tree_digest(tree)
    result = run_apply(tree, vms, tmp_path, host)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert tree_digest(tree) == before
    return errors[0]


def refusal_tree(tmp_path: Path) -> Path:
    base = two_socket_sriov()
    pf_in_use = replace(
        NIC, address="0000:3b:00.0", numa_node=0, iommu_group=30, interfaces=("ens3f0",), sriov_numvfs=2
    )
    vfs = vf_specs(pf_in_use, 2, 31)
    vfs[0] = replace(vfs[0], driver="vfio-pci")  # a guest holds VF 0
    shared_group = PciSpec("0000:5e:00.0", device="0x1572", driver="i40e", iommu_group=40, interfaces=("ens4f0",))
    host_dev = PciSpec("0000:5e:00.1", class_code="0x010802", device="0x0a54", driver="nvme", iommu_group=40)
    spec_ = replace(
        base,
        pci=(*base.pci, pf_in_use, *vfs, shared_group, host_dev),
        virtual_interfaces={"lo": "", "bond0": "bond"},
        masters={"ens2f1": "bond0"},
    )
    return write_tree(spec_, tmp_path / "host")


REFUSALS = [
    ("default route PF", [{"sriov": {"pf": "eno1", "vlan": 10}}], "carries the host's default route"),
    ("default route passthrough", [{"passthrough": "eno1"}], "carries the host's default route"),
    ("bond member", [{"sriov": {"pf": "ens2f1", "vlan": 10}}], "is a bond member of bond0"),
    ("PF with VFs in use", [{"sriov": {"pf": "ens3f0", "vlan": 10, "count": 3}}], "while VFs are in use"),
    ("PF with VFs passed whole", [{"passthrough": "ens3f0"}], "has 2 VFs enabled"),
    ("shared IOMMU group", [{"passthrough": "ens4f0"}], "IOMMU group 40 .* 0000:5e:00.1 driver nvme"),
    (
        "more VFs than totalvfs",
        [{"sriov": {"pf": "ens1f0", "vlan": 10, "count": 9}}],
        r"not enough left \(ens1f0: 8 free of 8\)",
    ),
    ("not SR-IOV capable", [{"sriov": {"pf": "ens4f0", "vlan": 10}}], "is not SR-IOV capable"),
]


@pytest.mark.parametrize(("case", "nics", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_safety_refusals_change_nothing(tmp_path: Path, case: str, nics: list[dict[str, object]], message: str) -> None:
    error = refused_once(
        refusal_tree(tmp_path), [{"name": "vm1", "vcpus": 2, "memory": "2GiB", "nics": nics}], tmp_path
    )
    assert re.search(message, error), error


def test_same_vf_pool_pool_size_limit_and_same_device_twice(tmp_path: Path) -> None:
    tree = refusal_tree(tmp_path)
    before = tree_digest(tree)
    vms = [
        {"name": "a", "vcpus": 2, "memory": "2GiB", "nics": [{"passthrough": "ens1f0"}]},
        {"name": "b", "vcpus": 2, "memory": "2GiB", "nics": [{"passthrough": "0000:18:00.0"}]},
    ]
    result = run_apply(tree, vms, tmp_path)
    assert result.returncode == 2
    assert "is already given to a" in result.stderr
    pool = run_apply(
        tree,
        [{"name": "a", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "ens1f0"}}]}],
        tmp_path,
        {"sriov_vfs": {"ens1f0": 64}},
    )
    assert pool.returncode == 2 and "more than its sriov_totalvfs (8)" in pool.stderr
    assert tree_digest(tree) == before


def test_management_override_is_loud(sriov_tree: Path) -> None:
    topo = read_host_tree(sriov_tree)
    vms = [{"name": "a", "vcpus": 2, "memory": "2GiB", "nics": [{"passthrough": "eno1"}]}]
    plan = make_plan(topo, spec(vms, {"allow_management_nic": True}))
    assert any(w.startswith("OVERRIDE: a uses eno1") for w in plan.warnings)


def test_ssh_session_interface_is_management(sriov_tree: Path) -> None:
    topo = replace(read_host_tree(sriov_tree), management_interfaces=("ens1f0",))
    vms = [{"name": "a", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "ens1f0"}}]}]
    with pytest.raises(PlanError, match=r"ens1f0 .* carries the host's default route or management address"):
        make_plan(topo, spec(vms))


# --- apply on a tree: sysfs writes for real, rollback restores them ---------------------------


def test_apply_creates_vfs_and_rolls_back_on_failure(tmp_path: Path) -> None:
    tree = write_tree(server1_spec(), tmp_path / "host")
    pf_numvfs = tree / "sys/bus/pci/devices/0000:01:00.1/sriov_numvfs"
    udev = tree / "etc/udev/rules.d/70-bmslice-sriov.rules"
    ok = [
        {
            "name": "bmslice-test-vf",
            "vcpus": 2,
            "memory": "2GiB",
            "emulator": "host",
            "nics": [{"sriov": {"pf": "eno2", "vlan": 300}}],
        }
    ]
    result = run_apply(tree, ok, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "create 1 VFs on eno2 (sriov_numvfs 0 -> 1)" in result.stdout
    assert "skipped: a host tree has no kernel" in result.stdout
    assert pf_numvfs.read_text() == "1\n"
    assert udev.read_text().endswith(
        'ACTION=="add", SUBSYSTEM=="net", KERNELS=="0000:01:00.1", SUBSYSTEMS=="pci", ATTR{device/sriov_numvfs}="1"\n'
    )
    # what a reboot would lose besides the count: the VF's trust and spoofchk, restored by libvirt's hook
    assert (tree / "etc/bmslice/vf-settings").read_text().endswith("bmslice-test-vf 0000:01:00.1 0 off on\n")
    hook = tree / "etc/libvirt/hooks/qemu.d/50-bmslice-vf-settings"
    assert hook.read_text().startswith("#!/bin/sh\n") and stat.S_IMODE(hook.stat().st_mode) == 0o755
    for line in ("write etc/udev/rules.d/70-bmslice-sriov.rules", "write etc/bmslice/vf-settings", f"write {HOOK}"):
        assert line in result.stdout

    fresh = write_tree(server1_spec(), tmp_path / "host2")
    before = tree_digest(fresh)
    # the passthrough detach needs a real node device: libvirt's test driver refuses it, after the VFs were made
    bad = [{**ok[0], "nics": [{"sriov": {"pf": "eno2", "vlan": 300}}, {"passthrough": "eno1"}]}]
    failed = run_apply(fresh, bad, tmp_path)
    assert failed.returncode == 2
    assert "rolled back" in failed.stderr
    assert "set sriov_numvfs of eno2 back to 0" in failed.stdout
    assert tree_digest(fresh) == before


# --- netlink for real, in a network namespace --------------------------------------------------


@pytest.fixture
def netns() -> object:
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.fail("netlink tests need root and iproute2 (ip); run them as root")
    name = f"bmslice-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        cmds = [
            ["ip", "link", "add", "vpf0", "type", "veth", "peer", "name", "vpeer0"],
            ["ip", "addr", "add", "198.51.100.1/24", "dev", "vpf0"],
            ["ip", "link", "set", "vpf0", "up"],
            ["ip", "link", "set", "vpeer0", "up"],
        ]
        for cmd in cmds:
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_netlink_vf_settings_on_an_interface_without_vfs_fail_cleanly(netns: str) -> None:
    from bmslice.apply.sriov import set_vf
    from bmslice.model.plan import DeviceAssignment

    vf = DeviceAssignment(
        "0000:00:00.0",
        "vf",
        0,
        "vpf0",
        pf="0000:00:00.0",
        vf_index=0,
        vlan=100,
        mac="02:00:00:00:00:01",
        trust=False,
        spoofchk=True,
    )
    with pytest.raises(ApplyError, match="cannot set VF 0 of vpf0"):
        set_vf("vpf0", vf, netns=netns)
    with pytest.raises(ApplyError, match="no interface nosuch0"):
        set_vf("nosuch0", vf, netns=netns)


def test_management_interface_found_through_netlink(netns: str) -> None:
    from bmslice.topology.netlink import interfaces_with_address

    assert interfaces_with_address("198.51.100.1", netns=netns) == ("vpf0",)
    assert interfaces_with_address("198.51.100.99", netns=netns) == ()


def test_destroy_removes_the_vfs_bmslice_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In one process, so both commands see the same test:///default driver state."""
    import bmslice.apply.lock as lock
    from bmslice.apply.applier import ApplyOptions, apply
    from bmslice.apply.destroyer import DestroyOptions, destroy

    monkeypatch.setattr(lock, "LOCK_DIR", tmp_path / "locks")
    tree = write_tree(server1_spec(), tmp_path / "host")
    # The shared test:///default state lives while a connection to it is open.
    keeper = __import__("libvirt").open("test:///default")
    s = spec(
        [{"name": "bmslice-test-vfd", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "eno2", "vlan": 42}}]}]
    )
    lines: list[str] = []
    apply(s, "spec.yaml", ApplyOptions("test:///default", host_root=tree), lines.append)
    assert (tree / "sys/bus/pci/devices/0000:01:00.1/sriov_numvfs").read_text() == "1\n"
    done = destroy(s, DestroyOptions("test:///default", host_root=tree), lines.append)
    assert "remove the VFs bmslice created on 0000:01:00.1 (sriov_numvfs 0)" in done
    assert (tree / "sys/bus/pci/devices/0000:01:00.1/sriov_numvfs").read_text() == "0\n"
    assert not (tree / "etc/udev/rules.d/70-bmslice-sriov.rules").exists()
    assert not [p for p in tree.rglob("*") if p.is_file() and "udev" in str(p)]
    # no VF left to restore: the settings file and the hook that reads it go too
    assert "drop the VF settings of bmslice-test-vfd from /etc/bmslice/vf-settings" in done
    assert not (tree / "etc/bmslice/vf-settings").exists() and not (tree / HOOK).exists()
    keeper.close()


def test_vf_mac_and_vlan_parsed_from_a_real_netlink_message() -> None:
    """An RTM_NEWLINK message built and decoded by pyroute2, as a PF driver's reply carries it."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    from bmslice.model.topology import VfState
    from bmslice.topology.netlink import vf_states_of

    def vf(index: int, mac: str, vlan: int) -> tuple[str, object]:
        attrs = [("IFLA_VF_MAC", {"vf": index, "mac": mac}), ("IFLA_VF_VLAN", {"vf": index, "vlan": vlan, "qos": 0})]
        return ("IFLA_VF_INFO", {"attrs": attrs})

    sent = ifinfmsg()
    sent["attrs"] = [
        ("IFLA_IFNAME", "eno2"),
        ("IFLA_VFINFO_LIST", {"attrs": [vf(0, "02:1a:74:2e:d9:b2", 200), vf(1, "00:00:00:00:00:00", 0)]}),
    ]
    sent.encode()
    received = ifinfmsg(sent.data)
    received.decode()
    assert vf_states_of(received) == [VfState("eno2", 0, "02:1a:74:2e:d9:b2", 200), VfState("eno2", 1, None, None)]


def test_live_vf_read_on_interfaces_without_vfs(netns: str) -> None:
    from bmslice.topology.netlink import read_vf_states

    assert read_vf_states(netns) == ()


def test_discover_lists_vf_holders_and_settings(sriov_tree: Path) -> None:
    from rich.console import Console

    from bmslice.cli.tables import topology_view
    from bmslice.model.topology import VfState

    tree_spec = two_socket_sriov()
    pf = replace(tree_spec.pci[3], sriov_numvfs=2)
    vfs = vf_specs(pf, 2, 50)
    vfs[1] = replace(vfs[1], driver="vfio-pci")
    root = write_tree(
        replace(tree_spec, pci=(*tree_spec.pci[:3], pf, *tree_spec.pci[4:], *vfs)), sriov_tree.parent / "vfs"
    )
    topo = replace(
        read_host_tree(root),
        vf_states=(VfState("ens2f0", 0, None, None), VfState("ens2f0", 1, "02:00:00:00:00:07", 300)),
    )
    console = Console(record=True, width=160)
    console.print(topology_view(topo))
    text = console.export_text()
    assert "0000:af:10.0" in text and "host (ixgbevf)" in text
    assert "0000:af:10.2" in text and "a guest (vfio-pci)" in text and "300" in text


# --- host.sriov_vfs: checked like any NIC reference ---------------------------------------------

POOL_REFUSALS = [
    ("unknown NIC", {"ens9f0": 4}, r"host\.sriov_vfs\.ens9f0: no NIC 'ens9f0' on this host \(NICs: .*ens1f0"),
    ("unknown PCI address", {"0000:99:00.0": 4}, r"host\.sriov_vfs\.0000:99:00\.0: no PCI device '0000:99:00\.0'"),
    (
        "more than totalvfs",
        {"ens1f0": 9},
        r"host\.sriov_vfs\.ens1f0: 9 VFs asked of .*more than its sriov_totalvfs \(8\)",
    ),
    ("not SR-IOV capable", {"ens4f0": 2}, r"host\.sriov_vfs\.ens4f0: 0000:5e:00\.0 \(ens4f0\) is not SR-IOV capable"),
    (
        "one PF, two names",
        {"ens1f0": 2, "0000:18:00.0": 4},
        # whichever of the two names comes second is the one refused (the spec file is written sorted)
        r"host\.sriov_vfs\.(ens1f0|0000:18:00\.0): 0000:18:00\.0 \(ens1f0\) is already given as "
        r"'(ens1f0|0000:18:00\.0)'; name each PF once",
    ),
]


@pytest.mark.parametrize(("case", "pools", "message"), POOL_REFUSALS, ids=[r[0] for r in POOL_REFUSALS])
def test_vf_pools_are_checked_like_nic_references(
    tmp_path: Path, case: str, pools: dict[str, int], message: str
) -> None:
    """Even when no VM uses the pool: a typo in host config must not pass silently."""
    vms: list[dict[str, object]] = [{"name": "vm1", "vcpus": 2, "memory": "2GiB"}]
    error = refused_once(refusal_tree(tmp_path), vms, tmp_path, {"sriov_vfs": pools})
    assert re.search(message, error), error


def test_a_valid_vf_pool_sizes_the_pf(sriov_tree: Path) -> None:
    vms = [{"name": "a", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "0000:af:00.0"}}]}]
    plan = make_plan(read_host_tree(sriov_tree), spec(vms, {"sriov_vfs": {"ens2f0": 6}}))
    assert [(p.interface, p.numvfs) for p in plan.host.sriov] == [("ens2f0", 6)]


# --- a VF the plan cannot place in advance: resolved at apply time -----------------------------


def test_apply_resolves_vf_addresses_after_creating_the_vfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No sriov_offset in sysfs and no config space: the plan names VF (eno2, 0) without an address;
    apply creates the VFs, then defines the domain with the address the kernel gave VF 0.

    The tree has no kernel, so the test plays its part: when the next step is reported after
    sriov_numvfs was written, the VFs appear (treebuilder.add_vfs, linked as virtfnN)."""
    import json

    import libvirt

    import bmslice.apply.lock as lock
    from bmslice.apply.applier import ApplyOptions, apply
    from bmslice.render.domain_xml import from_xml
    from treebuilder import add_vfs

    monkeypatch.setattr(lock, "LOCK_DIR", tmp_path / "locks")
    host = replace(server1_spec(), sysfs_sriov_routing=False)
    tree = write_tree(host, tmp_path / "host")
    numvfs = tree / "sys/bus/pci/devices/0000:01:00.1/sriov_numvfs"
    name = "bmslice-test-vf-late"
    s = spec([{"name": name, "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "eno2", "vlan": 7}}]}])
    assert make_plan(read_host_tree(tree), s).vm(name).devices[0].address is None

    lines: list[str] = []

    def kernel(line: str) -> None:
        lines.append(line)
        if numvfs.read_text() == "1\n" and not (numvfs.parent / "virtfn0").exists():
            add_vfs(tree, host, "0000:01:00.1", 1, first_group=70)

    keeper = libvirt.open("test:///default")  # the test driver's state lives while a connection is open
    try:
        apply(s, "spec.yaml", ApplyOptions("test:///default", host_root=tree), kernel)
        dom = keeper.lookupByName(name)
        defined = from_xml(dom.XMLDesc(0))
        assert [vf.address for vf in defined.vf_interfaces] == ["0000:01:10.1"]
        assert defined.plan_json is not None
        recorded = json.loads(defined.plan_json)["devices"]
        assert [(d["address"], d["vf_index"]) for d in recorded] == [("0000:01:10.1", 0)]
        dom.destroy()
        dom.undefine()
    finally:
        keeper.close()
    assert any(line.startswith("create 1 VFs on eno2") for line in lines)


def test_apply_fails_cleanly_when_the_vf_never_appears(tmp_path: Path) -> None:
    """A tree has no kernel to create VFs: the define step cannot resolve the address, and
    everything this run did (sriov_numvfs, the udev rule) is put back."""
    tree = write_tree(replace(server1_spec(), sysfs_sriov_routing=False), tmp_path / "host")
    vms: list[dict[str, object]] = [
        {"name": "bmslice-test-novf", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "eno2"}}]}
    ]
    error = refused_once(tree, vms, tmp_path)
    assert "define bmslice-test-novf: VF 0 of eno2 did not appear" in error and "rolled back" in error


# --- one MAC, one NIC on a host ------------------------------------------------------------------


def test_vf_macs_are_unique_on_the_host(sriov_tree: Path) -> None:
    from bmslice.model.topology import VfState
    from bmslice.plan.sriov import derived_mac

    topo = read_host_tree(sriov_tree)
    vm = {"name": "a", "vcpus": 2, "memory": "1GiB", "nics": [{"sriov": {"pf": "ens1f0", "count": 2}}]}
    derived = derived_mac("a", 1)
    # A second VM whose fixed MAC is the first VM's derived one: refused, both named.
    clash = {"name": "b", "vcpus": 2, "memory": "1GiB", "nics": [{"sriov": {"pf": "ens1f0", "mac": derived}}]}
    with pytest.raises(PlanError, match=f"b VF 2 of ens1f0 and a VF 1 of ens1f0 would both have MAC {derived}"):
        make_plan(topo, spec([vm, clash]))
    # A host interface that already carries the MAC.
    host_mac = next(i.mac for i in topo.net_interfaces if i.name == "ens2f1")
    assert host_mac
    taken = {"name": "c", "vcpus": 2, "memory": "1GiB", "nics": [{"sriov": {"pf": "ens1f0", "mac": host_mac}}]}
    with pytest.raises(PlanError, match=f"c VF 0 of ens1f0: MAC {host_mac} is the host's ens2f1"):
        make_plan(topo, spec([taken]))
    # A VF outside the plan that already has it set (another tool's VF), read through netlink.
    foreign = replace(topo, vf_states=(VfState("ens2f0", 3, "02:00:00:00:00:42", None),))
    same = {
        "name": "d",
        "vcpus": 2,
        "memory": "1GiB",
        "nics": [{"sriov": {"pf": "ens1f0", "mac": "02:00:00:00:00:42"}}],
    }
    with pytest.raises(PlanError, match="d VF 0 of ens1f0: MAC 02:00:00:00:00:42 is already set on VF 3 of ens2f0"):
        make_plan(foreign, spec([same]))
    # The VF that already has it because bmslice set it (a re-plan of the same slice) is fine.
    mine = replace(topo, vf_states=(VfState("ens1f0", 0, "02:00:00:00:00:42", None),))
    assert make_plan(mine, spec([same])).vm("d").devices[0].mac == "02:00:00:00:00:42"
