"""Every --host-root read and write stays inside the tree, and no tree file can hang or flood a read.

Hostile or broken trees: a FIFO where a file should be, a device node, a symlink loop, a link
to an absolute host path, a `..` chain that climbs out, a file far too large.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bmslice.apply.destroyer import _remove_vfs
from bmslice.apply.sriov import persist_steps, write_numvfs
from bmslice.cpuset import CpuSet
from bmslice.errors import ApplyError
from bmslice.model.plan import HostPlan, PfPlan, Plan
from bmslice.topology.fsroot import MAX_SYMLINK_HOPS, FsRoot, TreeError
from bmslice.topology.sysfs import read_host_tree
from treebuilder import HostSpec, RuntimeSpec, cpu_layout, server1_spec, snapshot, write_tree

HANG_TIMEOUT = 60  # seconds; a FIFO read would block forever


def bmslice(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bmslice.cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=HANG_TIMEOUT, cwd=cwd, env=env)


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(server1_spec(), tmp_path / "host")


# --- the resolver -------------------------------------------------------------------------------


def test_absolute_link_to_etc_passwd_resolves_inside_the_tree(tree: Path) -> None:
    (tree / "etc").mkdir()
    (tree / "etc/passwd").write_text("the tree's passwd\n")
    (tree / "proc/cmdline").unlink()
    (tree / "proc/cmdline").symlink_to("/etc/passwd")
    fs = FsRoot(tree)
    assert fs.resolve("proc/cmdline") == tree / "etc/passwd"
    assert read_host_tree(tree).kernel_cmdline == "the tree's passwd"


def test_dotdot_stops_at_the_root(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cmdline").write_text("outside the tree\n")
    climb = "../" * (len(tree.parts) + 3) + str(outside).lstrip("/") + "/cmdline"
    (tree / "proc/cmdline").unlink()
    (tree / "proc/cmdline").symlink_to(climb)  # the OS would follow this out of the tree
    assert (tree / "proc/cmdline").read_text() == "outside the tree\n"
    assert FsRoot(tree).resolve("proc/cmdline") == tree / str(outside).lstrip("/") / "cmdline"
    assert FsRoot(tree).resolve("../../../etc/shadow") == tree / "etc/shadow"
    assert read_host_tree(tree).kernel_cmdline == ""  # nothing there inside the tree


def test_a_link_chain_of_40_is_followed_41_is_refused(tmp_path: Path) -> None:
    (tmp_path / "end").write_text("reached\n")
    for i in range(MAX_SYMLINK_HOPS + 1):
        (tmp_path / f"l{i}").symlink_to("end" if i == 0 else f"l{i - 1}")
    fs = FsRoot(tmp_path)
    assert fs.read_line(f"l{MAX_SYMLINK_HOPS - 1}") == "reached"
    with pytest.raises(TreeError, match=rf"l{MAX_SYMLINK_HOPS}: more than {MAX_SYMLINK_HOPS} symbolic links"):
        fs.read(f"l{MAX_SYMLINK_HOPS}")


def test_a_symlink_loop_in_discovery_is_one_error_line(tree: Path) -> None:
    net = tree / "sys/class/net"
    (net / "eno4").unlink()
    (net / "eno4").symlink_to("eno4x")
    (net / "eno4x").symlink_to("/sys/class/net/eno4")
    message = one_error(bmslice("discover", "--host-root", str(tree)))
    assert "sys/class/net/eno4" in message and "symbolic links to follow (a loop?); refused" in message


# --- files that are not files ---------------------------------------------------------------------


def test_fifo_at_proc_cmdline_does_not_hang_discovery(tree: Path) -> None:
    (tree / "proc/cmdline").unlink()
    os.mkfifo(tree / "proc/cmdline")
    message = one_error(bmslice("discover", "--host-root", str(tree)))
    assert message == f"error: {tree}/proc/cmdline is a FIFO, not a regular file; refused"


def test_device_node_is_never_opened(tree: Path) -> None:
    target = tree / "proc/cmdline"
    target.unlink()
    try:
        os.mknod(target, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # what /dev/zero is
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    message = one_error(bmslice("discover", "--host-root", str(tree)))
    assert "proc/cmdline is a character device, not a regular file; refused" in message


def test_huge_file_is_refused_not_read_whole(tmp_path: Path) -> None:
    root = write_tree(HostSpec(cpus=cpu_layout(1, 2, 1)), tmp_path / "host")
    with (root / "proc/cpuinfo").open("wb") as handle:  # sparse: costs no disk
        handle.truncate(64 * 1024 * 1024)
    message = one_error(bmslice("discover", "--host-root", str(root)))
    assert "proc/cpuinfo is larger than" in message


def test_a_directory_where_a_file_should_be_reads_as_absent(tree: Path) -> None:
    (tree / "proc/cmdline").unlink()
    (tree / "proc/cmdline").mkdir()
    assert read_host_tree(tree).kernel_cmdline == ""


def test_live_root_still_reads() -> None:
    """sysfs files say 4096 bytes and procfs files 0: the bound is on what is read, not on st_size."""
    if not Path("/sys/devices/system/cpu/online").is_file():
        pytest.skip("no sysfs here")
    fs = FsRoot(Path("/"))
    assert fs.read("sys/devices/system/cpu/online") == Path("/sys/devices/system/cpu/online").read_text()
    assert fs.read("proc/cmdline") == Path("/proc/cmdline").read_text()


# --- writes: apply's SR-IOV files, destroy's, host-apply's ------------------------------------------


def test_sriov_writes_follow_absolute_links_inside_the_tree(tree: Path) -> None:
    real_rule = Path("/etc/udev/rules.d/70-bmslice-sriov.rules")
    existed = real_rule.exists()
    (tree / "host-etc").mkdir()
    (tree / "etc").symlink_to("/host-etc")  # a captured tree's absolute link
    pf_dir = tree / "sys/bus/pci/devices/0000:01:00.1"
    real_pf = "/" + str(pf_dir.resolve().relative_to(tree.resolve()))
    pf_dir.unlink()
    pf_dir.symlink_to(real_pf)  # /sys/devices/...: absolute, as in some captures
    write_numvfs(tree, "0000:01:00.1", 3)
    assert (tree / real_pf.lstrip("/") / "sriov_numvfs").read_text() == "3\n"
    host = HostPlan(CpuSet.parse("0"), CpuSet(), (), False, sriov=(PfPlan("0000:01:00.1", "eno2", 0, 3),))
    for step in persist_steps(tree, Plan(host, ())):
        step.do()
    assert (
        'KERNELS=="0000:01:00.1", SUBSYSTEMS=="pci", ATTR{device/sriov_numvfs}="3"'
        in (tree / "host-etc/udev/rules.d/70-bmslice-sriov.rules").read_text()
    )
    assert real_rule.exists() == existed
    _remove_vfs(tree, "0000:01:00.1")  # destroy's path: numvfs back to 0, the rule gone
    assert (tree / real_pf.lstrip("/") / "sriov_numvfs").read_text() == "0\n"
    assert not (tree / "host-etc/udev/rules.d/70-bmslice-sriov.rules").exists()


def test_sriov_write_through_a_dotdot_escape_is_refused(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sriov_numvfs").write_text("0\n")
    numvfs = tree / "sys/bus/pci/devices/0000:01:00.1/sriov_numvfs"
    numvfs_real = numvfs.resolve()
    numvfs_real.unlink()
    numvfs_real.symlink_to("../" * (len(numvfs_real.parts) + 2) + str(outside).lstrip("/") + "/sriov_numvfs")
    with pytest.raises(ApplyError, match="does not exist"):
        write_numvfs(tree, "0000:01:00.1", 4)
    assert (outside / "sriov_numvfs").read_text() == "0\n"


def test_udev_rules_dir_looping_on_itself_is_refused_by_apply(tree: Path, tmp_path: Path) -> None:
    """A capture that kept /etc/udev/rules.d as an absolute link to itself: refused, nothing written."""
    (tree / "etc/udev").mkdir(parents=True)
    (tree / "etc/udev/rules.d").symlink_to("/etc/udev/rules.d")
    before = snapshot(tree)
    spec_file = tmp_path / "spec.yaml"
    vm = {"name": "bmslice-test-loop", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "eno2"}}]}
    spec_file.write_text(yaml.safe_dump({"vms": [vm]}))
    env = {**os.environ, "BMSLICE_LOCK_DIR": str(tmp_path / "locks")}
    args = ("apply", str(spec_file), "--connect", "test:///default", "--host-root", str(tree))
    message = one_error(bmslice(*args, env=env))
    assert "etc/udev/rules.d/70-bmslice-sriov.rules: more than 40 symbolic links" in message
    assert snapshot(tree) == before


def test_fifo_at_sriov_numvfs_refuses_apply_without_hanging(tree: Path, tmp_path: Path) -> None:
    numvfs = (tree / "sys/bus/pci/devices/0000:01:00.1/sriov_numvfs").resolve()
    numvfs.unlink()
    os.mkfifo(numvfs)
    spec_file = tmp_path / "spec.yaml"
    vm = {"name": "bmslice-test-fifo", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "eno2"}}]}
    spec_file.write_text(yaml.safe_dump({"vms": [vm]}))
    env = {**os.environ, "BMSLICE_LOCK_DIR": str(tmp_path / "locks")}
    args = ("apply", str(spec_file), "--connect", "test:///default", "--host-root", str(tree))
    assert "sriov_numvfs is a FIFO, not a regular file; refused" in one_error(bmslice(*args, env=env))
    with pytest.raises(ApplyError, match="not a regular file"):
        write_numvfs(tree, "0000:01:00.1", 1)  # the write path refuses it too, without opening it


def host_apply_tree(tmp_path: Path) -> tuple[Path, Path]:
    host = replace(server1_spec(), runtime=RuntimeSpec())
    root = write_tree(host, tmp_path / "host")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text((Path(__file__).parents[1] / "examples/server1/spec.yaml").read_text())
    return root, spec_file


def test_host_apply_writes_through_absolute_links_stay_inside(tmp_path: Path) -> None:
    root, spec_file = host_apply_tree(tmp_path)
    (root / "etc").rename(root / "host-etc")
    (root / "etc").symlink_to("/host-etc")
    env = {**os.environ, "BMSLICE_LOCK_DIR": str(tmp_path / "locks")}
    result = bmslice("host-apply", str(spec_file), "--host-root", str(root), env=env)
    assert result.returncode == 0, result.stderr
    assert (root / "host-etc/default/grub.d").is_dir()
    assert "intel_iommu=on" in "".join(p.read_text() for p in (root / "host-etc/default/grub.d").iterdir())
    assert not Path("/host-etc").exists()  # where the OS would have followed the link


def test_host_apply_refuses_a_fifo_and_puts_everything_back(tmp_path: Path) -> None:
    root, spec_file = host_apply_tree(tmp_path)
    (root / "var/lib/bmslice").mkdir(parents=True)
    os.mkfifo(root / "var/lib/bmslice/reboot-pending")  # placed last: earlier files were written by then
    before = snapshot(root)
    env = {**os.environ, "BMSLICE_LOCK_DIR": str(tmp_path / "locks")}
    message = one_error(bmslice("host-apply", str(spec_file), "--host-root", str(root), env=env))
    assert "reboot-pending is a FIFO, not a regular file; refused" in message
    assert "nothing was left changed" in message
    assert snapshot(root) == before


def test_worked_examples_in_docstrings_hold() -> None:
    import doctest

    import bmslice.topology.fsroot
    import bmslice.topology.pci_config

    for module in (bmslice.topology.fsroot, bmslice.topology.pci_config):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
