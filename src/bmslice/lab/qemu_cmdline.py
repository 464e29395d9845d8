"""The lab's QEMU command line, a pure function of its shape and files.

Facts it relies on (QEMU 10 under TCG, checked on the project's machines):
- `-device igb` is an Intel 82576 with SR-IOV (7 VFs, First VF Offset 128, stride 2);
- `intel-iommu,intremap=on,caching-mode=on` on `q35,kernel-irqchip=split` gives the guest
  real IOMMU groups and a working vfio-pci;
- `-smp ...,dies=D,modules=C` with `-machine ...,smp-cache.0.cache=l3,smp-cache.0.topology=
  module` (or `die`) sets which CPUs share each L3 (CPUID leaf 4), and the guest kernel's
  `cache/index3/shared_cpu_list` follows it (lab scenario on the EPYC-like shape);
- a device behind `pxb-pcie,numa_node=N` + `pcie-root-port` reports `numa_node` N, and
  once a pxb-pcie exists every `-device` needs an explicit `bus=`;
- option ROMs are off (`romfile=`): the lab boots its kernel directly, and QEMU 10 would
  otherwise look for ROM files of the system's older QEMU;
- TCG runs single-threaded: multi-threaded TCG with the IOMMU aborted now and then while
  the guest changed its memory map (`iotlb_to_section: Assertion ... failed`), and on a
  2-CPU machine it was barely faster.
The whole QEMU runs under coreutils `timeout`, so a lab nobody stops still ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bmslice.errors import LabError
from bmslice.lab.shape import LabShape

ROOT_TAG = "hostroot"
LAB_TARGET = "bmslice-lab.target"
SHARE_TAG = "labshare"
# no_timer_check: on a loaded machine TCG can miss the kernel's early check that the timer
# ticks through the interrupt-remapped IO-APIC, and the kernel then panics at boot
# ("timer doesn't work through Interrupt-remapped IO-APIC"); virtual machines skip that check.
# nokaslr: a 1 GiB hugepage reserved at boot needs a free, aligned gigabyte on its node, and
# a randomly placed kernel image can sit in the only one a small lab node has.
BASE_KERNEL_ARGS = ("console=ttyS0", "panic=-1", "loglevel=4", "no_timer_check", "nokaslr")
IOMMU_KERNEL_ARGS = ("intel_iommu=on", "iommu=pt")
_KERNEL_ARG = re.compile(r"[A-Za-z0-9_.,:=/+@-]+")
_SOCKET = re.compile(r"/[A-Za-z0-9_./-]{1,99}")  # an absolute path QEMU's option parser takes as is (no comma)
MAX_SWITCH_PORTS = 8
# a QEMU trace event's name, or a prefix of names with `*`: no comma, no `=` (QEMU's option syntax)
TRACE_EVENT = re.compile(r"[a-z0-9_]{1,64}\*?")
MAX_TRACE_EVENTS = 8
MIN_DISK_MIB = 1024
PXB_FIRST_BUS = 0x40
PXB_BUS_STEP = 0x20


@dataclass(frozen=True)
class BootOptions:
    """How a lab boots, beyond its shape; kept in its state, so `lab reboot` boots it alike."""

    extra_kernel_args: tuple[str, ...] = ()
    systemd: bool = False  # this machine's systemd as PID 1, on a root disk kept across `lab reboot`
    disk_mib: int = 4096  # that disk's size (a sparse file: only what the lab writes takes room)
    wires: tuple[str, ...] = ()  # switch ports (their sockets) the SR-IOV NICs plug into, in order
    switch_ports: int = 0  # NICs that are a switch's ports: a lab playing the fabric switch
    ssh_port: int | None = None  # a port of the host's 127.0.0.1 forwarded to the lab's sshd (port 22)
    # QEMU trace events (its log backend) written to the lab's qemu.log: what the emulated devices
    # were told, e.g. `e1000e_core_write` (every register the igb drivers write)
    trace: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for event in self.trace:
            if not TRACE_EVENT.fullmatch(event):
                raise LabError(f"trace {event!r}: a QEMU trace event's name (a-z, 0-9, _), or a prefix ending in *")
        if len(self.trace) > MAX_TRACE_EVENTS:
            raise LabError(f"trace: {MAX_TRACE_EVENTS} events at most")
        for wire in self.wires:
            if not _SOCKET.fullmatch(wire) or "/../" in f"{wire}/":
                raise LabError(f"wire {wire!r}: the absolute path of a switch port's socket (letters, digits, _ . / -)")
        if len(set(self.wires)) != len(self.wires):
            raise LabError("a switch port takes one NIC only")
        if not 0 <= self.switch_ports <= MAX_SWITCH_PORTS:
            raise LabError(f"switch ports: 0 to {MAX_SWITCH_PORTS}")
        if self.ssh_port is not None and not 1024 <= self.ssh_port <= 65535:
            raise LabError(f"ssh port {self.ssh_port}: use 1024-65535")
        if self.disk_mib < MIN_DISK_MIB:
            raise LabError(f"a lab's root disk needs {MIN_DISK_MIB} MiB at least")


@dataclass(frozen=True)
class LabFiles:
    qemu_prefix: Path  # where the QEMU 10 packages were unpacked
    kernel: Path
    initrd: Path
    share: Path  # the writable 9p share (jobs, results, the stage-2 script)
    console: Path
    pidfile: Path
    root_disk: Path | None = None  # a raw ext4 image: the overlay's upper layer

    @property
    def qemu(self) -> Path:
        return self.qemu_prefix / "usr/bin/qemu-system-x86_64"

    @property
    def module_dir(self) -> Path:
        return self.qemu_prefix / "usr/lib/x86_64-linux-gnu/qemu"


def qemu_name(lab_name: str) -> str:
    """QEMU's `-name`: what identifies a lab's processes (with its pid file), and its threads' name."""
    return f"bmslice-lab-{lab_name},process=bmslice-lab-{lab_name}"


def check_kernel_args(args: str) -> tuple[str, ...]:
    """Extra kernel args from the user: plain tokens only (no quotes, no control characters)."""
    tokens = tuple(args.split())
    for token in tokens:
        if not _KERNEL_ARG.fullmatch(token):
            raise LabError(f"kernel arg {token!r}: use letters, digits and _ . , : = / + @ - only")
    return tokens


def kernel_cmdline(shape: LabShape, extra: tuple[str, ...] = (), systemd: bool = False) -> str:
    """The lab's own args, then `extra` (an extra arg of the same key replaces the lab's)."""
    iommu = IOMMU_KERNEL_ARGS if shape.iommu else ()
    init = (f"systemd.unit={LAB_TARGET}",) if systemd else ()
    keys = {arg.partition("=")[0] for arg in extra}
    base = [arg for arg in (*BASE_KERNEL_ARGS, *iommu, *init) if arg.partition("=")[0] not in keys]
    return " ".join((*base, *extra))


MANAGEMENT_MAC = "52:54:00:1b:ff:00"  # prepare.sh finds the management NIC by it


def _mac(node: int, index: int) -> str:
    return f"52:54:00:1b:{node:02x}:{index:02x}"


def _smp(shape: LabShape) -> str:
    """QEMU's -smp: its `cores` count the cores of one module (of one die, of one socket)."""
    if shape.default_topology:
        return f"{shape.cpus},sockets={shape.sockets},cores={shape.cores_per_socket},threads={shape.threads_per_core}"
    return (
        f"{shape.cpus},sockets={shape.sockets},dies={shape.dies_per_socket},modules={shape.modules_per_die},"
        f"cores={shape.cores_per_module},threads={shape.threads_per_core}"
    )


def machine(shape: LabShape) -> str:
    """q35 with the IOMMU's split irqchip; the level each L3 cache is shared at, when not QEMU's default.

    At most 512 MiB of RAM below 4 GiB: the rest of node 0's RAM, and every other node's, lies
    above 4 GiB in gigabyte-aligned ranges, so a node of 2 GiB can give a 1 GiB hugepage at
    boot (the kernel needs a free, aligned gigabyte on the node; below 4 GiB the kernel, its
    initramfs and the firmware's tables sit in each of them).
    """
    base = "q35,kernel-irqchip=split,max-ram-below-4g=512M"
    if shape.default_topology:
        return base
    return f"{base},smp-cache.0.cache=l3,smp-cache.0.topology={shape.l3}"


def cpu(shape: LabShape) -> str:
    """TCG's `max` CPU, as an Intel one (intel-iommu, igb's drivers)."""
    if shape.default_topology:
        return "max,vendor=GenuineIntel"
    # QEMU 10.0 aborts (encode_topo_cpuid1f: assertion `count <= CPU_TOPOLOGY_LEVEL_SOCKET`) as
    # soon as a guest reads CPUID leaf 0x1F of a topology with dies or modules. Below that leaf
    # the kernel reads packages, cores and threads from leaf 0xB and which CPUs share each
    # cache from leaf 4; only its die ids (topology/die_id, which bmslice does not read) stay 0.
    return "max,vendor=GenuineIntel,level=0x1e"


def _cpu_numa(shape: LabShape) -> list[str]:
    args = []
    for node in range(shape.nodes):
        cpus = shape.cpus_of_node(node)
        args += [
            "-object",
            f"memory-backend-ram,id=mem{node},size={shape.node_memory_mib}M",
            "-numa",
            f"node,nodeid={node},cpus={cpus[0]}-{cpus[-1]},memdev=mem{node}",
        ]
    return [
        "-smp",
        _smp(shape),
        "-m",
        f"{shape.memory_mib}M",
        *args,
    ]


def _nics(shape: LabShape, boot: BootOptions) -> list[str]:
    """One PCIe expander bus per node; behind it the node's igb NICs (and node 0's management NIC).

    An igb's wire plugs into a switch port when `boot.wires` names one (in NIC order, node by
    node): a stream socket another lab's QEMU listens on (`switch_ports`), connected again
    whenever it drops; else it is QEMU's user network with nothing behind it.
    """
    args: list[str] = []
    chassis = 0
    wires = iter(boot.wires)
    for node in range(shape.nodes):
        bus_nr = PXB_FIRST_BUS + node * PXB_BUS_STEP
        args += ["-device", f"pxb-pcie,id=pxb{node},bus_nr={bus_nr},numa_node={node},bus=pcie.0"]
        for index in range(shape.sriov_nics_per_node[node]):
            chassis += 1
            port = f"rp{node}n{index}"
            wire = next(wires, None)
            netdev = (
                f"stream,id=net{node}n{index},server=off,addr.type=unix,addr.path={wire},reconnect-ms=1000"
                if wire
                else None
            )
            args += [
                "-device",
                f"pcie-root-port,id={port},bus=pxb{node},chassis={chassis},slot=0",
                "-netdev",
                netdev or f"user,id=net{node}n{index},restrict=on",
                "-device",
                f"igb,netdev=net{node}n{index},bus={port},mac={_mac(node, index)},romfile=",
            ]
        if node == 0 and shape.management_nic:
            chassis += 1
            args += [
                "-device",
                f"pcie-root-port,id=rpmgmt,bus=pxb0,chassis={chassis},slot=0",
                "-netdev",
                "user,id=mgmt,restrict=on" + (f",hostfwd=tcp:127.0.0.1:{boot.ssh_port}-:22" if boot.ssh_port else ""),
                "-device",
                f"virtio-net-pci,netdev=mgmt,bus=rpmgmt,mac={_mac(0xFF, 0)},romfile=",
            ]
    return args


def switch_port_socket(share: Path, port: int) -> Path:
    return share.parent / f"port{port}.sock"


def _switch_ports(files: LabFiles, boot: BootOptions) -> list[str]:
    """A switch's ports: virtio-net NICs (node 0), each a stream socket a server's NIC plugs into."""
    args: list[str] = []
    for port in range(boot.switch_ports):
        args += [
            "-device",
            f"pcie-root-port,id=rpsw{port},bus=pxb0,chassis={64 + port},slot=0",
            "-netdev",
            f"stream,id=swp{port},server=on,addr.type=unix,addr.path={switch_port_socket(files.share, port)}",
            "-device",
            f"virtio-net-pci,netdev=swp{port},bus=rpsw{port},mac={_mac(0xFE, port)},romfile=",
        ]
    return args


def _root_disk(files: LabFiles) -> list[str]:
    if files.root_disk is None:
        return []
    # cache=unsafe: the lab's flushes are not forced to the host's disk; what it wrote is in
    # the host's page cache for the next boot all the same (only a crash of the host loses it)
    return [
        "-drive",
        f"file={files.root_disk},format=raw,if=none,id=rootdisk,cache=unsafe,discard=unmap",
        # one queue on a legacy interrupt (vectors=0): with a queue per CPU, virtio-blk's managed
        # IRQs sit on every CPU, isolated ones too, which `audit` rightly counts (found by the
        # reboot scenario); a server's own disks are for the operator to place
        "-device",
        "virtio-blk-pci,drive=rootdisk,bus=pcie.0,num-queues=1,vectors=0",
    ]


def qemu_command(
    shape: LabShape, files: LabFiles, name: str, ttl_s: int, boot: BootOptions | None = None
) -> tuple[list[str], dict[str, str]]:
    """argv and the environment additions that start the lab."""
    boot = boot or BootOptions()
    if len(boot.wires) > sum(shape.sriov_nics_per_node):
        raise LabError(f"{len(boot.wires)} wires for {sum(shape.sriov_nics_per_node)} SR-IOV NIC(s)")
    prefix = files.qemu_prefix
    iommu = ["-device", "intel-iommu,intremap=on,caching-mode=on"] if shape.iommu else []
    argv = [
        "timeout",
        "--kill-after=15",
        f"{ttl_s}s",
        str(files.qemu),
        "-name",
        qemu_name(name),
        "-L",
        str(prefix / "usr/share/qemu"),
        "-L",
        str(prefix / "usr/share/seabios"),
        "-machine",
        machine(shape),
        "-accel",
        "tcg,thread=single",
        "-cpu",
        cpu(shape),
        *_cpu_numa(shape),
        *iommu,
        "-fsdev",
        "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device",
        f"virtio-9p-pci,fsdev=fsroot,mount_tag={ROOT_TAG},bus=pcie.0",
        "-fsdev",
        f"local,id=fsshare,path={files.share},security_model=none,multidevs=remap",
        "-device",
        f"virtio-9p-pci,fsdev=fsshare,mount_tag={SHARE_TAG},bus=pcie.0",
        *_root_disk(files),
        *_nics(shape, boot),
        *_switch_ports(files, boot),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{files.console}",
        "-pidfile",
        str(files.pidfile),
        *(arg for event in boot.trace for arg in ("-trace", f"enable={event}")),
        "-kernel",
        str(files.kernel),
        "-initrd",
        str(files.initrd),
        "-append",
        kernel_cmdline(shape, boot.extra_kernel_args, boot.systemd),
    ]
    return argv, {"QEMU_MODULE_DIR": str(files.module_dir)}
