"""Write synthetic sysfs/procfs host trees laid out exactly as Linux lays them out.

A tree is described by a `HostSpec` (CPUs, node memory, PCI devices, interfaces, /proc
contents) and written with `write_tree(spec, root)`; `bmslice.topology.sysfs.read_host_tree(root)`
then reads it like a live machine. `cpu_layout()` builds the CPU table for the usual
numbering schemes; pass an explicit tuple of `CpuSpec` for anything else.

The design note's server is `server1_spec()`; its tree is committed under
examples/server1/host and regenerated with:

    python tests/treebuilder.py server1 examples/server1/host

The same server as its Ubuntu 18.04 kernel (4.15) shows it, `server1_kernel415_spec()`, is
committed under tests/data/trees/server1-kernel4.15 (`treebuilder.py server1-kernel4.15 DIR`).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path, PurePosixPath

from bmslice.cpuset import CpuSet

INTEL_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx fxsr sse sse2 ss"
    " ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc"
    " cpuid aperfmperf pni pclmulqdq dtes64 monitor ds_cpl vmx smx est tm2 ssse3 cx16 xtpr pdcm pcid dca sse4_1"
    " sse4_2 x2apic popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm cpuid_fault epb pti ssbd ibrs ibpb"
    " stibp tpr_shadow vnmi flexpriority ept vpid fsgsbase smep erms xsaveopt dtherm ida arat pln pts md_clear"
    " flush_l1d"
)
AMD_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx"
    " mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid amd_dcm aperfmperf"
    " pni pclmulqdq monitor ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand lahf_lm cmp_legacy"
    " svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw skinit wdt tce topoext perfctr_core"
    " perfctr_nb bpext perfctr_llc mwaitx cpb hw_pstate sme ssbd sev ibpb vmmcall fsgsbase bmi1 avx2 smep bmi2"
    " rdseed adx smap clflushopt sha_ni xsaveopt xsavec xgetbv1 xsaves clzero irperf xsaveerptr arat npt lbrv"
    " svm_lock nrip_save tsc_scale vmcb_clean flushbyasid decodeassists pausefilter pfthreshold avic"
    " v_vmsave_vmload vgif overflow_recov succor smca"
)
VENDOR_DEFAULTS = {
    # vendor: (model name, cpu family, model, stepping, flags)
    "GenuineIntel": ("Intel(R) Xeon(R) CPU E5-2620 v2 @ 2.10GHz", 6, 62, 4, INTEL_FLAGS),
    "AuthenticAMD": ("AMD EPYC 7451 24-Core Processor", 23, 1, 2, AMD_FLAGS),
}
HUGEPAGE_SIZES_KIB = (2048, 1048576)
TAB = "\t"


@dataclass(frozen=True)
class CpuSpec:
    id: int
    package: int
    core: int
    node: int
    die: int = 0
    online: bool = True


@dataclass(frozen=True)
class NodeMemory:
    memory_mib: int = 16384
    free_mib: int | None = None  # None: 15/16 of memory_mib
    hugepages: tuple[tuple[int, int, int], ...] = tuple((size, 0, 0) for size in HUGEPAGE_SIZES_KIB)
    # (size_kib, nr_hugepages, free_hugepages); () writes no hugepages dir at all


@dataclass(frozen=True)
class PciSpec:
    address: str  # "0000:01:00.0"
    class_code: str = "0x020000"
    vendor: str = "0x8086"
    device: str = "0x1528"
    numa_node: int = 0  # -1: firmware gave no locality
    iommu_group: int | None = None
    driver: str | None = None
    interfaces: tuple[str, ...] = ()
    sriov_totalvfs: int | None = None  # None: not SR-IOV capable, no sriov_* files
    sriov_numvfs: int = 0
    sriov_offset: int | None = None  # First VF Offset / VF Stride, as the kernel exposes them
    sriov_stride: int | None = None
    physfn: str | None = None  # set on a VF: the address of its PF
    parent: str | None = None  # upstream bridge; None sits on the root bus
    vf_device: str | None = None  # device ID of its VFs (SR-IOV capability in config space)


@dataclass(frozen=True)
class IrqSpec:
    """A /proc/irq/N directory. `effective` None: no effective_affinity_list (older kernels)."""

    number: int
    affinity: str  # smp_affinity_list
    effective: str | None = None
    action: str | None = "eth0-TxRx-0"  # the handler's name, a subdirectory; None: no handler


@dataclass(frozen=True)
class TaskSpec:
    tid: int
    comm: str
    cpus: str  # Cpus_allowed_list


@dataclass(frozen=True)
class ProcSpec:
    """A /proc/<pid> directory with task/<tid>/status for the main thread and each of `threads`."""

    pid: int
    comm: str
    cpus: str  # the main thread's Cpus_allowed_list
    cmdline: tuple[str, ...] = ()
    ppid: int = 1
    kthread: bool = False
    kthread_line: bool = True  # False: a kernel older than 6.x, no "Kthread:" in status
    stat: bool = True  # False: no stat file either (left: parent kthreadd, no exe)
    threads: tuple[TaskSpec, ...] = ()
    extra_flags: int = 0  # more PF_* bits in stat, e.g. PF_NO_SETAFFINITY (0x04000000)


@dataclass(frozen=True)
class RuntimeSpec:
    """What a running host shows beyond discovery (preflight, audit): written only when set."""

    kernel_release: str = "6.1.0-18-amd64"
    isolated: str | None = ""  # sys/devices/system/cpu/isolated; None: no file
    nohz_full: str | None = "(null)"  # None: no file (kernel without NO_HZ_FULL)
    irqs: tuple[IrqSpec, ...] = ()
    procs: tuple[ProcSpec, ...] = ()
    vfio: str | None = "module"  # "module" (under lib/modules) | "loaded" | "builtin" | None
    kvm_nested: str | None = "N"  # parameters/nested of kvm_intel or kvm_amd; None: kvm not loaded
    memlock: str = "8388608"  # proc/self/limits "Max locked memory" (bytes or "unlimited")
    distro: str | None = "debian"  # "debian": etc/debian_version + etc/default/grub; "rhel": redhat-release, grubby
    # proc/mounts: systemd's default hugetlbfs (2 MiB pages, as the kernel shows it); None: no file
    mounts: str | None = "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"


@dataclass(frozen=True)
class L3Spec:
    """One L3 instance: its kernel id, every CPU sharing it (siblings too) and its size."""

    id: int
    cpus: tuple[int, ...]
    size_kib: int = 32768


@dataclass(frozen=True)
class GroupSpec:
    """A resctrl group directory: its schemata text and the thread ids in `tasks`."""

    schemata: str
    tasks: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResctrlSpec:
    """/sys/fs/resctrl. `mounted` False: the empty mount point a kernel with resctrl shows.

    `default_schemata` None: every way of every L3 (and MB 100) for the default group, as
    the kernel sets it at mount time.
    """

    mounted: bool = True
    cbm_mask: str = "7ff"
    min_cbm_bits: int = 1
    num_closids: int = 16
    shareable_bits: str = "0"
    cdp: bool = False
    mb: tuple[int, int, int] | None = (10, 10, 8)  # (bandwidth_gran, min_bandwidth, num_closids); None: no MBA
    mb_default: int = 100  # what the kernel gives a group: 100 (percent), 2048 on AMD
    default_schemata: str | None = None
    groups: Mapping[str, GroupSpec] = field(default_factory=dict)
    mount_options: str = "rw,relatime"


@dataclass(frozen=True)
class HostSpec:
    cpus: tuple[CpuSpec, ...]
    vendor: str = "GenuineIntel"
    model_name: str | None = None  # None: the vendor's default
    flags: str | None = None  # None: the vendor's default (has vmx or svm)
    node_memory: Mapping[int, NodeMemory] = field(default_factory=dict)  # missing nodes: NodeMemory()
    distances: tuple[tuple[int, ...], ...] | None = None  # None: 10 local, 16 same package, 21 remote
    numa: bool = True  # False: a kernel without NUMA, no /sys/devices/system/node
    cmdline: str = "BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=/dev/sda1 ro quiet"
    hostname: str | None = "testhost"
    default_route: str | None = None
    extra_default_routes: tuple[tuple[str, int], ...] = ()  # (interface, metric)
    iommu: bool = True
    pci: tuple[PciSpec, ...] = ()
    virtual_interfaces: Mapping[str, str] = field(default_factory=lambda: {"lo": ""})  # name -> "bond"|"bridge"|""
    masters: Mapping[str, str] = field(default_factory=dict)  # interface -> its bond or bridge
    macs: Mapping[str, str] = field(default_factory=dict)  # interface -> MAC; others get a derived one
    runtime: RuntimeSpec | None = None  # None: no live state (IRQs, processes, modules) in the tree
    # Older kernels: before 4.16 no sriov_offset/sriov_stride files; before 4.? only hex masks
    # (thread_siblings, node cpumap), no *_list files. pci_config: each device's config file,
    # 4 KiB as root reads it, with the SR-IOV capability of every SR-IOV PF.
    sysfs_sriov_routing: bool = True
    cpu_lists: bool = True
    pci_config: bool = False
    # proc/sys/kernel/osrelease and etc/os-release of a host without live state (a runtime has its own)
    kernel_release: str | None = None
    os_release: str | None = None
    l3: tuple[L3Spec, ...] = ()  # (): no cache directories under cpuN
    resctrl: ResctrlSpec | None = None  # None: no /sys/fs/resctrl (kernel without resctrl)


def cpu_layout(
    sockets: int,
    cores_per_socket: int,
    threads_per_core: int = 2,
    siblings: str = "spread",
    nodes_per_socket: int = 1,
    socket_order: str = "block",
    offline: Iterable[int] = (),
) -> tuple[CpuSpec, ...]:
    """CPU table for common numberings.

    siblings "spread": thread t of physical core p is CPU t*ncores + p (Intel: 0/12, 1/13...);
    "adjacent": CPU p*threads + t (0/1, 2/3...). socket_order "block": socket 0 owns the first
    cores; "interleave": cores alternate between sockets, so with one node per socket node0
    holds the even CPUs and node1 the odd ones. Each socket's cores are split evenly over its nodes.
    """
    if siblings not in ("spread", "adjacent") or socket_order not in ("block", "interleave"):
        raise ValueError(f"unknown numbering {siblings!r}/{socket_order!r}")
    total_cores = sockets * cores_per_socket
    offline_set = set(offline)
    cpus = []
    for socket in range(sockets):
        for core in range(cores_per_socket):
            physical = socket * cores_per_socket + core if socket_order == "block" else core * sockets + socket
            node = socket * nodes_per_socket + core * nodes_per_socket // cores_per_socket
            for thread in range(threads_per_core):
                spread = siblings == "spread"
                cpu_id = thread * total_cores + physical if spread else physical * threads_per_core + thread
                cpus.append(CpuSpec(cpu_id, socket, core, node, online=cpu_id not in offline_set))
    return tuple(sorted(cpus, key=lambda c: c.id))


def l3_by_cores(
    cpus: tuple[CpuSpec, ...], cores_per_l3: int, size_kib: int = 32768, id_step: int = 1
) -> tuple[L3Spec, ...]:
    """L3 instances of `cores_per_l3` physical cores each, in core order within each package
    (an EPYC CCX/CCD). `id_step` 2 numbers them 0, 2, 4... as AMD's kernels often do."""
    cores: dict[tuple[int, int, int], list[int]] = {}
    for cpu in sorted(cpus, key=lambda c: (c.package, c.die, c.core, c.id)):
        cores.setdefault((cpu.package, cpu.die, cpu.core), []).append(cpu.id)
    by_package: dict[int, list[list[int]]] = {}
    for (package, _, _), ids in cores.items():
        by_package.setdefault(package, []).append(ids)
    out = []
    for package in sorted(by_package):
        members = by_package[package]
        for start in range(0, len(members), cores_per_l3):
            chunk = sorted(cpu for core in members[start : start + cores_per_l3] for cpu in core)
            out.append(L3Spec(len(out) * id_step, tuple(chunk), size_kib))
    return tuple(out)


def vf_specs(
    pf: PciSpec, count: int, first_group: int, device: str = "0x1515", driver: str = "ixgbevf"
) -> list[PciSpec]:
    """VFs of `pf` at devfn 0x80 + 2*i + pf function (how ixgbe places them), one IOMMU group each."""
    domain, bus, slot_function = pf.address.split(":")
    function = int(slot_function.split(".")[1])
    vfs = []
    for index in range(count):
        devfn = 0x80 + 2 * index + function
        vfs.append(
            PciSpec(
                address=f"{domain}:{bus}:{devfn >> 3:02x}.{devfn & 7}",
                class_code=pf.class_code,
                vendor=pf.vendor,
                device=device,
                numa_node=pf.numa_node,
                iommu_group=first_group + index,
                driver=driver,
                physfn=pf.address,
                parent=pf.parent,
            )
        )
    return vfs


def derived_mac(name: str) -> str:
    if name == "lo":
        return "00:00:00:00:00:00"
    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


class _Tree:
    """Writes files and relative symlinks below a root, given Linux absolute paths."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def file(self, rel: str, content: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")

    def mkdir(self, rel: str) -> None:
        (self.root / rel).mkdir(parents=True, exist_ok=True)

    def link(self, rel: str, target_rel: str) -> None:
        """A relative symlink at `rel` pointing to `target_rel`, as sysfs writes them."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(PurePosixPath("/", target_rel), PurePosixPath("/", rel).parent)
        if PurePosixPath(target).name == "..":
            # Linux names the target even when it is an ancestor: "../../../0000:01:00.0", not "../..".
            target = f"{target}/../{PurePosixPath(target_rel).name}"
        path.symlink_to(target)


def snapshot(root: Path) -> dict[str, tuple[str, str | bytes]]:
    """Every file and symlink below root (directories only matter through them, as in git)."""
    found: dict[str, tuple[str, str | bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_file():
                found[rel] = ("file", path.read_bytes())
    return found


def write_tree(spec: HostSpec, root: Path) -> Path:
    """Write `spec` as ROOT/sys and ROOT/proc; `root` must be empty or absent."""
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    tree = _Tree(root)
    _write_cpus(tree, spec)
    if spec.numa:
        _write_nodes(tree, spec)
    _write_global_hugepages(tree, spec)
    device_dirs = _write_pci(tree, spec)
    _write_net(tree, spec, device_dirs)
    _write_proc(tree, spec)
    _write_caches(tree, spec)
    if spec.resctrl is not None:
        _write_resctrl(tree, spec, spec.resctrl)
    if spec.runtime is not None:
        _write_runtime(tree, spec, spec.runtime)
    return root


# --- CPUs and NUMA nodes --------------------------------------------------------------


def _cpulist(ids: Iterable[int]) -> str:
    return CpuSet.from_iter(ids).format()


def _node_ids(spec: HostSpec) -> list[int]:
    return sorted({c.node for c in spec.cpus} | set(spec.node_memory))


def _write_cpus(tree: _Tree, spec: HostSpec) -> None:
    base = "sys/devices/system/cpu"
    all_ids = [c.id for c in spec.cpus]
    online = [c for c in spec.cpus if c.online]
    tree.file(f"{base}/possible", _cpulist(all_ids) + "\n")
    tree.file(f"{base}/present", _cpulist(all_ids) + "\n")
    tree.file(f"{base}/online", _cpulist(c.id for c in online) + "\n")
    tree.file(f"{base}/offline", _cpulist(c.id for c in spec.cpus if not c.online) + "\n")
    for cpu in spec.cpus:
        _write_cpu(tree, spec, cpu, online)


def _write_cpu(tree: _Tree, spec: HostSpec, cpu: CpuSpec, online: list[CpuSpec]) -> None:
    rel = f"sys/devices/system/cpu/cpu{cpu.id}"
    if cpu.id != 0:  # the boot CPU cannot be unplugged, so it has no online file
        tree.file(f"{rel}/online", f"{int(cpu.online)}\n")
    if spec.numa:
        tree.link(f"{rel}/node{cpu.node}", f"sys/devices/system/node/node{cpu.node}")
    if not cpu.online:  # the kernel removes topology/ when a CPU goes offline
        return
    threads = [c.id for c in online if (c.package, c.die, c.core) == (cpu.package, cpu.die, cpu.core)]
    package = [c.id for c in online if c.package == cpu.package]
    tree.file(f"{rel}/topology/physical_package_id", f"{cpu.package}\n")
    tree.file(f"{rel}/topology/die_id", f"{cpu.die}\n")
    tree.file(f"{rel}/topology/core_id", f"{cpu.core}\n")
    for name, ids in (("thread_siblings", threads), ("core_siblings", package)):
        _write_cpus_file(tree, spec, f"{rel}/topology/{name}_list", f"{rel}/topology/{name}", ids)


def cpu_mask(ids: Iterable[int], nbits: int) -> str:
    """The kernel's %*pb: hex, comma-separated 32-bit words, most significant first.

    >>> cpu_mask([0, 12], 24), cpu_mask([0, 33], 64)
    ('001001', '00000002,00000001')
    """
    digits = f"{sum(1 << i for i in set(ids)):0{(nbits + 3) // 4}x}"
    words = [digits[max(0, end - 8) : end] for end in range(len(digits), 0, -8)]
    return ",".join(reversed(words))


def _write_cpus_file(tree: _Tree, spec: HostSpec, list_rel: str, mask_rel: str, ids: Iterable[int]) -> None:
    """The CPU list file, or for an old kernel the hex mask file alone."""
    if spec.cpu_lists:
        tree.file(list_rel, _cpulist(ids) + "\n")
    else:
        tree.file(mask_rel, cpu_mask(ids, len(spec.cpus)) + "\n")


def _node_memory(spec: HostSpec, node: int) -> NodeMemory:
    return spec.node_memory.get(node, NodeMemory())


def _distance(spec: HostSpec, a: int, b: int) -> int:
    if spec.distances is not None:
        return spec.distances[a][b]
    if a == b:
        return 10
    packages = {n: {c.package for c in spec.cpus if c.node == n} for n in (a, b)}
    return 16 if packages[a] & packages[b] else 21


def _meminfo_lines(prefix: str, memory: NodeMemory) -> list[str]:
    total_kb = memory.memory_mib * 1024
    free_mib = memory.free_mib if memory.free_mib is not None else memory.memory_mib * 15 // 16
    free_kb = free_mib * 1024
    return [
        f"{prefix}MemTotal:       {total_kb:>10} kB",
        f"{prefix}MemFree:        {free_kb:>10} kB",
        f"{prefix}MemUsed:        {total_kb - free_kb:>10} kB",
    ]


def _write_hugepages(tree: _Tree, rel: str, pools: Iterable[tuple[int, int, int]]) -> None:
    for size, total, free in pools:
        tree.file(f"{rel}/hugepages-{size}kB/nr_hugepages", f"{total}\n")
        tree.file(f"{rel}/hugepages-{size}kB/free_hugepages", f"{free}\n")
        tree.file(f"{rel}/hugepages-{size}kB/surplus_hugepages", "0\n")


def _write_nodes(tree: _Tree, spec: HostSpec) -> None:
    base = "sys/devices/system/node"
    nodes = _node_ids(spec)
    tree.file(f"{base}/possible", _cpulist(nodes) + "\n")
    tree.file(f"{base}/online", _cpulist(nodes) + "\n")
    tree.file(f"{base}/has_cpu", _cpulist(c.node for c in spec.cpus if c.online) + "\n")
    for node in nodes:
        rel = f"{base}/node{node}"
        memory = _node_memory(spec, node)
        # Offline CPUs leave their node's cpulist (x86 numa_remove_cpu) but keep cpuN/nodeM.
        node_cpus = [c.id for c in spec.cpus if c.node == node and c.online]
        _write_cpus_file(tree, spec, f"{rel}/cpulist", f"{rel}/cpumap", node_cpus)
        tree.file(f"{rel}/meminfo", "\n".join(_meminfo_lines(f"Node {node} ", memory)) + "\n")
        tree.file(f"{rel}/distance", " ".join(str(_distance(spec, node, other)) for other in nodes) + "\n")
        _write_hugepages(tree, f"{rel}/hugepages", memory.hugepages)


def _global_pools(spec: HostSpec) -> list[tuple[int, int, int]]:
    totals: dict[int, tuple[int, int]] = {}
    nodes = _node_ids(spec) or [0]
    for node in nodes:
        for size, total, free in _node_memory(spec, node).hugepages:
            old_total, old_free = totals.get(size, (0, 0))
            totals[size] = (old_total + total, old_free + free)
    return [(size, total, free) for size, (total, free) in sorted(totals.items())]


def _write_global_hugepages(tree: _Tree, spec: HostSpec) -> None:
    _write_hugepages(tree, "sys/kernel/mm/hugepages", _global_pools(spec))


# --- PCI ------------------------------------------------------------------------------


def _pci_dirs(spec: HostSpec) -> dict[str, str]:
    """Each device's real directory: nested below its parent bridge, as in /sys/devices."""
    by_address = {d.address: d for d in spec.pci}
    dirs: dict[str, str] = {}

    def locate(dev: PciSpec) -> str:
        if dev.address not in dirs:
            if dev.parent is not None:
                dirs[dev.address] = f"{locate(by_address[dev.parent])}/{dev.address}"
            else:
                domain, bus = dev.address.split(":")[:2]
                dirs[dev.address] = f"sys/devices/pci{domain}:{bus}/{dev.address}"
        return dirs[dev.address]

    for dev in spec.pci:
        locate(dev)
    return dirs


def _write_pci_device(tree: _Tree, spec: HostSpec, dev: PciSpec, rel: str) -> None:
    tree.file(f"{rel}/class", f"{dev.class_code}\n")
    tree.file(f"{rel}/vendor", f"{dev.vendor}\n")
    tree.file(f"{rel}/device", f"{dev.device}\n")
    tree.file(f"{rel}/numa_node", f"{dev.numa_node}\n")
    tree.link(f"sys/bus/pci/devices/{dev.address}", rel)
    if dev.driver:
        tree.link(f"{rel}/driver", f"sys/bus/pci/drivers/{dev.driver}")
        tree.link(f"sys/bus/pci/drivers/{dev.driver}/{dev.address}", rel)
    if dev.sriov_totalvfs is not None:
        tree.file(f"{rel}/sriov_totalvfs", f"{dev.sriov_totalvfs}\n")
        tree.file(f"{rel}/sriov_numvfs", f"{dev.sriov_numvfs}\n")
        if dev.sriov_offset is not None and spec.sysfs_sriov_routing:
            tree.file(f"{rel}/sriov_offset", f"{dev.sriov_offset}\n")
            tree.file(f"{rel}/sriov_stride", f"{dev.sriov_stride or 1}\n")
    if spec.pci_config:
        path = tree.root / rel / "config"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pci_config(dev))
    if spec.iommu and dev.iommu_group is not None:
        group = f"sys/kernel/iommu_groups/{dev.iommu_group}"
        tree.link(f"{rel}/iommu_group", group)
        tree.link(f"{group}/devices/{dev.address}", rel)


def pci_config(dev: PciSpec) -> bytes:
    """4 KiB of PCI Express config space as root reads it from sysfs.

    The header and the capability chain an Intel X540 shows (`lspci -vvv`): power management,
    MSI, MSI-X and PCI Express in the first 256 bytes; AER, serial number, ARI, SR-IOV and ACS
    from 0x100 for an SR-IOV PF, AER alone otherwise.
    """
    cfg = bytearray(4096)

    def put(offset: int, value: int, size: int) -> None:
        cfg[offset : offset + size] = value.to_bytes(size, "little")

    bridge = dev.class_code.startswith("0x0604")
    put(0x00, int(dev.vendor, 16), 2)
    put(0x02, int(dev.device, 16), 2)
    put(0x04, 0x0406, 2)  # command: memory space, bus master, INTx off
    put(0x06, 0x0010, 2)  # status: has a capability list
    put(0x08, 0x01 | int(dev.class_code, 16) << 8, 4)  # revision, then the 24-bit class code
    cfg[0x0E] = 0x01 if bridge else 0x80  # header type: bridge, or a function of a multi-function device
    cfg[0x34] = 0x40
    for offset, cap_id, nxt in ((0x40, 0x01, 0x50), (0x50, 0x05, 0x70), (0x70, 0x11, 0xA0), (0xA0, 0x10, 0x00)):
        cfg[offset], cfg[offset + 1] = cap_id, nxt
    sriov = bool(dev.sriov_totalvfs) and dev.physfn is None
    extended = [(0x100, 0x0001, 2), (0x140, 0x0003, 1), (0x150, 0x000E, 1), (0x160, 0x0010, 1), (0x1D0, 0x000D, 1)]
    chain = extended if sriov else extended[:1]
    for i, (offset, cap_id, version) in enumerate(chain):
        nxt = chain[i + 1][0] if i + 1 < len(chain) else 0
        put(offset, cap_id | version << 16 | nxt << 20, 4)
    if sriov:
        cap = 0x160
        put(cap + 0x08, 0x0010, 2)  # control: ARI capable hierarchy
        put(cap + 0x0C, dev.sriov_totalvfs or 0, 2)  # InitialVFs
        put(cap + 0x0E, dev.sriov_totalvfs or 0, 2)  # TotalVFs
        put(cap + 0x10, dev.sriov_numvfs, 2)  # NumVFs
        cfg[cap + 0x12] = int(dev.address.rsplit(".", 1)[1])  # function dependency link
        put(cap + 0x14, dev.sriov_offset or 0, 2)  # First VF Offset
        put(cap + 0x16, dev.sriov_stride or 0, 2)  # VF Stride
        put(cap + 0x1A, int(dev.vf_device or "0", 16), 2)
        put(cap + 0x1C, 0x00000553, 4)  # supported page sizes
        put(cap + 0x20, 0x00000001, 4)  # system page size: 4 KiB
    return bytes(cfg)


def add_vfs(root: Path, spec: HostSpec, pf_address: str, count: int, first_group: int) -> HostSpec:
    """What the kernel does when `count` is written to a PF's sriov_numvfs in a tree written from
    `spec`: the VFs appear, linked from the PF as virtfnN. Returns the spec that now describes it."""
    pf = next(d for d in spec.pci if d.address == pf_address)
    grown = replace(spec, pci=(*spec.pci, *vf_specs(pf, count, first_group)))
    tree = _Tree(root)
    dirs = _pci_dirs(grown)
    for vf in grown.pci[len(spec.pci) :]:
        _write_pci_device(tree, grown, vf, dirs[vf.address])
    _link_vfs(tree, grown, dirs, [pf])
    return grown


def _link_vfs(tree: _Tree, spec: HostSpec, dirs: Mapping[str, str], pfs: Iterable[PciSpec]) -> None:
    for pf in pfs:
        vfs = [d for d in spec.pci if d.physfn == pf.address]
        for index, vf in enumerate(vfs):
            if not (tree.root / dirs[pf.address] / f"virtfn{index}").is_symlink():
                tree.link(f"{dirs[pf.address]}/virtfn{index}", dirs[vf.address])
                tree.link(f"{dirs[vf.address]}/physfn", dirs[pf.address])


def _write_pci(tree: _Tree, spec: HostSpec) -> dict[str, str]:
    tree.mkdir("sys/kernel/iommu_groups")
    dirs = _pci_dirs(spec)
    for dev in spec.pci:
        _write_pci_device(tree, spec, dev, dirs[dev.address])
    _link_vfs(tree, spec, dirs, spec.pci)
    return dirs


# --- network interfaces ---------------------------------------------------------------


def _write_interface(tree: _Tree, spec: HostSpec, name: str, rel: str) -> None:
    tree.file(f"{rel}/address", spec.macs.get(name, derived_mac(name)) + "\n")
    tree.link(f"sys/class/net/{name}", rel)
    kind = spec.virtual_interfaces.get(name, "")
    if kind == "bond":
        tree.file(f"{rel}/bonding/mode", "active-backup 1\n")
    elif kind == "bridge":
        tree.file(f"{rel}/bridge/stp_state", "0\n")
    master = spec.masters.get(name)
    if master is None:
        return
    tree.link(f"{rel}/master", f"sys/devices/virtual/net/{master}")
    if spec.virtual_interfaces.get(master) == "bond":
        tree.file(f"{rel}/bonding_slave/state", "active\n")
    elif spec.virtual_interfaces.get(master) == "bridge":
        tree.file(f"{rel}/brport/state", "3\n")


def _write_net(tree: _Tree, spec: HostSpec, device_dirs: Mapping[str, str]) -> None:
    for dev in spec.pci:
        for name in dev.interfaces:
            rel = f"{device_dirs[dev.address]}/net/{name}"
            tree.link(f"{rel}/device", device_dirs[dev.address])
            _write_interface(tree, spec, name, rel)
    for name in spec.virtual_interfaces:
        _write_interface(tree, spec, name, f"sys/devices/virtual/net/{name}")


# --- /proc ----------------------------------------------------------------------------


def _cpuinfo_entry(spec: HostSpec, cpu: CpuSpec) -> str:
    model_name, family, model, stepping, flags = VENDOR_DEFAULTS.get(spec.vendor, VENDOR_DEFAULTS["GenuineIntel"])
    same_package = [c for c in spec.cpus if c.online and c.package == cpu.package]
    fields = [
        ("processor", str(cpu.id)),
        ("vendor_id", spec.vendor),
        ("cpu family", str(family)),
        ("model", str(model)),
        ("model name", spec.model_name or model_name),
        ("stepping", str(stepping)),
        ("physical id", str(cpu.package)),
        ("siblings", str(len(same_package))),
        ("core id", str(cpu.core)),
        ("cpu cores", str(len({(c.die, c.core) for c in same_package}))),
        ("flags", spec.flags or flags),
    ]
    # /proc/cpuinfo pads keys with tabs to two tab stops.
    return "".join(f"{key}{TAB if len(key) >= 8 else TAB * 2}: {value}\n" for key, value in fields)


def _route_line(iface: str, destination: str, gateway: str, flags: int, metric: int, mask: str) -> str:
    return f"{iface}\t{destination}\t{gateway}\t{flags:04X}\t0\t0\t{metric}\t{mask}\t0\t0\t0\n"


def _net_route(spec: HostSpec) -> str:
    lines = ["Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"]
    defaults = ([(spec.default_route, 0)] if spec.default_route else []) + list(spec.extra_default_routes)
    for iface, metric in defaults:
        lines.append(_route_line(iface, "00000000", "0100A8C0", 0x0003, metric, "00000000"))
        lines.append(_route_line(iface, "0000A8C0", "00000000", 0x0001, metric, "00FFFFFF"))
    return "".join(lines)


def _proc_meminfo(spec: HostSpec) -> str:
    nodes = _node_ids(spec) or [0]
    memory = NodeMemory(
        memory_mib=sum(_node_memory(spec, n).memory_mib for n in nodes),
        free_mib=sum(_meminfo_free(_node_memory(spec, n)) for n in nodes),
    )
    pools = {size: (total, free) for size, total, free in _global_pools(spec)}
    total, free = pools.get(2048, (0, 0))
    lines = [
        *_meminfo_lines("", memory)[:2],
        f"HugePages_Total:  {total:>8}",
        f"HugePages_Free:   {free:>8}",
        "Hugepagesize:       2048 kB",
    ]
    return "\n".join(lines) + "\n"


def _meminfo_free(memory: NodeMemory) -> int:
    return memory.free_mib if memory.free_mib is not None else memory.memory_mib * 15 // 16


def _write_proc(tree: _Tree, spec: HostSpec) -> None:
    entries = [_cpuinfo_entry(spec, cpu) for cpu in spec.cpus if cpu.online]
    tree.file("proc/cpuinfo", "\n".join(entries) + "\n")
    tree.file("proc/meminfo", _proc_meminfo(spec))
    tree.file("proc/cmdline", spec.cmdline + "\n")
    tree.file("proc/net/route", _net_route(spec))
    if spec.hostname is not None:
        tree.file("proc/sys/kernel/hostname", spec.hostname + "\n")
    if spec.kernel_release is not None:
        tree.file("proc/sys/kernel/osrelease", spec.kernel_release + "\n")
    if spec.os_release is not None:
        tree.file("etc/os-release", spec.os_release)


# --- caches and resctrl -------------------------------------------------------------------


def _write_cache_index(
    tree: _Tree, rel: str, level: int, kind: str, cache_id: int, shared: Iterable[int], kib: int
) -> None:
    tree.file(f"{rel}/level", f"{level}\n")
    tree.file(f"{rel}/type", f"{kind}\n")
    tree.file(f"{rel}/id", f"{cache_id}\n")
    tree.file(f"{rel}/shared_cpu_list", _cpulist(shared) + "\n")
    tree.file(f"{rel}/size", f"{kib}K\n")


def _write_caches(tree: _Tree, spec: HostSpec) -> None:
    """L1d, L1i and L2 per core, then the L3 that shares it: the kernel's index0..3 layout."""
    if not spec.l3:
        return
    online = [c for c in spec.cpus if c.online]
    for cpu in online:
        core = [c.id for c in online if (c.package, c.die, c.core) == (cpu.package, cpu.die, cpu.core)]
        rel = f"sys/devices/system/cpu/cpu{cpu.id}/cache"
        first = min(core)
        _write_cache_index(tree, f"{rel}/index0", 1, "Data", first, core, 32)
        _write_cache_index(tree, f"{rel}/index1", 1, "Instruction", first, core, 32)
        _write_cache_index(tree, f"{rel}/index2", 2, "Unified", first, core, 512)
        l3 = next((c for c in spec.l3 if cpu.id in c.cpus), None)
        if l3 is not None:
            shared = [c for c in l3.cpus if c in {o.id for o in online}]
            _write_cache_index(tree, f"{rel}/index3", 3, "Unified", l3.id, shared, l3.size_kib)


def _schemata(spec: HostSpec, rs: ResctrlSpec) -> str:
    """The default group as the kernel shows it after mount: padded names, zero-padded masks."""
    width = (int(rs.cbm_mask, 16).bit_length() + 3) // 4
    ids = [c.id for c in spec.l3]
    lines = ["    L3:" + ";".join(f"{i}={int(rs.cbm_mask, 16):0{width}x}" for i in ids)]
    if rs.mb is not None:
        lines.append("    MB:" + ";".join(f"{i}={rs.mb_default:>3}" for i in ids))
    return "\n".join(lines) + "\n"


def _write_resctrl(tree: _Tree, spec: HostSpec, rs: ResctrlSpec) -> None:
    base = "sys/fs/resctrl"
    tree.mkdir(base)
    if not rs.mounted:
        return
    l3_dirs = ("L3CODE", "L3DATA") if rs.cdp else ("L3",)
    for name in l3_dirs:
        tree.file(f"{base}/info/{name}/cbm_mask", rs.cbm_mask + "\n")
        tree.file(f"{base}/info/{name}/min_cbm_bits", f"{rs.min_cbm_bits}\n")
        tree.file(f"{base}/info/{name}/num_closids", f"{rs.num_closids // len(l3_dirs)}\n")
        tree.file(f"{base}/info/{name}/shareable_bits", rs.shareable_bits + "\n")
    if rs.mb is not None:
        gran, minimum, closids = rs.mb
        tree.file(f"{base}/info/MB/bandwidth_gran", f"{gran}\n")
        tree.file(f"{base}/info/MB/min_bandwidth", f"{minimum}\n")
        tree.file(f"{base}/info/MB/num_closids", f"{closids}\n")
        tree.file(f"{base}/info/MB/delay_linear", "1\n")
    tree.file(f"{base}/schemata", rs.default_schemata if rs.default_schemata is not None else _schemata(spec, rs))
    tree.file(f"{base}/tasks", "1\n2\n")
    for name, group in rs.groups.items():
        tree.file(f"{base}/{name}/schemata", group.schemata)
        tree.file(f"{base}/{name}/tasks", "".join(f"{tid}\n" for tid in group.tasks))
    tree.file("proc/mounts", f"resctrl /sys/fs/resctrl resctrl {rs.mount_options} 0 0\n")


# --- live state: IRQs, processes, modules, distribution ---------------------------------

# The first lines of these distributions' /etc/os-release (os-release(5))
DEBIAN12_OS_RELEASE = (
    'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'
)
RHEL94_OS_RELEASE = 'NAME="Red Hat Enterprise Linux"\nVERSION="9.4 (Plow)"\nID="rhel"\nID_LIKE="fedora"\n'
UBUNTU1804_OS_RELEASE = 'NAME="Ubuntu"\nVERSION="18.04 LTS (Bionic Beaver)"\nID=ubuntu\nID_LIKE=debian\n'

PF_KTHREAD_FLAGS = 0x00208040  # what /proc/2/stat shows: PF_KTHREAD | PF_NOFREEZE | PF_FORKNOEXEC
USER_FLAGS = 0x00400100


def _mask(cpus: str) -> str:
    value = sum(1 << cpu for cpu in CpuSet.parse(cpus))
    return f"{value:x}"


def _write_irq(tree: _Tree, irq: IrqSpec) -> None:
    rel = f"proc/irq/{irq.number}"
    tree.file(f"{rel}/smp_affinity_list", irq.affinity + "\n")
    tree.file(f"{rel}/smp_affinity", _mask(irq.affinity) + "\n")
    if irq.effective is not None:
        tree.file(f"{rel}/effective_affinity_list", irq.effective + "\n")
        tree.file(f"{rel}/effective_affinity", _mask(irq.effective) + "\n")
    if irq.action is not None:
        tree.mkdir(f"{rel}/{irq.action}")


def _task_status(proc: ProcSpec, tid: int, comm: str, cpus: str) -> str:
    lines = [f"Name:\t{comm}", "State:\tS (sleeping)", f"Tgid:\t{proc.pid}", f"Pid:\t{tid}", f"PPid:\t{proc.ppid}"]
    if proc.kthread_line:
        lines.append(f"Kthread:\t{int(proc.kthread)}")
    lines += [f"Cpus_allowed:\t{_mask(cpus)}", f"Cpus_allowed_list:\t{cpus}"]
    return "\n".join(lines) + "\n"


def _write_process(tree: _Tree, proc: ProcSpec) -> None:
    rel = f"proc/{proc.pid}"
    tree.file(f"{rel}/status", _task_status(proc, proc.pid, proc.comm, proc.cpus))
    if proc.stat:
        flags = (PF_KTHREAD_FLAGS if proc.kthread else USER_FLAGS) | proc.extra_flags
        tree.file(f"{rel}/stat", f"{proc.pid} ({proc.comm}) S {proc.ppid} 0 0 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1\n")
    tree.file(f"{rel}/cmdline", "".join(f"{arg}\0" for arg in proc.cmdline))
    if not proc.kthread:
        (tree.root / rel / "exe").symlink_to(proc.cmdline[0] if proc.cmdline else f"/usr/bin/{proc.comm}")
    for task in (TaskSpec(proc.pid, proc.comm, proc.cpus), *proc.threads):
        tree.file(f"{rel}/task/{task.tid}/status", _task_status(proc, task.tid, task.comm, task.cpus))


def _write_runtime(tree: _Tree, spec: HostSpec, rt: RuntimeSpec) -> None:
    cpu = "sys/devices/system/cpu"
    if rt.isolated is not None:
        tree.file(f"{cpu}/isolated", rt.isolated + "\n")
    if rt.nohz_full is not None:
        tree.file(f"{cpu}/nohz_full", rt.nohz_full + "\n")
    tree.file("proc/sys/kernel/osrelease", rt.kernel_release + "\n")
    tree.file("proc/self/limits", f"Max locked memory         {rt.memlock:<21}{rt.memlock:<21}bytes\n")
    if rt.mounts is not None:
        tree.file("proc/mounts", rt.mounts)
    for irq in rt.irqs:
        _write_irq(tree, irq)
    for proc in rt.procs:
        _write_process(tree, proc)
    modules = f"lib/modules/{rt.kernel_release}"
    if rt.vfio == "module":
        tree.file(f"{modules}/kernel/drivers/vfio/pci/vfio-pci.ko", "")
    elif rt.vfio == "loaded":
        tree.mkdir("sys/module/vfio_pci")
        tree.mkdir("sys/bus/pci/drivers/vfio-pci")
    elif rt.vfio == "builtin":
        tree.file(f"{modules}/modules.builtin", "kernel/drivers/vfio/pci/vfio-pci.ko\n")
    if rt.kvm_nested is not None:
        kvm = "kvm_amd" if spec.vendor == "AuthenticAMD" else "kvm_intel"
        tree.file(f"sys/module/{kvm}/parameters/nested", rt.kvm_nested + "\n")
    if rt.distro == "debian":
        tree.file("etc/debian_version", "12.5\n")
        tree.file("etc/os-release", DEBIAN12_OS_RELEASE)
        tree.file("etc/default/grub", 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    elif rt.distro == "rhel":
        tree.file("etc/redhat-release", "Red Hat Enterprise Linux release 9.4 (Plow)\n")
        tree.file("etc/os-release", RHEL94_OS_RELEASE)
        tree.file("usr/sbin/grubby", "")


# --- the design note's server ---------------------------------------------------------


def server1_spec() -> HostSpec:
    """Xeon E5-2620 v2, 2 sockets x 6 cores x 2 threads, node0 = even CPUs, siblings N/N+12."""
    bridge = PciSpec("0000:00:01.0", class_code="0x060400", device="0x0e02", iommu_group=1, driver="pcieport")
    x540 = PciSpec(
        "", device="0x1528", driver="ixgbe", sriov_totalvfs=63, sriov_offset=128, sriov_stride=2, parent=bridge.address,
        vf_device="0x1515",
    )  # fmt: skip
    i350 = PciSpec("", device="0x1521", driver="igb", sriov_totalvfs=7, vf_device="0x1520")
    return HostSpec(
        cpus=cpu_layout(2, 6, 2, siblings="spread", socket_order="interleave"),
        vendor="GenuineIntel",
        model_name="Intel(R) Xeon(R) CPU E5-2620 v2 @ 2.10GHz",
        node_memory={0: NodeMemory(32768), 1: NodeMemory(32768)},
        cmdline="BOOT_IMAGE=/vmlinuz-4.15.0-20-generic root=/dev/mapper/server1--vg-root ro intel_iommu=on",
        hostname="server1",
        default_route="eno3",
        pci=(
            bridge,
            replace(x540, address="0000:01:00.0", iommu_group=25, interfaces=("eno1",)),
            replace(x540, address="0000:01:00.1", iommu_group=26, interfaces=("eno2",)),
            replace(i350, address="0000:08:00.0", iommu_group=30, interfaces=("eno3",)),
            replace(i350, address="0000:08:00.1", iommu_group=31, interfaces=("eno4",)),
        ),
        virtual_interfaces={"lo": "", "virbr0": "bridge"},
    )


def server1_kernel415_spec() -> HostSpec:
    """The design note's server as its Ubuntu 18.04 kernel (4.15) shows it: `sriov_totalvfs` but no
    `sriov_offset`/`sriov_stride` in sysfs (Linux 4.16 added them); root reads First VF Offset and
    VF Stride from each PF's config space instead. X540: 0x80 and 2 (its PF 1's VFs at 01:10.1,
    01:10.3, ...); I350: 0x80 and 4. Its kernel has no per-node hugepages= either (5.16).
    Committed as tests/data/trees/server1-kernel4.15."""
    base = server1_spec()
    pci = tuple(replace(d, sriov_offset=128, sriov_stride=4) if d.device == "0x1521" else d for d in base.pci)
    return replace(
        base,
        pci=pci,
        sysfs_sriov_routing=False,
        pci_config=True,
        kernel_release="4.15.0-20-generic",
        os_release=UBUNTU1804_OS_RELEASE,
    )


def fleet_host_spec(hostname: str) -> HostSpec:
    """A server like the note's server1 under another name: the design note's next step runs
    four of them (examples/fleet/hosts/<name>, regenerated with `treebuilder.py <name> DIR`)."""
    cmdline = server1_spec().cmdline.replace("server1--vg", f"{hostname}--vg")
    # each server's NICs have MACs of their own, as real ones do (the fabric check tells them apart)
    macs = {name: derived_mac(f"{hostname}/{name}") for name in ("eno1", "eno2", "eno3", "eno4")}
    return replace(server1_spec(), hostname=hostname, cmdline=cmdline, macs=macs)


def epyc_spec() -> HostSpec:
    """An EPYC 7543-like server: 2 sockets x 32 cores x 2 threads in NPS4 (8 NUMA nodes of 8
    cores), one 32 MiB L3 per 4-core CCD, so 2 L3 domains per node; kernel L3 ids 0, 2, 4, ...
    resctrl mounted: 16 ways, 16 CLOSIDs, AMD's MB in absolute units (2048 = unlimited)."""
    cpus = cpu_layout(2, 32, 2, siblings="spread", nodes_per_socket=4)
    e810 = PciSpec("", vendor="0x8086", device="0x1593", driver="ice", sriov_totalvfs=128)
    mgmt = PciSpec("0000:c1:00.0", device="0x1533", driver="igb", numa_node=0, iommu_group=60, interfaces=("eno1",))
    return HostSpec(
        cpus=cpus,
        vendor="AuthenticAMD",
        model_name="AMD EPYC 7543 32-Core Processor",
        node_memory={n: NodeMemory(65536) for n in range(8)},
        cmdline="BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=/dev/sda1 ro quiet amd_iommu=on iommu=pt",
        hostname="epyc1",
        default_route="eno1",
        pci=(
            mgmt,
            replace(e810, address="0000:41:00.0", numa_node=1, iommu_group=40, interfaces=("ens1f0",)),
            replace(e810, address="0000:a1:00.0", numa_node=5, iommu_group=50, interfaces=("ens2f0",)),
        ),
        l3=l3_by_cores(cpus, 4, 32768, id_step=2),
        resctrl=ResctrlSpec(cbm_mask="ffff", num_closids=16, mb=(1, 0, 16), mb_default=2048),
    )


def skx_snc_spec() -> HostSpec:
    """A Xeon Gold 6148-like server with sub-NUMA clustering: 2 sockets x 20 cores x 2 threads,
    2 NUMA nodes per socket, one 27.5 MiB L3 (11 ways of 2.5 MiB) per socket spanning both of
    its nodes; resctrl with MBA in percent (granularity 10, minimum 10, 8 CLOSIDs)."""
    cpus = cpu_layout(2, 20, 2, siblings="spread", nodes_per_socket=2)
    return HostSpec(
        cpus=cpus,
        vendor="GenuineIntel",
        model_name="Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz",
        node_memory={n: NodeMemory(49152) for n in range(4)},
        cmdline="BOOT_IMAGE=/vmlinuz-6.1.0-18-amd64 root=/dev/sda1 ro quiet intel_iommu=on",
        hostname="skx1",
        l3=l3_by_cores(cpus, 20, 28160),
        resctrl=ResctrlSpec(cbm_mask="7ff", num_closids=16, mb=(10, 10, 8)),
    )


FLEET_HOSTS = ("control1", "server1", "server2", "server3")

SPECS = {
    "server1": server1_spec,
    "server1-kernel4.15": server1_kernel415_spec,
    "epyc1": epyc_spec,
    "skx1": skx_snc_spec,
}
SPECS.update({name: partial(fleet_host_spec, name) for name in FLEET_HOSTS if name != "server1"})


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in SPECS:
        print(f"usage: treebuilder.py {{{','.join(SPECS)}}} OUTDIR", file=sys.stderr)
        return 2
    write_tree(SPECS[argv[0]](), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
