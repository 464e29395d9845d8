"""Host files that must hold after a reboot, checked by the tools that read them.

- every systemd unit and drop-in bmslice renders passes `systemd-analyze verify`;
- the SR-IOV udev rule parses and matches a PF's network interface (`udevadm verify` where systemd
  has it, 254+; else `udevadm test` on this machine's own interface, in a mount namespace that
  holds only bmslice's rule);
- the libvirt hook is POSIX sh that shellcheck passes, finds its VFs' lines and calls the real `ip`;
- the tuned profile loads with tuned's own profile loader on top of cpu-partitioning, its kernel
  command line carries every planned arg once, and its process blacklist matches QEMU's comm;
- the hugepage unit's commands raise a tree's pools (and set the old-kernel 1 GiB counts exactly);
- 1 GiB pages on a kernel before 5.16 use the global hugepages= form, said in a warning;
- host-apply names the next steps (initramfs per distribution, libvirtd restart for a new
  hugetlbfs mount, reload for a new hook) and preflight checks the hugetlbfs mounts.

Golden files: tests/golden/host-config/server1-kernel4.15/ (BMSLICE_REGEN_GOLDEN=1 to rewrite).
"""

from __future__ import annotations

import doctest
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import bmslice.model.distro
import bmslice.plan.host
import bmslice.topology.mounts
from bmslice.apply.sriov import persist_steps
from bmslice.cli import host_cmds
from bmslice.cpuset import CpuSet
from bmslice.model.plan import HostPlan, NodeHugepages, PfPlan, Plan
from bmslice.model.sizes import GIB_KIB
from bmslice.model.spec import load_spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.host import kernel_args, per_node_hugepages
from bmslice.plan.planner import make_plan
from bmslice.render.exporter_unit import EXPORTER_UNIT_PATH
from bmslice.render.host_files import boot_settings, hugepage_path, render_host_files
from bmslice.render.sriov_files import UDEV_RULES_PATH, VF_HOOK_PATH, VF_SETTINGS_PATH, udev_rules
from bmslice.topology.fsroot import FsRoot
from bmslice.topology.sysfs import read_host_tree
from bmslice.verify.findings import Level
from bmslice.verify.preflight import preflight, read_preflight_facts
from golden import assert_golden
from hosttrees import MACHINES, Built, boot_mounts, build, clean_runtime
from treebuilder import RHEL94_OS_RELEASE, RuntimeSpec, server1_kernel415_spec, server1_spec, snapshot, write_tree

REPO = Path(__file__).parents[1]
KERNEL415 = REPO / "tests/data/trees/server1-kernel4.15"
REBOOT_SPEC = REPO / "tests/data/server1-kernel4.15-reboot.yaml"
EXAMPLE = REPO / "examples/server1"
UNIT_DIR = "etc/systemd/system"

REBOOT_FILES = {
    "etc/bmslice/hugepages",
    "etc/bmslice/kernel-args",
    "etc/bmslice/vf-settings",
    "etc/default/grub.d/bmslice.cfg",
    "etc/libvirt/hooks/qemu.d/50-bmslice-vf-settings",
    "etc/modprobe.d/bmslice-vfio.conf",
    "etc/modules-load.d/bmslice-vfio.conf",
    "etc/systemd/system.conf.d/50-bmslice-cpus.conf",
    "etc/systemd/system/bmslice-hugepages.service",
    "etc/systemd/system/dev-hugepages1G.mount",
    "etc/systemd/system/init.scope.d/50-bmslice-cpus.conf",
    "etc/systemd/system/irqbalance.service.d/50-bmslice-banned-cpus.conf",
    "etc/systemd/system/libvirtd.service.d/50-bmslice-hugepages.conf",
    "etc/systemd/system/system.slice.d/50-bmslice-cpus.conf",
    "etc/systemd/system/user.slice.d/50-bmslice-cpus.conf",
    "etc/systemd/system/virtqemud.service.d/50-bmslice-hugepages.conf",
    "etc/tuned/bmslice/tuned.conf",
    "etc/tuned/cpu-partitioning-variables.conf",
    "etc/udev/rules.d/70-bmslice-sriov.rules",
}


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian package {package}; scripts/setup-host.sh installs it)")
    return path


def need_root() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("this check mounts in a private mount namespace: run the tests as root, with unshare")


def private_mounts(mounts: list[str], command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """`command` in a mount namespace of its own: `mounts` (shell lines) change only what it sees."""
    script = " && ".join([*mounts, command])
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kwargs)  # type: ignore[call-overload]


def write_files(files: dict[str, str], root: Path) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


Rendered = tuple[Plan, HostTopology, dict[str, str]]


@pytest.fixture(scope="module")
def reboot() -> Rendered:
    topo = read_host_tree(KERNEL415)
    plan = make_plan(topo, load_spec(REBOOT_SPEC))
    return plan, topo, render_host_files(plan, topo)


# --- what is rendered --------------------------------------------------------------------------


def test_the_note_server_on_its_own_kernel_renders_every_reboot_file(reboot: Rendered) -> None:
    assert set(reboot[2]) == REBOOT_FILES


@pytest.mark.parametrize("rel", sorted(REBOOT_FILES))
def test_reboot_golden(reboot: Rendered, rel: str) -> None:
    assert_golden(f"host-config/server1-kernel4.15/{rel}", reboot[2][rel])


def test_worked_examples_in_docstrings_hold() -> None:
    for module in (bmslice.model.distro, bmslice.topology.mounts, bmslice.plan.host):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


@pytest.mark.parametrize(
    ("release", "per_node"),
    [
        ("6.1.0-18-amd64", True),
        ("5.16.0", True),
        ("5.15.0-91-generic", False),  # Ubuntu 22.04
        ("4.18.0-513.el8.x86_64", False),  # RHEL 8
        ("4.15.0-20-generic", False),  # the design note's Ubuntu 18.04
        ("10.2.1", True),
        ("", None),
        ("not-a-release", None),
    ],
)
def test_which_kernels_take_hugepages_per_node(release: str, per_node: bool | None) -> None:
    assert per_node_hugepages(release) is per_node


def test_old_kernel_boots_the_global_form_and_the_unit_sets_each_node(
    reboot: Rendered,
) -> None:
    plan, topo, files = reboot
    # Red's 8 GiB on node 0; spread evenly over 2 nodes, the global count must be 2 x 8
    assert plan.host.kernel_args[-2:] == ("hugepagesz=1G", "hugepages=16")
    assert any(w.startswith("kernel 4.15.0-20-generic has no per-node hugepages= (Linux 5.16+)") for w in plan.warnings)
    exact = {(s.path, s.value) for s in boot_settings(plan, topo) if not s.minimum}
    assert exact == {(hugepage_path(0, GIB_KIB), 8), (hugepage_path(1, GIB_KIB), 0)}
    assert (
        "cmdline_bmslice=+intel_iommu=on iommu=pt irqaffinity=0-1,12-13 hugepagesz=1G hugepages=16\n"
        in (files["etc/tuned/bmslice/tuned.conf"])
    )


@pytest.mark.parametrize(("release", "warned"), [("6.1.0-18-amd64", None), (None, "kernel release unknown")])
def test_newer_or_unknown_kernel_asks_per_node(tmp_path: Path, release: str | None, warned: str | None) -> None:
    tree = write_tree(replace(server1_kernel415_spec(), kernel_release=release), tmp_path / "host")
    topo = read_host_tree(tree)
    plan = make_plan(topo, load_spec(REBOOT_SPEC))
    assert plan.host.kernel_args[-2:] == ("hugepagesz=1G", "hugepages=0:8")
    assert all(s.minimum for s in boot_settings(plan, topo))  # nothing to give back
    assert (
        any(w.startswith(warned) for w in plan.warnings)
        if warned
        else not any("hugepages=" in w for w in plan.warnings)
    )


def test_one_node_hosts_use_the_global_pool(tmp_path: Path) -> None:
    """One node: the global pool is that node's, and exists whether or not the kernel has NUMA."""
    built = build(
        tmp_path,
        MACHINES["amd-small"](),
        spec={"vms": [{"name": "t", "vcpus": 2, "memory": "1GiB", "hugepages": "2M"}]},
    )
    assert [(s.path, s.value) for s in boot_settings(built.plan, built.topo)] == [
        ("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", 512)
    ]


# --- systemd ------------------------------------------------------------------------------------


def _machine_has_unit(name: str) -> bool:
    return any(
        Path(d, name).exists() for d in ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
    )


def systemd_verify(files: dict[str, str], tree: Path) -> tuple[list[str], str]:
    """`systemd-analyze verify` on every unit and drop-in in `files`: (the units checked, its output).

    Unit files are named by path (systemd then also searches their directory, so the drop-ins
    beside them load with the units they extend). A unit only extended by a drop-in is loaded by
    name, from this machine when it has it; one it lacks (irqbalance, libvirtd, virtqemud here)
    gets a minimal stand-in, so the drop-in itself is what is checked.
    """
    tool = need("systemd-analyze", "systemd")
    write_files(files, tree)
    unit_dir = tree / UNIT_DIR
    own = sorted(str(p) for p in unit_dir.iterdir() if p.is_file())
    extended = []
    for name in sorted(p.name.removesuffix(".d") for p in unit_dir.iterdir() if p.is_dir()):
        if name == "init.scope":  # a scope has no unit file to load offline; the lab's systemd reads it
            continue
        if _machine_has_unit(name) or not name.endswith(".service"):
            extended.append(name)
        else:
            (unit_dir / name).write_text("[Service]\nExecStart=/bin/true\n")
            own.append(str(unit_dir / name))
    result = subprocess.run(
        [tool, "verify", "--man=no", *own, *extended], capture_output=True, text=True, timeout=120, check=False
    )
    checked = [Path(p).name for p in own] + extended
    return checked, f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def _plans(tmp: Path) -> Iterator[tuple[str, Plan, HostTopology]]:
    topo = read_host_tree(EXAMPLE / "host")
    yield "server1", make_plan(topo, load_spec(EXAMPLE / "spec.yaml")), topo
    topo = read_host_tree(KERNEL415)
    yield "server1-kernel4.15", make_plan(topo, load_spec(REBOOT_SPEC)), topo
    topo = read_host_tree(EXAMPLE / "host")
    for kind in ("realtime", "multinode"):  # realtime VMs; a guest over two NUMA nodes with a VF
        yield f"server1-{kind}", make_plan(topo, load_spec(REPO / f"tests/data/{kind}/server1-spec.yaml")), topo
    built = build(tmp, MACHINES["amd-nps2"]())
    yield "amd-nps2", built.plan, built.topo
    built = build(tmp, MACHINES["intel-nosmt"]())
    yield "intel-nosmt", built.plan, built.topo


def test_every_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    seen: set[str] = set()
    for name, plan, topo in _plans(tmp_path / "trees"):
        files = {rel: text for rel, text in render_host_files(plan, topo).items() if rel.startswith(UNIT_DIR + "/")}
        checked, output = systemd_verify(files, tmp_path / name)
        assert output == "exit 0\n", f"{name}: systemd-analyze verify {' '.join(checked)}\n{output}"
        units = {rel.split("/")[3].removesuffix(".d") for rel in files} - {"init.scope"}
        assert units <= set(checked), f"{name}: not checked: {units - set(checked)}"
        seen |= units
    # every kind of unit bmslice writes went through the tool
    assert {"bmslice-hugepages.service", "dev-hugepages1G.mount", "libvirtd.service", "virtqemud.service"} <= seen
    assert {"irqbalance.service", "system.slice", "user.slice"} <= seen


def test_systemd_analyze_verify_catches_a_bad_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: an unknown key and a mount named after another path fail it."""
    bad = {
        f"{UNIT_DIR}/dev-hugepages1G.mount": "[Mount]\nWhat=hugetlbfs\nWhere=/dev/hugepages2G\nType=hugetlbfs\n",
        f"{UNIT_DIR}/user.slice.d/50-bmslice-cpus.conf": "[Slice]\nAllowedCPU=0\n",
    }
    _, output = systemd_verify(bad, tmp_path / "bad")
    assert "Where= setting doesn't match unit name" in output and "Unknown key 'AllowedCPU'" in output


def _exec_lines(unit: str, tree: Path) -> list[list[str]]:
    """The unit's ExecStart commands as the shell gets them ($$ is systemd's $), aimed at `tree`."""
    commands = []
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            command = line.removeprefix("ExecStart=").replace("$$", "$").replace("/sys/", f"{tree}/sys/")
            commands.append(shlex.split(command))
    return commands


def test_the_hugepage_unit_raises_the_pools_and_gives_back_the_spread(tmp_path: Path, reboot: Rendered) -> None:
    tree = write_tree(server1_kernel415_spec(), tmp_path / "host")
    node = tree / "sys/devices/system/node"
    two_mib = node / "node1/hugepages/hugepages-2048kB/nr_hugepages"
    gig = [node / f"node{n}/hugepages/hugepages-1048576kB/nr_hugepages" for n in (0, 1)]
    for path in gig:
        path.write_text("8\n")  # hugepages=16 spread over two nodes at boot
    commands = _exec_lines(reboot[2][f"{UNIT_DIR}/bmslice-hugepages.service"], tree)
    assert len(commands) == 3 and all(argv[:2] == ["/bin/sh", "-c"] for argv in commands)
    for argv in commands:
        subprocess.run(argv, check=True, timeout=30)
    assert two_mib.read_text().strip() == "4096"
    assert [p.read_text().strip() for p in gig] == ["8", "0"]
    two_mib.write_text("5000\n")  # more than planned: pages someone else uses stay
    for argv in commands:
        subprocess.run(argv, check=True, timeout=30)
    assert two_mib.read_text().strip() == "5000"


# --- udev ---------------------------------------------------------------------------------------

RULES = f"/{UDEV_RULES_PATH}"


def _pci_netdev() -> tuple[str, str] | None:
    """(interface, PCI address of its PCI ancestor) of a network interface of this machine that is
    not an SR-IOV PF: `udevadm test` really runs the rule's write, which must land nowhere."""
    for dev in sorted(Path("/sys/class/net").iterdir()):
        path = dev.resolve()
        found = re.findall(r"/([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])(?=/)", str(path))
        pf = Path("/sys/bus/pci/devices", found[-1]) if found else None
        if pf is not None and not (dev / "device/sriov_numvfs").exists() and not (pf / "sriov_numvfs").exists():
            return dev.name, pf.name
    return None


def _has_udevadm_verify(udevadm: str) -> bool:
    return subprocess.run([udevadm, "verify", "--help"], capture_output=True, check=False).returncode == 0


def udev_check(rules: str, tmp: Path, device: str) -> list[str]:
    """What udev says about `rules` (as bmslice's rules file) on an "add" of `device`: the lines naming the file.

    systemd 254+: `udevadm verify`. Older (Debian 12 has 252): `udevadm test` in a private mount
    namespace whose rules directories hold only this file (and whose /run/udev is a scratch
    tmpfs): it parses the file as udevd does and runs the rules on the device's real "add"
    event; an ATTR write to a file the device lacks is only logged.
    """
    udevadm = need("udevadm", "udev")
    source = tmp / "70-bmslice-sriov.rules"
    source.write_text(rules)
    if _has_udevadm_verify(udevadm):
        result = subprocess.run([udevadm, "verify", str(source)], capture_output=True, text=True, check=False)
        return [f"exit {result.returncode}", *(result.stdout + result.stderr).splitlines()]
    need_root()
    dirs = sorted(
        {
            os.path.realpath(d)
            for d in ("/etc/udev/rules.d", "/lib/udev/rules.d", "/usr/lib/udev/rules.d")
            if os.path.isdir(d)
        }
    )
    mounts = [f"mount -t tmpfs tmpfs {d}" for d in dirs] + ["mkdir -p /run/udev", "mount -t tmpfs tmpfs /run/udev"]
    mounts.append(f"cp {shlex.quote(str(source))} {RULES}")
    result = private_mounts(mounts, f"udevadm test --action=add {shlex.quote(device)}")
    assert "Reading rules file: " + RULES in result.stdout + result.stderr, result.stdout + result.stderr
    return [line for line in (result.stdout + result.stderr).splitlines() if RULES in line and "Reading" not in line]


def test_the_vf_rule_matches_the_pf_interface_and_parses(tmp_path: Path) -> None:
    found = _pci_netdev()
    if found is None:
        pytest.fail("this machine has no network interface on a PCI device to run the rule against")
    iface, address = found
    rules = udev_rules([PfPlan(address, iface, 0, 4), PfPlan("0000:ff:1f.7", None, 0, 2)])
    said = udev_check(rules, tmp_path, f"/sys/class/net/{iface}")
    if said and said[0].startswith("exit "):  # udevadm verify
        assert said[0] == "exit 0", said
        return
    # the rule for this machine's PCI device fired on its interface's "add" (line 3; 1-2 are comments),
    # the other PF's (line 4) did not, and nothing was refused as a parse error
    assert said and all(f"{RULES}:3 " in line for line in said), said
    writes = [line for line in said if "writing" in line]
    assert len(writes) == 1 and writes[0].endswith("/sriov_numvfs' writing '4'") and f"/{address}/" in writes[0], said


def test_the_udev_check_catches_a_broken_rule(tmp_path: Path) -> None:
    found = _pci_netdev()
    device = f"/sys/class/net/{found[0]}" if found else "/sys/class/net/lo"
    said = udev_check(
        'ACTION=="add", SUBSYSTEM=="net", KERNEL=="x", ATTRS{device/sriov_numvfs}="4"\n', tmp_path, device
    )
    assert said and (said[0] != "exit 0" if said[0].startswith("exit ") else any("Invalid" in line for line in said)), (
        said
    )


# --- the libvirt hook ---------------------------------------------------------------------------


def test_the_hook_is_posix_sh_that_shellcheck_passes(tmp_path: Path) -> None:
    shellcheck = need("shellcheck", "shellcheck")
    hook = tmp_path / "hook"
    hook.write_text(render_host_files(*reboot_plan())[VF_HOOK_PATH])
    result = subprocess.run(
        [shellcheck, "--shell=sh", "--severity=style", str(hook)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    text = hook.read_text()
    assert text.startswith("#!/bin/sh\n") and "virsh" not in text  # never calls back into libvirt


def reboot_plan() -> tuple[Plan, HostTopology]:
    topo = read_host_tree(KERNEL415)
    return make_plan(topo, load_spec(REBOOT_SPEC)), topo


@pytest.fixture
def netns_eno2() -> Iterator[str]:
    """A network namespace with an interface named eno2, like the tree's PF (a veth: it has no VFs)."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.fail("the hook test needs root and iproute2 (ip)")
    name = f"bmslice-hook-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "netns", "exec", name, "ip", "link", "add", "eno2", "type", "veth", "peer", "name", "p0"], check=True
        )
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_the_hook_sets_each_slices_vfs_with_ip_and_never_stops_a_start(tmp_path: Path, netns_eno2: str) -> None:
    """On a tree placed by apply's own steps; `ip` is the real one, on an eno2 without VFs, so the
    kernel refuses and the hook reports that on stderr, naming exactly what it asked for."""
    tree = write_tree(server1_spec(), tmp_path / "host")
    plan = make_plan(read_host_tree(tree), load_spec(REBOOT_SPEC))
    for step in persist_steps(tree, plan):
        step.do()
    hook = tree / VF_HOOK_PATH
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    settings = tree / VF_SETTINGS_PATH
    settings.write_text(settings.read_text() + "Ghost 0000:00:01.0 0 on off\n")  # a PF without an interface

    def hook_run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", netns_eno2, str(hook), *args]
        return subprocess.run(argv, input="<domain/>", capture_output=True, text=True, timeout=30, check=False)

    blue = hook_run("Blue_k8s_cluster_worker1", "prepare", "begin", "-")
    assert blue.returncode == 0
    assert blue.stderr.splitlines()[-1] == (
        "bmslice: Blue_k8s_cluster_worker1: could not set trust on spoofchk off on VF 0 of eno2"
    ), blue.stderr
    shown = subprocess.run(
        ["ip", "-n", netns_eno2, "-j", "link", "show", "eno2"], capture_output=True, text=True, check=True
    )
    assert "UP" in json.loads(shown.stdout)[0]["flags"]  # libvirt sets the VF's MAC and VLAN through the PF
    green = hook_run("Green_k8s_cluster_worker1", "prepare", "begin", "-")
    assert green.returncode == 0 and green.stderr.splitlines()[-1].endswith("trust off spoofchk on on VF 1 of eno2")
    ghost = hook_run("Ghost", "prepare", "begin", "-")
    assert ghost.returncode == 0 and ghost.stderr == (
        "bmslice: Ghost: PF 0000:00:01.0 has no network interface: VF 0 keeps its trust and spoofchk\n"
    )
    for args in (
        ("Red_k8s_cluster_worker1", "prepare", "begin", "-"),
        ("Blue_k8s_cluster_worker1", "started", "begin", "-"),
    ):
        quiet = hook_run(*args)
        assert quiet.returncode == 0 and quiet.stderr == "", args  # no VF of Red's; another phase


# --- tuned --------------------------------------------------------------------------------------

TUNED_LOAD = textwrap.dedent(
    """
    import json, logging, sys
    import procfs
    import tuned.profiles as profiles
    from tuned.plugins.plugin_bootloader import BootloaderPlugin
    from tuned.utils.global_config import GlobalConfig

    problems = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                problems.append(record.getMessage())

    logging.getLogger("tuned").addHandler(Keep())
    profile_dir, name, qemu_pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    variables = profiles.variables.Variables()
    loader = profiles.Loader(
        profiles.Locator(["/usr/lib/tuned", profile_dir]), profiles.Factory(), profiles.Merger(), GlobalConfig(), variables
    )
    profile = loader.load([name])
    # as tuned's unit manager does, the instance priority is not a plugin option
    boot = {k: variables.expand(v) for k, v in profile.units["bootloader"].options.items() if k != "priority"}
    cmdline = BootloaderPlugin._get_effective_options(BootloaderPlugin, boot)["cmdline"]
    print(json.dumps({
        "cmdline": cmdline,
        "ps_blacklist": profile.units["scheduler"].options["ps_blacklist"],
        "qemu_comm": procfs.pidstats()[qemu_pid]["stat"]["comm"],
        "problems": problems,
    }))
    """
)

# Every kind of plan whose boot args tuned must yield: (vendor, passthrough, 1 GiB pages per node,
# per-node form, realtime). The CPUs are this machine's (tuned asserts its isolated CPUs are online).
TUNED_KINDS = {
    "plain": ("AuthenticAMD", False, (), True, False),
    "iommu-intel": ("GenuineIntel", True, (), True, False),
    "iommu-amd": ("AuthenticAMD", True, (), True, False),
    "1g-two-nodes": ("GenuineIntel", True, ((0, 2), (1, 2)), True, False),
    "1g-old-kernel": ("GenuineIntel", False, ((0, 2), (1, 2)), False, False),
    "realtime-intel": ("GenuineIntel", True, ((0, 2), (1, 2)), True, True),
    "realtime-amd": ("AuthenticAMD", False, ((0, 2),), True, True),
}


def _tuned_plan(kind: str = "iommu-intel") -> tuple[Plan, HostTopology]:
    """A plan of `kind` for this machine's CPUs (cpu-partitioning asserts its isolated CPUs are online)."""
    from bmslice.model.plan import GuestTopology, RealtimePlan, VmPlan

    vendor, passthrough, gig, per_node, realtime = TUNED_KINDS[kind]
    topo = read_host_tree(Path("/"))
    online = topo.online_cpus
    if len(online) < 2:
        pytest.fail("the tuned check isolates a CPU: this machine needs two online CPUs")
    reserved = CpuSet.of(min(online))
    isolated = online - reserved
    pages = tuple(NodeHugepages(node, GIB_KIB, n) for node, n in gig)
    args = kernel_args(vendor, reserved, isolated, pages, passthrough, realtime, per_node, len(gig) or 1)
    host = HostPlan(reserved, isolated, args, True, args, pages, vendor)
    vms: tuple[VmPlan, ...] = ()
    if realtime:  # what makes a plan realtime for the host files: a VM with realtime vCPUs
        core = CpuSet.of(min(isolated))
        rt = RealtimePlan(0, 1, 2048)
        vms = (
            VmPlan(
                "rt",
                (0,),
                (min(isolated),),
                reserved,
                CpuSet(),
                0,
                GuestTopology(1, 1, 1),
                1024,
                GIB_KIB,
                (core,),
                "host",
                realtime=rt,
            ),
        )
    return Plan(host, vms), replace(topo, os_ids=("debian",))


def _load_tuned(tmp_path: Path, files: dict[str, str], profile: str) -> dict[str, Any]:
    """tuned's own profile loader over `profile`, with bmslice's variables files in place (in a
    mount namespace of its own), next to a process named as Debian's QEMU is."""
    write_files({"bmslice/tuned.conf": files["etc/tuned/bmslice/tuned.conf"]}, tmp_path / "profiles")
    mounts = []
    for rel in ("etc/tuned/cpu-partitioning-variables.conf", "etc/tuned/realtime-virtual-host-variables.conf"):
        if rel in files:
            own = write_files({rel: files[rel]}, tmp_path / "vars") / rel
            mounts.append(f"mount --bind {shlex.quote(str(own))} /{rel}")
    script = write_files({"load.py": TUNED_LOAD}, tmp_path) / "load.py"
    qemu = tmp_path / "qemu-system-x86_64"  # a process named as Debian's QEMU is
    shutil.copy("/bin/sleep", qemu)
    sleeper = subprocess.Popen([str(qemu), "60"])
    try:
        result = private_mounts(
            mounts,
            f"/usr/bin/python3 {shlex.quote(str(script))} {shlex.quote(str(tmp_path / 'profiles'))} {profile} "
            f"{sleeper.pid}",
            env={**os.environ, "TMPDIR": str(tmp_path)},  # cpu-partitioning runs mktemp -d
        )
    finally:
        sleeper.kill()
        sleeper.wait()
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    assert loaded["problems"] == []
    return loaded


def _blacklisted(value: str, comm: str) -> bool:
    """tuned's ps_blacklist: regexes separated by ';' (an escaped "\\;" is literal)."""
    return re.search("|".join(f"({p})" for p in re.split(r"(?<!\\);", value)), comm) is not None


@pytest.mark.parametrize("kind", sorted(TUNED_KINDS))
def test_the_tuned_profile_yields_every_planned_arg_with_tuneds_own_loader(tmp_path: Path, kind: str) -> None:
    need("tuned-adm", "tuned")
    need_root()
    plan, topo = _tuned_plan(kind)
    files = render_host_files(plan, topo)
    base = "realtime-virtual-host" if plan.vms else "cpu-partitioning"
    assert f"include={base}\n" in files["etc/tuned/bmslice/tuned.conf"]
    loaded = _load_tuned(tmp_path, files, "bmslice")
    tokens = loaded["cmdline"].split()
    for arg in plan.host.kernel_args:  # every planned arg, once: from the base profile or from bmslice
        assert tokens.count(arg) == 1, (arg, tokens)
    # and no arg twice with two values (isolcpus=1 beside isolcpus=managed_irq,domain,1 would be)
    assert sorted({t.partition("=")[0] for t in tokens}) == sorted(t.partition("=")[0] for t in set(tokens))
    # what `audit` asks of a host booted so: nothing planned is missing
    assert bmslice.plan.host.missing_args(plan.host.kernel_args, loaded["cmdline"], None) == ()
    # tuned matches ps_blacklist against a process's comm; QEMU's is cut to 15 characters
    comm = loaded["qemu_comm"]
    assert comm == "qemu-system-x86"
    assert _blacklisted(loaded["ps_blacklist"], comm)
    own = re.search(r"^ps_blacklist=(.*)$", Path(f"/usr/lib/tuned/{base}/tuned.conf").read_text(), re.M)
    assert own is not None and not _blacklisted(own.group(1), comm)  # what the profile fixes on Debian
    assert set(own.group(1).split(";")) <= set(loaded["ps_blacklist"].split(";"))  # and keeps


def test_realtime_virtual_host_alone_lacks_what_the_docs_say(tmp_path: Path) -> None:
    """docs/realtime.md's advice on tuned's realtime-virtual-host, checked with tuned's loader on the
    real profile and the variables file bmslice writes: what it yields, and exactly what it lacks."""
    need("tuned-adm", "tuned")
    need_root()
    plan, topo = _tuned_plan("realtime-intel")
    loaded = _load_tuned(tmp_path, render_host_files(plan, topo), "realtime-virtual-host")
    yielded = loaded["cmdline"].split()
    missing = [arg for arg in plan.host.kernel_args if arg not in yielded]
    keys = [arg.partition("=")[0] for arg in missing]
    assert keys == ["intel_iommu", "iommu", "hugepagesz", "hugepages", "nmi_watchdog"], missing
    docs = (REPO / "docs/realtime.md").read_text()
    section = docs[docs.index("### tuned") :]
    section = section[: section.find("\n## ")]
    for key in keys:
        assert f"`{key}=" in section, key
    for arg in plan.host.kernel_args:
        if arg not in missing:  # what the docs say it does yield
            assert f"`{arg.partition('=')[0]}" in section, arg


@pytest.mark.parametrize(
    ("os_ids", "qemu"), [(("ubuntu", "debian"), "^qemu-system-x86"), (("rhel", "fedora"), "^qemu-kvm")]
)
def test_the_tuned_blacklist_names_the_distributions_qemu(os_ids: tuple[str, ...], qemu: str) -> None:
    plan, topo = reboot_plan()
    profile = render_host_files(plan, replace(topo, os_ids=os_ids))["etc/tuned/bmslice/tuned.conf"]
    blacklist = re.search(r"^ps_blacklist=(.*)$", profile, re.M)
    assert blacklist is not None and blacklist.group(1).split(";")[-1] == qemu


# --- host-apply and preflight -------------------------------------------------------------------


def run_host(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert host_cmds.main(list(argv)) == 0
    return capsys.readouterr().out


def test_host_apply_places_the_reboot_files_and_says_what_comes_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BMSLICE_LOCK_DIR", str(tmp_path / "locks"))
    root = tmp_path / "host"
    shutil.copytree(KERNEL415, root, symlinks=True)
    out = run_host(capsys, "host-apply", str(REBOOT_SPEC), "--host-root", str(root))
    hook = root / VF_HOOK_PATH
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    next_steps = [line for line in out.splitlines() if line.startswith("next: ")]
    assert "next: run `update-initramfs -u -k all`: a NIC driver" in "\n".join(next_steps)  # Ubuntu 18.04
    assert any(
        s.startswith("next: run `systemctl start dev-hugepages1G.mount`, then `systemctl restart libvirtd.service`")
        for s in next_steps
    )
    assert any(
        s.startswith("next: run `systemctl reload libvirtd.service` (or virtqemud.service): libvirt looks for hook")
        for s in next_steps
    )
    assert (root / UNIT_DIR / "bmslice-hugepages.service").is_file() and (root / UDEV_RULES_PATH).is_file()

    hook.chmod(0o644)  # a hook libvirt would skip as not executable
    again = run_host(capsys, "host-apply", str(REBOOT_SPEC), "--host-root", str(root))
    assert f"  update /{VF_HOOK_PATH} (mode 644 -> 755)" in again
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    assert "no changes" in run_host(capsys, "host-apply", str(REBOOT_SPEC), "--host-root", str(root))


@pytest.mark.parametrize(
    ("os_release", "command"),
    [
        (RHEL94_OS_RELEASE, "next: run `dracut -f --regenerate-all`"),
        ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "next: run `dracut -f --regenerate-all`"),
        (None, "next: rebuild the initramfs (update-initramfs -u or dracut -f)"),
    ],
)
def test_the_initramfs_command_follows_the_distribution(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    os_release: str | None,
    command: str,
) -> None:
    monkeypatch.setenv("BMSLICE_LOCK_DIR", str(tmp_path / "locks"))
    root = write_tree(replace(server1_spec(), os_release=os_release), tmp_path / "host")
    out = run_host(capsys, "host-apply", str(EXAMPLE / "spec.yaml"), "--host-root", str(root))  # eno1, eno2 to vfio-pci
    assert command in out
    again = run_host(capsys, "host-apply", str(EXAMPLE / "spec.yaml"), "--host-root", str(root))
    assert command not in again  # nothing changed: nothing to rebuild


def _hugetlbfs_finding(built: Built, mounts: str | None, unit: bool = False) -> tuple[Level, str, str]:
    root = built.root
    if mounts is None:
        (root / "proc/mounts").unlink(missing_ok=True)
    else:
        (root / "proc/mounts").write_text(mounts)
    unit_file = root / UNIT_DIR / "dev-hugepages1G.mount"
    if unit:
        unit_file.parent.mkdir(parents=True, exist_ok=True)
        unit_file.write_text("[Mount]\n")
    plan, topo = built.plan, built.topo
    findings = preflight(plan, topo, read_preflight_facts(FsRoot(root), plan, topo))
    found = [f for f in findings if f.check.startswith("hugetlbfs ")]
    assert len(found) == 1, findings
    return found[0].level, found[0].message, found[0].remedy


DEFAULT_MOUNT = "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"


def test_preflight_wants_a_hugetlbfs_of_1g_pages(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["intel-nosmt"](), clean_runtime)
    level, message, remedy = _hugetlbfs_finding(built, DEFAULT_MOUNT)
    assert level is Level.FAIL and "no hugetlbfs of 1 GiB pages in /proc/mounts: rt cannot start" in message
    assert remedy.startswith("bmslice host-apply (it places dev-hugepages1G.mount), then restart libvirtd.service")
    level, message, remedy = _hugetlbfs_finding(built, DEFAULT_MOUNT, unit=True)
    assert level is Level.WARN and remedy.startswith("systemctl start dev-hugepages1G.mount, then restart libvirtd")
    mounted = DEFAULT_MOUNT + "hugetlbfs /dev/hugepages1G hugetlbfs rw,nosuid,nodev,relatime,pagesize=1024M 0 0\n"
    assert _hugetlbfs_finding(built, mounted)[:2] == (Level.OK, "mounted at /dev/hugepages1G")
    level, message, _ = _hugetlbfs_finding(built, None)
    assert level is Level.WARN and message.startswith("/proc/mounts unreadable")


def test_preflight_counts_the_default_mount_for_2m_pages(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["amd-nps2"](), clean_runtime)
    # an older kernel does not show pagesize=: the mount has the default size (Hugepagesize: 2048 kB)
    assert _hugetlbfs_finding(built, "hugetlbfs /dev/hugepages hugetlbfs rw,relatime 0 0\n")[:2] == (
        Level.OK,
        "mounted at /dev/hugepages",
    )
    level, message, remedy = _hugetlbfs_finding(built, "proc /proc proc rw 0 0\n")
    assert level is Level.FAIL and "db, web cannot start" in message and remedy.startswith("mount -t hugetlbfs")


def test_apply_says_when_libvirtd_has_yet_to_load_the_hook(tmp_path: Path) -> None:
    """libvirtd looks for hooks only when it starts or reloads: a hook apply writes for the first time
    does nothing until then (the lab shows it on a real libvirtd), so apply says so; once there, not again."""
    from bmslice.apply.sriov import hook_is_new

    tree = write_tree(server1_spec(), tmp_path / "host")
    plan = make_plan(read_host_tree(tree), load_spec(REBOOT_SPEC))
    no_vfs = make_plan(read_host_tree(tree), load_spec(REPO / "examples/server1/spec.yaml"))
    assert hook_is_new(tree, plan) and not hook_is_new(tree, no_vfs)
    for step in persist_steps(tree, plan):
        step.do()
    assert not hook_is_new(tree, plan)


def test_destroying_one_of_two_vf_slices_keeps_the_others_settings(tmp_path: Path) -> None:
    from bmslice.apply.sriov import drop_vf_settings

    tree = write_tree(server1_spec(), tmp_path / "host")
    plan = make_plan(read_host_tree(tree), load_spec(REBOOT_SPEC))
    for step in persist_steps(tree, plan):
        step.do()
    drop_vf_settings(tree, ["Blue_k8s_cluster_worker1"])
    assert (tree / VF_SETTINGS_PATH).read_text().splitlines()[-1] == "Green_k8s_cluster_worker1 0000:01:00.1 1 off on"
    assert (tree / VF_HOOK_PATH).exists()
    drop_vf_settings(tree, ["Green_k8s_cluster_worker1"])
    assert not (tree / VF_SETTINGS_PATH).exists() and not (tree / VF_HOOK_PATH).exists()


def test_host_config_writes_the_hook_executable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    run_host(capsys, "host-config", str(REBOOT_SPEC), "--host-root", str(KERNEL415), "--out", str(out))
    assert stat.S_IMODE((out / VF_HOOK_PATH).stat().st_mode) == 0o755
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == REBOOT_FILES | {EXPORTER_UNIT_PATH}


def test_a_spec_without_vfs_or_hugepages_renders_no_reboot_units() -> None:
    topo = read_host_tree(EXAMPLE / "host")
    spec = spec_from_data({"vms": [{"name": "a", "vcpus": 2, "memory": "2GiB"}]}, "s")
    files = render_host_files(make_plan(topo, spec), topo)
    assert not [
        rel for rel in files if ("hugepages" in rel and rel.startswith(UNIT_DIR)) or "udev" in rel or "hooks" in rel
    ]


def test_apply_refuses_before_any_change_without_a_hugetlbfs_of_the_size(tmp_path: Path) -> None:
    """The pages are reserved, but no hugetlbfs of 1 GiB pages is mounted: libvirt would refuse the start."""
    only_2m = build(
        tmp_path, MACHINES["intel-nosmt"](), lambda plan, topo: RuntimeSpec(mounts=DEFAULT_MOUNT), pages_in_use=False
    )
    spec = only_2m.spec_path
    env = {**os.environ, "BMSLICE_LOCK_DIR": str(tmp_path / "locks")}
    argv = [sys.executable, "-m", "bmslice.cli.main", "apply", str(spec), "--connect", "test:///default"]
    before = snapshot(only_2m.root)
    refused = subprocess.run(
        [*argv, "--host-root", str(only_2m.root)], capture_output=True, text=True, env=env, check=False
    )
    assert refused.returncode == 2 and refused.stderr.startswith(
        "error: rt uses 1048576 KiB hugepages and no hugetlbfs of that page size is mounted (/proc/mounts)"
    ), refused.stderr
    assert snapshot(only_2m.root) == before
    (only_2m.root / "proc/mounts").write_text(boot_mounts(only_2m.plan))
    dry = subprocess.run(
        [*argv, "--host-root", str(only_2m.root), "--dry-run"], capture_output=True, text=True, env=env, check=False
    )
    assert dry.returncode == 0, dry.stderr  # with the mount, the same apply goes on
