"""bmslice preflight: is this server ready to be sliced by this plan? (pure)

Each finding is ok, warn or fail with a one-line remedy; any fail means "not yet".
`preflight(plan, topo, facts)` judges data read beforehand through FsRoot
(`read_preflight_facts`), so the same checks run on "/" and on a captured tree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from bmslice.apply.host_apply import REBOOT_PENDING, Bootloader, bootloader_step, detect_bootloader
from bmslice.model.plan import Plan, VmPlan
from bmslice.model.sizes import GIB_KIB
from bmslice.model.topology import HostTopology
from bmslice.plan.host import iommu_args
from bmslice.plan.realtime import QEMU_OVERHEAD_MIB
from bmslice.render.host_files import GIG_MOUNT_POINT, GIG_MOUNT_UNIT
from bmslice.render.systemd_units import LIBVIRT_UNITS, UNIT_DIR
from bmslice.topology.fsroot import FsRoot
from bmslice.topology.mounts import read_hugetlbfs_mounts
from bmslice.verify.findings import Finding, fail, ok, warn
from bmslice.verify.host_state import (
    ModuleFacts,
    RealtimeFacts,
    read_module_facts,
    read_processes,
    read_realtime_facts,
    read_reclaimable_mib,
)

MIB = 1024 * 1024


@dataclass(frozen=True)
class PreflightFacts:
    modules: ModuleFacts
    bootloader: Bootloader
    reboot_recorded: bool  # host-apply already wrote the kernel args and noted the reboot
    running_guests: frozenset[str] = frozenset()  # planned VMs whose QEMU already runs
    reclaimable_mib: Mapping[int, int] = field(default_factory=dict)  # page cache per node
    realtime: RealtimeFacts = field(default_factory=RealtimeFacts)
    hugetlbfs: Mapping[int, tuple[str, ...]] | None = None  # page size KiB -> mount points; None: unknown
    gig_mount_unit: bool = False  # bmslice's 1 GiB hugetlbfs mount unit is in place


def read_preflight_facts(fs: FsRoot, plan: Plan, topo: HostTopology) -> PreflightFacts:
    planned = {vm.name for vm in plan.vms}
    running = frozenset(p.guest for p in read_processes(fs) if p.guest in planned)
    return PreflightFacts(
        modules=read_module_facts(fs),
        bootloader=detect_bootloader(fs),
        reboot_recorded=fs.read(REBOOT_PENDING) is not None,
        running_guests=frozenset(g for g in running if g is not None),
        reclaimable_mib=read_reclaimable_mib(fs, tuple(n.id for n in topo.numa_nodes)),
        realtime=read_realtime_facts(fs),
        hugetlbfs=read_hugetlbfs_mounts(fs),
        gig_mount_unit=fs.read(f"{UNIT_DIR}/{GIG_MOUNT_UNIT}") is not None,
    )


def preflight(plan: Plan, topo: HostTopology, facts: PreflightFacts) -> tuple[Finding, ...]:
    findings = [
        *_virtualisation(plan, topo, facts.modules),
        *_guest_host(plan, topo),
        _iommu(plan, topo),
        _vfio(plan, facts.modules),
        _memlock(plan, facts.modules),
        *_memory(plan, topo, facts),
        *_hugetlbfs(plan, facts),
        *_sriov(plan, topo),
        *_realtime(plan, facts.realtime),
        _kernel_args(plan, facts),
    ]
    return tuple(findings)


def _vfio_vms(plan: Plan) -> list[VmPlan]:
    return [vm for vm in plan.vms if vm.devices]


# --- CPU virtualisation ---------------------------------------------------------------


def _virtualisation(plan: Plan, topo: HostTopology, modules: ModuleFacts) -> list[Finding]:
    amd = topo.cpu_vendor == "AuthenticAMD"
    flag, name = ("svm", "AMD-V (svm)") if amd else ("vmx", "VT-x (vmx)")
    kvm_vms = [vm.name for vm in plan.vms if vm.domain_type == "kvm"]
    if flag not in topo.cpu_flags and not ({"vmx", "svm"} & topo.cpu_flags):
        message = "no vmx or svm flag in /proc/cpuinfo: hardware virtualisation is off or hidden from this host"
        remedy = "enable VT-x / AMD-V (SVM) in the firmware setup, or host.domain_type: qemu (emulated, slow)"
        if kvm_vms:
            return [fail("cpu virtualisation", message, remedy)]
        return [warn("cpu virtualisation", message + "; the spec uses domain_type qemu", remedy)]
    found = [f for f in ("vmx", "svm") if f in topo.cpu_flags]
    out = [ok("cpu virtualisation", f"{name if flag in found else found[0]} in /proc/cpuinfo flags")]
    module = "kvm_amd" if amd else "kvm_intel"
    if modules.kvm_module is None:
        if kvm_vms:
            out.append(fail("kvm", f"{module} is not loaded (/sys/module/{module} absent)", f"modprobe {module}"))
    else:
        nested = modules.nested in ("Y", "y", "1")
        out.append(
            ok(
                "kvm",
                f"{modules.kvm_module} loaded; nested virtualisation "
                + ("on: guests may run VMs of their own" if nested else f"off ({modules.nested or 'unknown'})"),
            )
        )
    return out


def _guest_host(plan: Plan, topo: HostTopology) -> list[Finding]:
    """Under an outer hypervisor, host-passthrough exposes MSRs it does not emulate (faults.md 30)."""
    if "hypervisor" not in topo.cpu_flags:
        return [ok("nested host", "this host is bare metal (no hypervisor flag in /proc/cpuinfo)")]
    lacking = [vm.name for vm in plan.vms if "arch-capabilities" not in vm.disable_cpu_features]
    message = "this host is itself a guest (hypervisor flag in /proc/cpuinfo): host-passthrough CPUs can hit MSR errors"
    if not lacking:
        return [ok("nested host", message + "; every VM disables arch-capabilities")]
    return [
        warn(
            "nested host",
            message,
            f"set disable_cpu_features: [arch-capabilities] on {', '.join(lacking)}",
        )
    ]


# --- IOMMU, vfio-pci, memlock ---------------------------------------------------------


def _iommu(plan: Plan, topo: HostTopology) -> Finding:
    groups = {d.iommu_group for d in topo.pci_devices if d.iommu_group is not None}
    if topo.iommu_active:
        return ok("iommu", f"active: /sys/kernel/iommu_groups has entries ({len(groups)} groups hold PCI devices)")
    args = " ".join(iommu_args(topo.cpu_vendor))
    remedy = f"boot with {args} (bmslice host-apply writes them) and enable VT-d / AMD-Vi in the firmware"
    message = "not active: /sys/kernel/iommu_groups is empty"
    vms = _vfio_vms(plan)
    if vms:
        return fail("iommu", f"{message}; {', '.join(vm.name for vm in vms)} pass devices through", remedy)
    return warn("iommu", message + "; no device is passed through yet", remedy)


def _vfio(plan: Plan, modules: ModuleFacts) -> Finding:
    if modules.vfio:
        return ok("vfio-pci", "available: " + "; ".join(modules.vfio))
    release = modules.kernel_release or "unknown"
    message = f"vfio-pci not found for kernel {release} (no /sys/module/vfio_pci, no module in /lib/modules/{release})"
    if not _vfio_vms(plan):
        return ok("vfio-pci", message + "; not needed: no device is passed through")
    return fail("vfio-pci", message, "install the running kernel's modules package, or a kernel with CONFIG_VFIO_PCI")


def _locked_mib(vm: VmPlan) -> int | None:
    """What libvirt sets a guest's RLIMIT_MEMLOCK to when its memory is locked: a realtime
    guest's hard_limit, a VFIO guest's RAM + 1 GiB; None when nothing is locked."""
    if vm.realtime is not None:
        return vm.realtime.memlock_mib
    return vm.memory_mib + QEMU_OVERHEAD_MIB if vm.devices else None


def _memlock(plan: Plan, modules: ModuleFacts) -> Finding:
    locked = {vm.name: mib for vm in plan.vms if (mib := _locked_mib(vm)) is not None}
    if not locked:
        return ok("memlock", "not needed: no VFIO device and no realtime VM, so guest RAM is not locked")
    need = max(locked.values())
    kinds = " or ".join(sorted({"realtime" if vm.realtime else "VFIO" for vm in plan.vms if vm.name in locked}))
    have = modules.memlock
    note = (
        f"libvirt raises RLIMIT_MEMLOCK of each {kinds} guest's QEMU itself "
        "(VFIO: RAM + 1 GiB; realtime: its memtune hard_limit)"
    )
    if have == "unlimited" or (isinstance(have, int) and have >= need * MIB):
        return ok(
            "memlock", f"RLIMIT_MEMLOCK {have if have == 'unlimited' else f'{have // MIB} MiB'} covers {need} MiB"
        )
    if have is None:
        return ok("memlock", f"this process's RLIMIT_MEMLOCK is unknown; {note}")
    if modules.cap_sys_resource is False:
        return fail(
            "memlock",
            f"RLIMIT_MEMLOCK here is {have // MIB} MiB and CAP_SYS_RESOURCE is not in this process's bounding set "
            f"(a container that drops it?): libvirt cannot raise QEMU's limit to {need} MiB, so "
            f"{', '.join(sorted(locked))} cannot start with locked memory",
            f"run libvirtd with CAP_SYS_RESOURCE, or start it with a memlock limit of at least {need} MiB",
        )
    return warn(
        "memlock",
        f"this process's RLIMIT_MEMLOCK is {have // MIB} MiB, a {kinds} guest locks up to {need} MiB; {note}",
        f"nothing under libvirt; for QEMU run by hand: ulimit -l / LimitMEMLOCK= of at least {need} MiB",
    )


# --- memory and hugepages per node ----------------------------------------------------


@dataclass
class _NodeNeed:
    plain_mib: int = 0
    pages: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    vms: list[str] = field(default_factory=list)


def _needs(plan: Plan, running: frozenset[str]) -> dict[int, _NodeNeed]:
    needs: dict[int, _NodeNeed] = defaultdict(_NodeNeed)
    for vm in plan.vms:
        if vm.name in running:
            continue  # its memory is already allocated
        for node, mib in vm.memory_by_node().items():
            need = needs[node]
            need.vms.append(vm.name)
            if vm.hugepage_kib:
                need.pages[vm.hugepage_kib] += mib * 1024 // vm.hugepage_kib
            else:
                need.plain_mib += mib
    return needs


def _memory(plan: Plan, topo: HostTopology, facts: PreflightFacts) -> list[Finding]:
    out = []
    if facts.running_guests:
        out.append(ok("memory", f"already running, not counted: {', '.join(sorted(facts.running_guests))}"))
    for node_id, need in sorted(_needs(plan, facts.running_guests).items()):
        try:
            node = topo.node(node_id)
        except KeyError:
            out.append(fail(f"memory node{node_id}", "no such NUMA node on this host", "re-plan for this host"))
            continue
        from_free = need.plain_mib
        for size_kib, pages in sorted(need.pages.items()):
            pool = node.hugepages_of(size_kib)
            short = max(0, pages - pool.free)
            out.append(_hugepage_finding(plan, node_id, size_kib, pages, pool.free, short))
            if size_kib < GIB_KIB:
                from_free += short * size_kib // 1024
        out.append(_free_finding(node_id, node.free_mib, facts.reclaimable_mib.get(node_id, 0), from_free, need.vms))
    return out


def _hugepage_finding(plan: Plan, node: int, size_kib: int, pages: int, free: int, short: int) -> Finding:
    check = f"hugepages node{node}"
    size = _size_name(size_kib)
    message = f"{free} free {size} pages, the plan needs {pages}"
    if not short:
        return ok(check, message)
    if size_kib < GIB_KIB:
        return warn(check, message + f"; host-apply reserves {short} more at runtime", "bmslice host-apply")
    if any(arg.startswith("hugepages=") for arg in plan.host.missing_kernel_args):
        return warn(check, message + "; 1 GiB pages are reserved at boot (reboot pending)", "reboot after host-apply")
    return fail(check, message + " although the boot args ask for them", "raise hugepages= on the kernel command line")


def _size_name(size_kib: int) -> str:
    return f"{size_kib // 1024} MiB" if size_kib < GIB_KIB else f"{size_kib // GIB_KIB} GiB"


def _hugetlbfs(plan: Plan, facts: PreflightFacts) -> list[Finding]:
    """libvirt needs a hugetlbfs mount of each page size a guest uses, found when the daemon starts."""
    out = []
    restart = f"restart {LIBVIRT_UNITS[0]} (or {LIBVIRT_UNITS[1]}): it looks for hugetlbfs mounts only when it starts"
    for size in sorted({vm.hugepage_kib for vm in plan.vms if vm.hugepage_kib}):
        check = f"hugetlbfs {_size_name(size)}"
        users = ", ".join(vm.name for vm in plan.vms if vm.hugepage_kib == size)
        if facts.hugetlbfs is None:
            out.append(warn(check, f"/proc/mounts unreadable: cannot tell whether {users} can get their pages", ""))
            continue
        mounted = facts.hugetlbfs.get(size, ())
        if mounted:
            out.append(ok(check, f"mounted at {', '.join(mounted)}"))
            continue
        message = f"no hugetlbfs of {_size_name(size)} pages in /proc/mounts: {users} cannot start"
        if size < GIB_KIB:
            remedy = (
                f"mount -t hugetlbfs hugetlbfs /dev/hugepages (systemd's dev-hugepages.mount does at boot), {restart}"
            )
            out.append(fail(check, message, remedy))
        elif facts.gig_mount_unit:
            out.append(
                warn(
                    check,
                    f"{GIG_MOUNT_POINT} is not mounted yet; bmslice's {GIG_MOUNT_UNIT} mounts it at boot",
                    f"systemctl start {GIG_MOUNT_UNIT}, then {restart}",
                )
            )
        else:
            out.append(fail(check, message, f"bmslice host-apply (it places {GIG_MOUNT_UNIT}), then {restart}"))
    return out


def _free_finding(node: int, free: int | None, cache: int, need: int, vms: list[str]) -> Finding:
    check = f"memory node{node}"
    who = ", ".join(vms)
    if free is None:
        return warn(check, f"free memory unknown; {who} need {need} MiB", "check numastat -m before apply")
    if free >= need:
        return ok(check, f"{free} MiB free, {who} need {need} MiB")
    if free + cache >= need:
        return warn(
            check,
            f"{free} MiB free + {cache} MiB page cache, {who} need {need} MiB: the kernel must reclaim cache first",
            "sync; echo 3 > /proc/sys/vm/drop_caches before host-apply / apply",
        )
    return fail(
        check,
        f"{free} MiB free (+{cache} MiB page cache), {who} need {need} MiB",
        f"stop host workloads on node {node}, or move a VM to another node",
    )


# --- SR-IOV ---------------------------------------------------------------------------


def _sriov(plan: Plan, topo: HostTopology) -> list[Finding]:
    out = []
    for vm in plan.vms:
        for dev in vm.devices:
            if dev.type != "passthrough":
                continue
            pci = topo.pci(dev.known_address)
            label = f"{dev.interface} ({dev.address})" if dev.interface else dev.known_address
            if pci is None:
                out.append(fail(f"sriov {label}", "device not found on this host", "re-plan for this host"))
            elif pci.physfn:
                out.append(ok(f"sriov {label}", f"a VF of {pci.physfn}, passed through to {vm.name}"))
            elif pci.sriov_totalvfs:
                out.append(
                    ok(
                        f"sriov {label}",
                        f"SR-IOV capable ({pci.sriov_totalvfs} VFs, {pci.sriov_numvfs} enabled); "
                        f"passed through whole to {vm.name}",
                    )
                )
            else:
                out.append(ok(f"sriov {label}", f"not SR-IOV capable; passed through whole to {vm.name}"))
    for pf in plan.host.sriov:
        pci = topo.pci(pf.address)
        total = pci.sriov_totalvfs if pci is not None else 0
        label = f"{pf.interface} ({pf.address})" if pf.interface else pf.address
        if pf.numvfs <= total:
            out.append(ok(f"sriov {label}", f"{pf.numvfs} of {total} VFs planned ({pf.numvfs_before} now)"))
        else:
            out.append(
                fail(f"sriov {label}", f"{pf.numvfs} VFs planned, sriov_totalvfs is {total}", "ask for fewer VFs")
            )
    return out


# --- realtime -------------------------------------------------------------------------


def _realtime(plan: Plan, facts: RealtimeFacts) -> list[Finding]:
    vms = [vm.name for vm in plan.vms if vm.realtime is not None]
    if not vms:
        return [ok("realtime", "not needed: no realtime VM")]
    who = ", ".join(vms)
    out = []
    if facts.kernel_realtime == "1":
        out.append(ok("realtime kernel", "PREEMPT_RT: /sys/kernel/realtime is 1"))
    else:
        seen = "is absent" if facts.kernel_realtime is None else f"is {facts.kernel_realtime}"
        out.append(
            warn(
                "realtime kernel",
                f"not PREEMPT_RT (/sys/kernel/realtime {seen}): {who} get SCHED_FIFO vCPUs, but the host kernel "
                "itself can still hold them off for long stretches",
                "boot a PREEMPT_RT kernel (RHEL kernel-rt with kernel-rt-kvm, Debian linux-image-rt-amd64, "
                "Ubuntu Pro realtime-kernel)",
            )
        )
    if facts.tuned_profile is not None:
        out.append(ok("tuned realtime-virtual-host", f"available: {facts.tuned_profile}"))
    else:
        out.append(
            warn(
                "tuned realtime-virtual-host",
                "tuned's realtime-virtual-host profile is not installed (no realtime-virtual-host/tuned.conf under "
                "/usr/lib/tuned or /usr/lib/tuned/profiles)",
                "install it (RHEL: tuned-profiles-nfv-host; Debian, Ubuntu: tuned) to apply the host's realtime "
                "sysctls; bmslice host-config writes its variables file",
            )
        )
    if facts.sched_rt_runtime_us == "-1":
        out.append(ok("rt throttling", "off: kernel.sched_rt_runtime_us is -1"))
    else:
        value = facts.sched_rt_runtime_us or "unknown"
        out.append(
            warn(
                "rt throttling",
                f"kernel.sched_rt_runtime_us is {value}: a busy SCHED_FIFO vCPU is stopped for the rest of each "
                "period (50 ms a second by default)",
                "sysctl kernel.sched_rt_runtime_us=-1 (tuned's realtime profiles set it)",
            )
        )
    if facts.rt_group_v1 is not None:
        out.append(
            fail(
                "rt cgroup",
                f"RT group scheduling on cgroup v1's cpu controller ({facts.rt_group_v1}): the cgroups libvirt "
                f"makes for {who} get cpu.rt_runtime_us 0, so setting SCHED_FIFO on their vCPUs is refused (EPERM)",
                'remove "cpu" from cgroup_controllers in /etc/libvirt/qemu.conf and restart libvirtd, or boot a '
                "kernel without CONFIG_RT_GROUP_SCHED (the RHEL, Debian and Ubuntu kernels)",
            )
        )
    else:
        out.append(ok("rt cgroup", "no RT group scheduling on a cgroup v1 cpu controller: vCPUs may get SCHED_FIFO"))
    return out


# --- kernel args ----------------------------------------------------------------------


def _kernel_args(plan: Plan, facts: PreflightFacts) -> Finding:
    missing = plan.host.missing_kernel_args
    if not missing:
        return ok("kernel args", f"all {len(plan.host.kernel_args)} planned args are active")
    step = bootloader_step(facts.bootloader, plan)
    remedy = step if facts.reboot_recorded else f"bmslice host-apply, then {step}"
    return warn("kernel args", f"reboot pending: not in /proc/cmdline: {' '.join(missing)}", remedy)
