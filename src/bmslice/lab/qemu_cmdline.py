"""The lab's QEMU command line, a pure function of its shape and files.

Facts it relies on (QEMU 10 under TCG, checked on the project's machines):
- `-device igb` is an Intel 82576 with SR-IOV (7 VFs, First VF Offset 128, stride 2);
- `intel-iommu,intremap=on,caching-mode=on` on `q35,kernel-irqchip=split` gives the guest
  real IOMMU groups and a working vfio-pci;
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
SHARE_TAG = "labshare"
BASE_KERNEL_ARGS = ("console=ttyS0", "panic=-1", "loglevel=4")
IOMMU_KERNEL_ARGS = ("intel_iommu=on", "iommu=pt")
_KERNEL_ARG = re.compile(r"[A-Za-z0-9_.,:=/+@-]+")
PXB_FIRST_BUS = 0x40
PXB_BUS_STEP = 0x20


@dataclass(frozen=True)
class LabFiles:
    qemu_prefix: Path  # where the QEMU 10 packages were unpacked
    kernel: Path
    initrd: Path
    share: Path  # the writable 9p share (jobs, results, the stage-2 script)
    console: Path
    pidfile: Path

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


def kernel_cmdline(shape: LabShape, extra: tuple[str, ...] = ()) -> str:
    iommu = IOMMU_KERNEL_ARGS if shape.iommu else ()
    keys = {arg.partition("=")[0] for arg in extra}
    base = [arg for arg in (*BASE_KERNEL_ARGS, *iommu) if arg.partition("=")[0] not in keys]
    return " ".join((*base, *extra))


def _mac(node: int, index: int) -> str:
    return f"52:54:00:1b:{node:02x}:{index:02x}"


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
        f"{shape.cpus},sockets={shape.sockets},cores={shape.cores_per_socket},threads={shape.threads_per_core}",
        "-m",
        f"{shape.memory_mib}M",
        *args,
    ]


def _nics(shape: LabShape) -> list[str]:
    """One PCIe expander bus per node; behind it the node's igb NICs (and node 0's management NIC)."""
    args: list[str] = []
    chassis = 0
    for node in range(shape.nodes):
        bus_nr = PXB_FIRST_BUS + node * PXB_BUS_STEP
        args += ["-device", f"pxb-pcie,id=pxb{node},bus_nr={bus_nr},numa_node={node},bus=pcie.0"]
        for index in range(shape.sriov_nics_per_node[node]):
            chassis += 1
            port = f"rp{node}n{index}"
            args += [
                "-device",
                f"pcie-root-port,id={port},bus=pxb{node},chassis={chassis},slot=0",
                "-netdev",
                f"user,id=net{node}n{index},restrict=on",
                "-device",
                f"igb,netdev=net{node}n{index},bus={port},mac={_mac(node, index)},romfile=",
            ]
        if node == 0 and shape.management_nic:
            chassis += 1
            args += [
                "-device",
                f"pcie-root-port,id=rpmgmt,bus=pxb0,chassis={chassis},slot=0",
                "-netdev",
                "user,id=mgmt,restrict=on",
                "-device",
                f"virtio-net-pci,netdev=mgmt,bus=rpmgmt,mac={_mac(0xFF, 0)},romfile=",
            ]
    return args


def qemu_command(
    shape: LabShape, files: LabFiles, name: str, ttl_s: int, extra_kernel_args: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, str]]:
    """argv and the environment additions that start the lab."""
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
        "q35,kernel-irqchip=split",
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max,vendor=GenuineIntel",
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
        *_nics(shape),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{files.console}",
        "-pidfile",
        str(files.pidfile),
        "-kernel",
        str(files.kernel),
        "-initrd",
        str(files.initrd),
        "-append",
        kernel_cmdline(shape, extra_kernel_args),
    ]
    return argv, {"QEMU_MODULE_DIR": str(files.module_dir)}
