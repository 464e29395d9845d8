"""The lab's pure parts: its shape, QEMU command line, initramfs archive and module order.

The lab itself (boot, jobs, scenarios on its real kernel) runs in `make lab-test`.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bmslice.errors import LabError
from bmslice.lab.cpio import Cpio
from bmslice.lab.kmod import load_order, module_name, parse_modules_dep
from bmslice.lab.qemu_cmdline import LabFiles, check_kernel_args, kernel_cmdline, qemu_command
from bmslice.lab.shape import DESIGN_NOTE_TWIN, MAX_CPUS, LabShape, check_lab_name, shape_like
from bmslice.topology.sysfs import read_host_tree

REPO = Path(__file__).resolve().parents[1]
SERVER1 = REPO / "examples/server1/host"
FILES = LabFiles(
    qemu_prefix=Path("/cache/root"),
    kernel=Path("/cache/root/boot/vmlinuz"),
    initrd=Path("/state/initrd.img"),
    share=Path("/state/share"),
    console=Path("/state/console.log"),
    pidfile=Path("/state/qemu.pid"),
)


# --- shape ------------------------------------------------------------------------------


def test_the_default_lab_is_the_design_notes_twin() -> None:
    shape = DESIGN_NOTE_TWIN
    assert (shape.sockets, shape.nodes, shape.threads_per_core) == (2, 2, 2)
    assert shape.sriov_nics_per_node == (1, 1) and shape.management_nic and shape.iommu
    assert shape.cpus_of_node(0) == (0, 1, 2, 3, 4, 5) and shape.cpus_of_node(1) == (6, 7, 8, 9, 10, 11)


def test_shape_like_the_design_notes_server_says_what_shrank() -> None:
    shaped = shape_like(read_host_tree(SERVER1))
    shape = shaped.shape
    assert (shape.sockets, shape.nodes, shape.threads_per_core) == (2, 2, 2)
    assert shape.cpus <= MAX_CPUS and shape.cores_per_socket == 4
    assert "cores per socket 6 -> 4 (16 CPUs at most under TCG)" in shaped.scaled_down
    # eno1/eno2 (X540) and eno3/eno4 (I350) all sit on node 0 and can do SR-IOV: two igb there at most.
    assert shape.sriov_nics_per_node == (2, 0)
    assert "node 0: 4 SR-IOV NICs -> 2" in shaped.scaled_down
    assert any(note.startswith("memory per node 32") for note in shaped.scaled_down)


@pytest.mark.parametrize(
    ("sockets", "cores", "threads", "per_socket", "want"),
    [
        (2, 32, 2, 4, (2, 4, 2, 8)),  # an EPYC-like host with 4 NUMA nodes per socket (NPS4)
        (8, 8, 2, 1, (4, 2, 2, 4)),  # eight sockets: four at most
        (1, 64, 1, 1, (1, 16, 1, 1)),  # no SMT
        (2, 12, 4, 1, (2, 4, 2, 2)),  # four threads per core: two at most
    ],
)
def test_shape_like_big_hosts(
    sockets: int, cores: int, threads: int, per_socket: int, want: tuple[int, int, int, int]
) -> None:
    from topologies import synthetic

    topo = synthetic(sockets=sockets, cores=cores, threads=threads, nodes_per_socket=per_socket, numbering="adjacent")
    shaped = shape_like(topo)
    shape = shaped.shape
    assert (shape.sockets, shape.cores_per_socket, shape.threads_per_core, shape.nodes) == want
    assert shape.cpus <= MAX_CPUS
    assert any(note.startswith("cores per socket") for note in shaped.scaled_down), shaped.scaled_down
    assert (shape.sockets < sockets) == any(note.startswith("sockets") for note in shaped.scaled_down)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sockets": 0}, "at least one socket"),
        ({"sockets": 3, "nodes": 2, "sriov_nics_per_node": (1, 1)}, "one must divide the other"),
        ({"nodes": 4, "cores_per_socket": 3, "sriov_nics_per_node": (1, 1, 1, 1)}, "do not split over 4 nodes"),
        ({"sriov_nics_per_node": (1,)}, "names 1 nodes, the lab has 2"),
    ],
)
def test_impossible_shapes_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LabError, match=message):
        LabShape(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["Lab", "lab\n", "-lab", "a" * 33, "lab/x", ""])
def test_lab_names_are_checked_whole(name: str) -> None:
    with pytest.raises(LabError):
        check_lab_name(name)


# --- QEMU command line -------------------------------------------------------------------


def _devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]


def test_qemu_command_for_the_twin() -> None:
    argv, env = qemu_command(DESIGN_NOTE_TWIN, FILES, "lab", 3600)
    assert argv[:4] == ["timeout", "--kill-after=15", "3600s", "/cache/root/usr/bin/qemu-system-x86_64"]
    assert env == {"QEMU_MODULE_DIR": "/cache/root/usr/lib/x86_64-linux-gnu/qemu"}
    joined = " ".join(argv)
    assert "-smp 12,sockets=2,cores=3,threads=2" in joined
    assert "node,nodeid=0,cpus=0-5,memdev=mem0" in joined and "node,nodeid=1,cpus=6-11,memdev=mem1" in joined
    devices = _devices(argv)
    # Once a pxb-pcie exists every -device needs an explicit bus= (intel-iommu sits on the system bus).
    assert all("bus=" in d for d in devices if not d.startswith("intel-iommu"))
    assert "intel-iommu,intremap=on,caching-mode=on" in devices
    assert "pxb-pcie,id=pxb0,bus_nr=64,numa_node=0,bus=pcie.0" in devices
    assert "pxb-pcie,id=pxb1,bus_nr=96,numa_node=1,bus=pcie.0" in devices
    igbs = [d for d in devices if d.startswith("igb,")]
    assert len(igbs) == 2 and all("romfile=" in d for d in igbs)
    assert sum(d.startswith("virtio-net-pci,") for d in devices) == 1
    assert argv[argv.index("-append") + 1] == "console=ttyS0 panic=-1 loglevel=4 intel_iommu=on iommu=pt"
    assert "readonly=on" in argv[argv.index("-fsdev") + 1]


def test_extra_kernel_args_replace_the_defaults_by_key() -> None:
    line = kernel_cmdline(DESIGN_NOTE_TWIN, ("iommu=nopt", "isolcpus=2-5,8-11"))
    assert line.split() == [
        "console=ttyS0",
        "panic=-1",
        "loglevel=4",
        "intel_iommu=on",
        "iommu=nopt",
        "isolcpus=2-5,8-11",
    ]


@pytest.mark.parametrize("bad", ["a'b", 'x="y"', "init=/bin/sh;reboot", "a\nb=1 c$d"])
def test_kernel_args_are_plain_tokens(bad: str) -> None:
    with pytest.raises(LabError):
        check_kernel_args(bad)


# --- initramfs pieces ----------------------------------------------------------------------


def test_cpio_archive_reads_back_with_the_cpio_tool(tmp_path: Path) -> None:
    archive = Cpio()
    archive.directory("bin")
    archive.file("bin/hello", b"hello\n", 0o755)
    archive.symlink("bin/sh", "hello")
    archive.char_device("console", 5, 1)
    data = archive.finish()
    assert len(data) % 4 == 0
    cpio = shutil.which("cpio")
    assert cpio is not None, "the cpio tool is missing (scripts/setup-host.sh installs it)"
    listing = subprocess.run([cpio, "-itv"], input=data, capture_output=True, check=True).stdout.decode()
    lines = listing.splitlines()
    assert [line.split()[-1] for line in lines] == ["bin", "bin/hello", "hello", "console"]
    assert lines[1].startswith("-rwxr-xr-x") and lines[2].startswith("lrwxrwxrwx") and lines[3].startswith("crw")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run([cpio, "-id", "--quiet", "bin/hello"], input=data, cwd=out, check=True)
    assert (out / "bin/hello").read_bytes() == b"hello\n"
    assert Cpio().finish() == Cpio().finish()  # same input, same bytes
    gzip.decompress(gzip.compress(data, mtime=0))


DEP = """kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/vfio/pci/vfio-pci.ko.xz:
"""


def test_modules_load_after_what_they_need() -> None:
    order = [module_name(p) for p in load_order(parse_modules_dep(DEP), ["virtio_pci", "9p", "vfio-pci"])]
    assert order == ["virtio_ring", "virtio", "virtio_pci", "9pnet", "netfs", "fscache", "9p", "vfio_pci"]
    for i, name in enumerate(order):  # each after what it needs
        path = next(p for p in parse_modules_dep(DEP) if module_name(p) == name)
        assert all(order.index(module_name(n)) < i for n in parse_modules_dep(DEP)[path])


def test_module_problems_are_one_line_errors() -> None:
    with pytest.raises(LabError, match=r"kernel module nosuch is not in modules\.dep"):
        load_order(parse_modules_dep(DEP), ["nosuch"])
    with pytest.raises(LabError, match=r"in a loop: kernel/a\.ko -> kernel/b\.ko -> kernel/a\.ko"):
        load_order(parse_modules_dep("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n"), ["a"])


# --- the CLI's refusals, before anything starts --------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bmslice.cli.main", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("lab", "run", "--name", "bmslice-no-such-lab", "--", "true"), "lab bmslice-no-such-lab is not up"),
        (("lab", "up", "--name", "Bad\n"), "lab name"),
        (("lab", "up", "--name", "bmslice-never-booted", "--append", "init=/bin/sh;x"), "kernel arg"),
        (("lab", "up", "--name", "bmslice-never-booted", "--like", "/no/such/place"), "--like /no/such/place"),
        (("lab", "run", "--name", "bmslice-no-such-lab"), "give a COMMAND or a SCRIPT"),
        (("lab", "run", "--name", "x", "--file", "/no/such/file", "--", "true"), "/no/such/file: not a regular file"),
    ],
)
def test_lab_cli_refusals_are_one_line(args: tuple[str, ...], words: str) -> None:
    done = _cli(*args)
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_lab_down_of_a_lab_that_is_not_up() -> None:
    done = _cli("lab", "down", "--name", "bmslice-no-such-lab")
    assert done.returncode == 0 and "lab bmslice-no-such-lab was not up" in done.stdout
