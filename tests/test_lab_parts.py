"""The lab's pure parts: its shape, QEMU command line, initramfs archive and module order.

The lab itself (boot, jobs, scenarios on its real kernel) runs in `make lab-test`.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bmslice.errors import LabError, SpecError
from bmslice.lab.cpio import Cpio
from bmslice.lab.kmod import load_order, module_name, parse_modules_dep
from bmslice.lab.qemu_cmdline import BootOptions, LabFiles, check_kernel_args, kernel_cmdline, qemu_command
from bmslice.lab.shape import DESIGN_NOTE_TWIN, MAX_CPUS, LabShape, check_lab_name, shape_like
from bmslice.lab.units import lab_units
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
        (2, 32, 2, 4, (2, 4, 2, 4)),  # an EPYC-like host in NPS4: 8 nodes, 4 at most (2 per socket)
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
    assert (
        argv[argv.index("-append") + 1]
        == "console=ttyS0 panic=-1 loglevel=4 no_timer_check nokaslr intel_iommu=on iommu=pt"
    )
    assert "readonly=on" in argv[argv.index("-fsdev") + 1]


def test_extra_kernel_args_replace_the_defaults_by_key() -> None:
    line = kernel_cmdline(DESIGN_NOTE_TWIN, ("iommu=nopt", "isolcpus=2-5,8-11"))
    assert line.split() == [
        "console=ttyS0",
        "panic=-1",
        "loglevel=4",
        "no_timer_check",
        "nokaslr",
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


# --- modern shapes: dies, modules, L3 caches per node ----------------------------------------------

EPYC_LIKE = LabShape(
    sockets=2,
    cores_per_socket=4,
    threads_per_core=2,
    nodes=4,
    node_memory_mib=768,
    sriov_nics_per_node=(1, 0, 1, 0),
    dies_per_socket=2,
    modules_per_die=2,
    l3="module",
)


def test_a_shape_with_several_l3_caches_per_node() -> None:
    shape = EPYC_LIKE
    assert (shape.cpus, shape.l3_caches, shape.l3_per_node, shape.cpus_per_l3) == (16, 8, 2, 2)
    assert shape.l3_cpus()[:3] == ((0, 1), (2, 3), (4, 5))
    assert shape.cpus_of_node(1) == (4, 5, 6, 7)  # two whole L3 caches
    assert "2 die(s) x 2 module(s) x 1 core(s) x 2 thread(s) = 16 CPUs" in shape.describe()
    assert "2 L3 caches per node" in shape.describe()
    # the twin's L3 is its socket's: one per node
    assert (DESIGN_NOTE_TWIN.l3_caches, DESIGN_NOTE_TWIN.l3_per_node) == (2, 1)


def test_qemu_command_for_several_l3_caches_per_node() -> None:
    argv, _env = qemu_command(EPYC_LIKE, FILES, "epyc", 3600)
    assert "-smp" in argv and argv[argv.index("-smp") + 1] == "16,sockets=2,dies=2,modules=2,cores=1,threads=2"
    machine = argv[argv.index("-machine") + 1]
    assert machine == "q35,kernel-irqchip=split,max-ram-below-4g=512M,smp-cache.0.cache=l3,smp-cache.0.topology=module"
    # below CPUID leaf 0x1F, which QEMU 10.0 aborts on for a topology with dies or modules
    assert argv[argv.index("-cpu") + 1] == "max,vendor=GenuineIntel,level=0x1e"
    for node, cpus in enumerate(("0-3", "4-7", "8-11", "12-15")):
        assert f"node,nodeid={node},cpus={cpus},memdev=mem{node}" in argv
    # the twin keeps QEMU's plain topology and CPU
    argv, _env = qemu_command(DESIGN_NOTE_TWIN, FILES, "lab", 3600)
    assert argv[argv.index("-machine") + 1] == "q35,kernel-irqchip=split,max-ram-below-4g=512M"
    assert argv[argv.index("-cpu") + 1] == "max,vendor=GenuineIntel"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dies_per_socket": 2, "cores_per_socket": 3}, "do not split over 2 die"),
        ({"nodes": 4, "sriov_nics_per_node": (1, 1, 1, 1), "cores_per_socket": 4}, "would span two NUMA nodes"),
        ({"modules_per_die": 0}, "at least one socket, die, module"),
        ({"l3": "socket"}, ""),
    ],
)
def test_impossible_cache_shapes_are_refused(kwargs: dict[str, object], message: str) -> None:
    from bmslice.model.input_file import validated

    if message:
        with pytest.raises(LabError, match=message):
            LabShape(**kwargs)  # type: ignore[arg-type]
    else:  # an L3 level the lab has no QEMU topology for: refused when read back from a state file
        with pytest.raises(SpecError, match=r"^lab\.json: l3: expected 'die' or 'module', got 'socket'$"):
            validated({**DESIGN_NOTE_TWIN.to_dict(), **kwargs}, LabShape, "lab.json")


def test_shape_like_an_epyc_tree_keeps_its_l3_caches_per_node(tmp_path: Path) -> None:
    from treebuilder import cpu_layout, epyc_spec, l3_by_cores, write_tree

    shaped = shape_like(read_host_tree(write_tree(epyc_spec(), tmp_path / "epyc")))
    shape = shaped.shape
    # 2 sockets in NPS4 with two 4-core CCDs per node: 4 nodes (two per socket, as dies), two L3 per node
    assert (shape.sockets, shape.dies_per_socket, shape.modules_per_die, shape.l3) == (2, 2, 2, "module")
    assert (shape.nodes, shape.l3_per_node, shape.cores_per_module, shape.threads_per_core) == (4, 2, 1, 2)
    assert "NUMA nodes 8 -> 4 (4 at most)" in shaped.scaled_down
    assert "cores per socket 32 -> 4 (1 per L3 cache; 16 CPUs at most under TCG)" in shaped.scaled_down
    # its E810s sit on host nodes 1 and 5: lab nodes 0 and 2 (host nodes folded two by two)
    assert shape.sriov_nics_per_node == (1, 0, 1, 0)
    # with SMT off, an L3 cache keeps two cores
    cpus = cpu_layout(2, 32, 1, nodes_per_socket=4)
    nosmt = replace(epyc_spec(), cpus=cpus, l3=l3_by_cores(cpus, 4, 32768, id_step=2))
    shape = shape_like(read_host_tree(write_tree(nosmt, tmp_path / "epyc-nosmt"))).shape
    assert (shape.nodes, shape.l3_per_node, shape.cores_per_module, shape.threads_per_core, shape.cpus) == (
        4,
        2,
        2,
        1,
        16,
    )


# --- boot options: a root disk, systemd, wires, ssh ------------------------------------------------


def test_boot_options_on_the_command_line() -> None:
    files = replace(FILES, root_disk=Path("/state/root.img"))
    port = "/run/bmslice/lab/fabsw/port0.sock"
    boot = BootOptions(extra_kernel_args=("isolcpus=2-5",), systemd=True, wires=(port,), ssh_port=2201)
    argv, _env = qemu_command(DESIGN_NOTE_TWIN, files, "lab", 3600, boot)
    assert "file=/state/root.img,format=raw,if=none,id=rootdisk,cache=unsafe,discard=unmap" in argv
    assert "virtio-blk-pci,drive=rootdisk,bus=pcie.0,num-queues=1,vectors=0" in argv
    netdevs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-netdev"]
    assert netdevs == [
        f"stream,id=net0n0,server=off,addr.type=unix,addr.path={port},reconnect-ms=1000",  # node 0's igb, wired
        "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:2201-:22",
        "user,id=net1n0,restrict=on",  # node 1's igb: no wire given
    ]
    line = argv[argv.index("-append") + 1].split()
    assert line[-2:] == ["systemd.unit=bmslice-lab.target", "isolcpus=2-5"]
    assert "no_timer_check" in line


def test_trace_events_go_to_qemus_log() -> None:
    boot = BootOptions(trace=("e1000e_core_write", "igb_*"))
    argv, _env = qemu_command(DESIGN_NOTE_TWIN, FILES, "lab", 3600, boot)
    traced = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-trace"]
    assert traced == ["enable=e1000e_core_write", "enable=igb_*"]
    assert "-trace" not in qemu_command(DESIGN_NOTE_TWIN, FILES, "lab", 3600, BootOptions())[0]


def test_a_switch_labs_ports() -> None:
    argv, _env = qemu_command(DESIGN_NOTE_TWIN, FILES, "fabsw", 3600, BootOptions(switch_ports=2))
    netdevs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-netdev"]
    assert netdevs[-2:] == [
        "stream,id=swp0,server=on,addr.type=unix,addr.path=/state/port0.sock",
        "stream,id=swp1,server=on,addr.type=unix,addr.path=/state/port1.sock",
    ]
    devices = _devices(argv)
    assert "virtio-net-pci,netdev=swp1,bus=rpsw1,mac=52:54:00:1b:fe:01,romfile=" in devices
    assert len({d.split("chassis=")[1].split(",")[0] for d in devices if "chassis=" in d}) == 5  # all distinct


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wires": ("port0.sock",)}, "the absolute path of a switch port's socket"),
        ({"wires": ("/run/x,server=on",)}, "the absolute path"),
        ({"wires": ("/run/../etc/x",)}, "the absolute path"),
        ({"wires": ("/run/p", "/run/p")}, "one NIC only"),
        ({"switch_ports": 9}, "0 to 8"),
        ({"ssh_port": 22}, "1024-65535"),
        ({"disk_mib": 100}, "1024 MiB at least"),
        ({"trace": ("e1000e_core_write,file=/etc/passwd",)}, "a QEMU trace event's name"),
        ({"trace": ("*",)}, "a QEMU trace event's name"),
        ({"trace": tuple(f"e{i}" for i in range(9))}, "8 events at most"),
    ],
)
def test_bad_boot_options_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LabError, match=message):
        BootOptions(**kwargs)  # type: ignore[arg-type]


def test_more_wires_than_nics_are_refused() -> None:
    with pytest.raises(LabError, match="3 wires for 2 SR-IOV NIC"):
        qemu_command(DESIGN_NOTE_TWIN, FILES, "lab", 60, BootOptions(wires=("/a", "/b", "/c")))


def test_the_labs_own_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool is not None, "systemd-analyze is missing (package systemd)"
    for libvirtd in (True, False):
        unit_dir = tmp_path / f"units-{libvirtd}"
        unit_dir.mkdir()
        for name, text in lab_units(libvirtd).items():
            (unit_dir / name).write_text(text)
        done = subprocess.run(
            [tool, "verify", "--man=no", *sorted(str(p) for p in unit_dir.iterdir())],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0 and not done.stderr.strip(), done
    assert "libvirtd.service" in lab_units(True)["bmslice-lab.target"]
    assert "libvirtd" not in lab_units(False)["bmslice-lab.target"]


def test_cli_reboot_of_a_lab_that_is_not_up() -> None:
    done = _cli("lab", "reboot", "--name", "bmslice-no-such-lab")
    assert done.returncode == 2 and done.stderr == (
        "error: lab bmslice-no-such-lab is not up; `bmslice lab up --name bmslice-no-such-lab` first\n"
    )
