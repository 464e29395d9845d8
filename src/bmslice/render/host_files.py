"""Every file the host needs for a plan, as {path relative to the root: text}: pure.

`bmslice host-config` writes these below --out for review; `bmslice host-apply` places
them below the host root. Runtime settings (2 MiB hugepages per node) are data too:
`runtime_settings(plan)` says which sysfs files get which value.

>>> from bmslice.cpuset import CpuSet
>>> from bmslice.model.plan import HostPlan, NodeHugepages, Plan
>>> host = HostPlan(CpuSet.parse("0"), CpuSet.parse("1-3"), ("iommu=pt",), False,
...                 hugepages=(NodeHugepages(0, 2048, 512),))
>>> [s.path for s in runtime_settings(Plan(host, ()))]
['sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages']
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from dataclasses import dataclass, replace

from bmslice.model.distro import qemu_binaries
from bmslice.model.grammar import driver_name, in_file, is_module_name, pci_id
from bmslice.model.plan import DeviceAssignment, Plan
from bmslice.model.sizes import GIB_KIB
from bmslice.model.topology import HostTopology
from bmslice.render import systemd_units
from bmslice.render.artifacts import kernel_args_line
from bmslice.render.exporter_unit import EXPORTER_UNIT_PATH, ExporterUnit, exporter_unit
from bmslice.render.resctrl_files import resctrl_files
from bmslice.render.sriov_files import sriov_host_files
from bmslice.render.systemd_units import HEADER, LIBVIRT_UNITS, UNIT_DIR, libvirt_dropin_path
from bmslice.safe_text import one_line

RUNTIME_HUGEPAGE_KIB = 2048  # 1 GiB pages are boot-time kernel args (plan/host.py)

GRUB_DROPIN = "etc/default/grub.d/bmslice.cfg"
KERNEL_ARGS = "etc/bmslice/kernel-args"
HUGEPAGES = "etc/bmslice/hugepages"
IRQBALANCE = "etc/systemd/system/irqbalance.service.d/50-bmslice-banned-cpus.conf"
TUNED = "etc/tuned/cpu-partitioning-variables.conf"
TUNED_REALTIME = "etc/tuned/realtime-virtual-host-variables.conf"
TUNED_PROFILE = "etc/tuned/bmslice/tuned.conf"
SLICES = ("system.slice", "user.slice")
INIT_SCOPE = "init.scope"
SYSTEM_CONF = "etc/systemd/system.conf.d/50-bmslice-cpus.conf"
VFIO_OPTIONS = "etc/modprobe.d/bmslice-vfio.conf"
VFIO_LOAD = "etc/modules-load.d/bmslice-vfio.conf"
GIG_MOUNT_POINT = "/dev/hugepages1G"
GIG_MOUNT_UNIT = "dev-hugepages1G.mount"  # a mount unit is named after its path (systemd.mount(5))
HUGEPAGES_UNIT = "bmslice-hugepages.service"


@dataclass(frozen=True)
class SysfsSetting:
    """A runtime value to write to a sysfs file; `minimum`: raise it to `value`, never lower it."""

    path: str
    value: int
    what: str
    minimum: bool = True


def slice_dropin(unit: str) -> str:
    return f"{UNIT_DIR}/{unit}.d/50-bmslice-cpus.conf"


def hugepage_path(node: int, size_kib: int = RUNTIME_HUGEPAGE_KIB) -> str:
    return f"sys/devices/system/node/node{node}/hugepages/hugepages-{size_kib}kB/nr_hugepages"


def runtime_settings(plan: Plan) -> tuple[SysfsSetting, ...]:
    """2 MiB pages per node: the pool may hold pages others use, so host-apply only ever raises it."""
    return tuple(
        SysfsSetting(hugepage_path(h.node), h.pages, f"node {h.node} 2 MiB hugepages")
        for h in sorted(plan.host.hugepages, key=lambda h: h.node)
        if h.size_kib == RUNTIME_HUGEPAGE_KIB and h.pages > 0
    )


def grubby_command(plan: Plan) -> str:
    return f"grubby --update-kernel=ALL --args={shlex.quote(' '.join(plan.host.kernel_args))}"


def _grub(plan: Plan) -> str:
    args = " ".join(plan.host.kernel_args)
    return (
        HEADER
        + f"# Kernel args for CPU vendor {one_line(plan.host.cpu_vendor or 'unknown')}; Debian/Ubuntu's update-grub reads\n"
        "# /etc/default/grub.d/*.cfg. RHEL-style hosts (BLS entries) use instead:\n"
        f"#   {grubby_command(plan)}\n"
        f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT {args}"\n'
    )


def _hugepages(plan: Plan) -> str:
    lines = [
        HEADER,
        "# Runtime 2 MiB hugepages per NUMA node (sysfs file, pages): host-apply raises them now, and\n",
        f"# {HUGEPAGES_UNIT} raises them again at each boot, before libvirtd autostarts the slices.\n",
    ]
    settings = runtime_settings(plan)
    lines += [f"/{s.path} {s.value}\n" for s in settings]
    if not settings:
        lines.append("# none planned: no VM asks for 2 MiB hugepages\n")
    return "".join(lines)


def _gig_nodes(plan: Plan) -> dict[int, int]:
    return {h.node: h.pages for h in plan.host.hugepages if h.size_kib == GIB_KIB and h.pages > 0}


def global_gig_form(plan: Plan) -> bool:
    """The plan asks for 1 GiB pages with one global count (a kernel before 5.16: plan/host.py)."""
    return any(a.startswith("hugepages=") and ":" not in a for a in plan.host.kernel_args)


def boot_settings(plan: Plan, topo: HostTopology) -> tuple[SysfsSetting, ...]:
    """What the boot unit writes: the 2 MiB pages per node (raised, never lowered), and after the
    global 1 GiB form each node's 1 GiB count exactly, giving back what the even spread put on
    a node beyond its need. On a one-node host the global pool is that node's (and exists
    whether or not the kernel has NUMA)."""
    memory_nodes = [n.id for n in topo.numa_nodes if n.memory_mib] or [0]
    if len(memory_nodes) == 1:
        return tuple(
            replace(s, path=f"sys/kernel/mm/hugepages/hugepages-{RUNTIME_HUGEPAGE_KIB}kB/nr_hugepages")
            for s in runtime_settings(plan)
        )
    settings = list(runtime_settings(plan))
    if global_gig_form(plan):
        gig = _gig_nodes(plan)
        settings += [
            SysfsSetting(hugepage_path(n, GIB_KIB), gig.get(n, 0), f"node {n} 1 GiB hugepages", minimum=False)
            for n in memory_nodes
        ]
    return tuple(settings)


def _write_line(setting: SysfsSetting) -> str:
    # $$ is systemd's escape for a $ the shell is to see (systemd.service(5), "Command lines").
    path = f"/{setting.path}"
    if not setting.minimum:
        return f"ExecStart=/bin/sh -c 'echo {setting.value} >{path}'\n"
    return (
        f'ExecStart=/bin/sh -c \'f={path}; [ "$$(cat "$$f")" -ge {setting.value} ] || echo {setting.value} >"$$f"\'\n'
    )


def _hugepages_unit(settings: tuple[SysfsSetting, ...]) -> str:
    lines = [
        HEADER,
        "# Hugepages reserved at runtime are gone after a reboot, while libvirtd autostarts the slices\n",
        "# that need them: this unit reserves them at each boot, before libvirtd (or virtqemud) starts.\n",
        "# It works on every kernel and keeps the per-node counts. Each line only raises a pool, except\n",
        "# the exact 1 GiB counts after a global hugepages= boot arg, which give back a node's surplus.\n",
        "[Unit]\n",
        "Description=Hugepages per NUMA node for bmslice's slices\n",
        f"Before={' '.join(LIBVIRT_UNITS)}\n",
        "\n[Service]\n",
        "Type=oneshot\n",
        "RemainAfterExit=yes\n",
    ]
    for setting in settings:
        lines.append(f"# {setting.what}: {setting.value}{'' if setting.minimum else ' exactly'}\n")
        lines.append(_write_line(setting))
    return "".join(lines)


def _gig_mount() -> str:
    # libvirt backs a guest's 1 GiB pages with a hugetlbfs of that page size; a stock host mounts
    # only the default (2 MiB) one at /dev/hugepages ("Unable to find any usable hugetlbfs mount").
    return (
        HEADER + "# A hugetlbfs of 1 GiB pages for the slices that use them. libvirtd looks for hugetlbfs mounts\n"
        "# only when it starts, so this is mounted before it (the libvirtd drop-in pulls it in).\n"
        "[Unit]\n"
        "Description=1 GiB hugepages for bmslice's slices\n"
        "DefaultDependencies=no\n"
        f"Before={' '.join(LIBVIRT_UNITS)}\n"
        "ConditionPathExists=/sys/kernel/mm/hugepages/hugepages-1048576kB\n"
        "\n[Mount]\n"
        "What=hugetlbfs\n"
        f"Where={GIG_MOUNT_POINT}\n"
        "Type=hugetlbfs\n"
        "Options=nosuid,nodev,pagesize=1G\n"
    )


def libvirt_dropin(unit: str) -> str:
    return libvirt_dropin_path(unit, "hugepages")


def _libvirt_dropin(needs: list[str]) -> str:
    return systemd_units.libvirt_dropin(
        "# The slices libvirt autostarts need their hugepages reserved (and the 1 GiB hugetlbfs mounted)\n"
        "# before it starts: it looks for hugetlbfs mounts only then.\n",
        needs,
    )


def _boot_hugepage_files(plan: Plan, topo: HostTopology) -> dict[str, str]:
    files: dict[str, str] = {}
    settings = boot_settings(plan, topo)
    if settings:
        files[f"{UNIT_DIR}/{HUGEPAGES_UNIT}"] = _hugepages_unit(settings)
    if _gig_nodes(plan):
        files[f"{UNIT_DIR}/{GIG_MOUNT_UNIT}"] = _gig_mount()
    needs = [unit for unit in (HUGEPAGES_UNIT, GIG_MOUNT_UNIT) if f"{UNIT_DIR}/{unit}" in files]
    if needs:
        files.update({libvirt_dropin(unit): _libvirt_dropin(needs) for unit in LIBVIRT_UNITS})
    return files


def _irqbalance(plan: Plan) -> str:
    # A systemd drop-in, not /etc/default/irqbalance: that file is the package's own conffile
    # (the operator's IRQBALANCE_ARGS live there). irqbalance >= 1.8 reads this variable.
    return (
        HEADER + "# Keep irqbalance from moving IRQs onto the isolated CPUs. A value set in the unit's\n"
        "# EnvironmentFile (/etc/default/irqbalance, /etc/sysconfig/irqbalance) takes precedence.\n"
        "[Service]\n"
        f"Environment=IRQBALANCE_BANNED_CPULIST={plan.host.isolated_cpus}\n"
    )


def _tuned(plan: Plan) -> str:
    # isolcpus= already takes every isolated CPU out of load balancing, so both lists are the same.
    return (
        HEADER + "# For hosts that use tuned's cpu-partitioning profile instead of the GRUB drop-in.\n"
        f"isolated_cores={plan.host.isolated_cpus}\n"
        f"no_balance_cores={plan.host.isolated_cpus}\n"
    )


def _tuned_realtime(plan: Plan) -> str:
    # The profile refuses to start without isolated_cores; isolate_managed_irq=Y is the RHEL
    # guide's advice (isolcpus=managed_irq,domain,... as in the plan's own args).
    return (
        HEADER + "# For tuned's realtime-virtual-host profile (the plan has realtime VMs): it applies the realtime\n"
        "# sysctls (no RT throttling, no NMI watchdog, KSM off) and its own boot args for these CPUs.\n"
        f"isolated_cores={plan.host.isolated_cpus}\n"
        "isolate_managed_irq=Y\n"
    )


# What cpu-partitioning (tuned 2.20, with the network-latency profile it includes) already puts on
# the kernel command line, from the variables file: the profile adds only the rest of the plan's args.
CPU_PARTITIONING_ARGS = frozenset({"isolcpus", "nohz_full", "rcu_nocbs", "nosoftlockup", "skew_tick", "intel_pstate"})
# cpu-partitioning's own ps_blacklist (tuned 2.20): DPDK poll-mode and vRouter threads, RHEL's QEMU.
# A profile that sets the option replaces the list it includes, so these are kept.
CPU_PARTITIONING_BLACKLIST = (
    ".*pmd.*",
    ".*PMD.*",
    "^DPDK",
    ".*qemu-kvm.*",
    "^contrail-vroute$",
    "^lcore-slave-.*",
    "^rte_mp_handle$",
    "^rte_mp_async$",
    "^eal-intr-thread$",
)
# What realtime-virtual-host (tuned 2.20, with realtime and network-latency under it) puts there from
# its variables file (TUNED_REALTIME: isolate_managed_irq=Y gives isolcpus=managed_irq,domain,...):
# cpu-partitioning's plain isolcpus= would drop the flags a realtime plan needs. Its irqaffinity is
# every CPU it does not isolate; the profile sets that variable to the plan's own (the host's CPUs).
REALTIME_HOST_ARGS = frozenset(
    {"isolcpus", "nohz_full", "rcu_nocbs", "irqaffinity", "nosoftlockup", "skew_tick", "tsc", "intel_pstate"}
)
REALTIME_HOST_BLACKLIST = (
    r"^\[ksoftirqd",
    r"^\[ktimers",
    r"^\[rcuc",
    r"^\[rcub",
    r"^\[ktimersoftd",
    "pmd",
    "PMD",
    "^DPDK",
    "qemu-kvm",
)
COMM_LENGTH = 15  # a process's comm (what tuned matches) is its name cut to 15 characters (TASK_COMM_LEN)


@dataclass(frozen=True)
class TunedBase:
    """The tuned profile bmslice's own includes: what it sets on the command line and its ps_blacklist."""

    name: str
    args: frozenset[str]
    blacklist: tuple[str, ...]
    variables: str  # the variables file it reads (rendered by host-config)
    lacks: str  # which of a plan's args it never sets, for the profile's comment


def tuned_base(plan: Plan) -> TunedBase:
    """realtime-virtual-host for a plan with realtime VMs (its sysctls, its isolcpus flags); else cpu-partitioning."""
    if any(vm.realtime is not None for vm in plan.vms):
        return TunedBase(
            "realtime-virtual-host",
            REALTIME_HOST_ARGS,
            REALTIME_HOST_BLACKLIST,
            TUNED_REALTIME,
            "IOMMU, hugepage or NMI watchdog args",
        )
    return TunedBase(
        "cpu-partitioning", CPU_PARTITIONING_ARGS, CPU_PARTITIONING_BLACKLIST, TUNED, "IOMMU, IRQ or hugepage args"
    )


def tuned_remaining_args(plan: Plan) -> tuple[str, ...]:
    """The plan's args its tuned base profile does not set: what bmslice's profile adds."""
    base = tuned_base(plan).args
    return tuple(a for a in plan.host.kernel_args if a.partition("=")[0] not in base)


def _tuned_profile(plan: Plan, topo: HostTopology) -> str:
    # tuned's scheduler plugin moves every process off the isolated CPUs except those whose comm
    # matches ps_blacklist; the base profiles name only RHEL's qemu-kvm, so on Debian it would move
    # the slices' vCPU threads (qemu-system-x86_64 runs as "qemu-system-x86").
    base = tuned_base(plan)
    qemu = [f"^{name[:COMM_LENGTH]}" for name in qemu_binaries(topo.distro)]
    blacklist = list(dict.fromkeys([*base.blacklist, *qemu]))
    variables = ""
    if base.name == "realtime-virtual-host":
        variables = (
            "\n[variables]\n"
            "# irqaffinity= of realtime-virtual-host: the host's own CPUs, as the plan has it\n"
            f"non_isolated_cores={plan.host.reserved_cpus}\n"
        )
    return (
        HEADER + "# For hosts that use tuned instead of the GRUB drop-in (use one or the other): `tuned-adm profile\n"
        f"# bmslice`. {base.name} isolates the CPUs of /{base.variables}\n"
        f"# (isolcpus, nohz_full, rcu_nocbs) but adds no {base.lacks}: this profile adds them,\n"
        f"# and keeps tuned off the QEMU processes of this distribution ({topo.distro}).\n"
        "[main]\n"
        f"summary=bmslice: {base.name} plus the rest of the slicing plan's boot args\n"
        f"include={base.name}\n"
        f"{variables}"
        "\n[bootloader]\n"
        f"cmdline_bmslice=+{' '.join(tuned_remaining_args(plan))}\n"
        "\n[scheduler]\n"
        f"ps_blacklist={';'.join(blacklist)}\n"
    )


def _slice(plan: Plan, unit: str) -> str:
    return (
        HEADER + f"# The host's own services stay on the host-reserved CPUs ({unit}); VMs run in machine.slice.\n"
        "[Slice]\n"
        f"AllowedCPUs={plan.host.reserved_cpus}\n"
    )


def _init_scope(plan: Plan) -> str:
    # AllowedCPUs= on the slices makes systemd enable the cpuset controller, and a kernel before
    # 6.2 then resets the affinity of every task in a cpuset to the cpuset's CPUs: PID 1, in
    # init.scope, lost its CPUAffinity= and ran on every CPU after a reboot (the lab, Debian 12).
    return (
        HEADER + "# PID 1 stays on the host-reserved CPUs once systemd enables the cpuset controller.\n"
        "[Scope]\n"
        f"AllowedCPUs={plan.host.reserved_cpus}\n"
    )


def _system_conf(plan: Plan) -> str:
    # There is no init.slice: PID 1 lives in init.scope. CPUAffinity= covers PID 1 and is the
    # default of everything it starts; libvirt pins each QEMU thread explicitly.
    return HEADER + f"[Manager]\nCPUAffinity={plan.host.reserved_cpus}\n"


def _passthrough(plan: Plan) -> list[tuple[str, DeviceAssignment]]:
    return sorted(
        ((vm.name, d) for vm in plan.vms for d in vm.devices if d.type == "passthrough"),
        key=lambda p: p[1].known_address,
    )


def _id_text(vendor: str, device: str) -> str:
    return f"{vendor.lower().removeprefix('0x')}:{device.lower().removeprefix('0x')}"


def _pci_id(vendor: str, device: str) -> str:
    """ "8086:1528", the form of `vfio-pci ids=`; an id outside its grammar never reaches modprobe.d."""
    return _id_text(*(in_file(VFIO_OPTIONS, "PCI id", value, pci_id) for value in (vendor, device)))


def _vfio_options(plan: Plan, topo: HostTopology) -> str:
    """ids= binds *every* device with that vendor:device; an ID the host also uses is left out."""
    given = _passthrough(plan)
    lines = [HEADER]
    if not given:
        lines.append("# no whole PCI device is passed through: nothing to bind at boot\n")
        return "".join(lines)
    lines.append("# Bind the passthrough devices to vfio-pci at boot, before their host drivers.\n")
    by_id: dict[str, list[str]] = defaultdict(list)
    drivers: dict[str, set[str]] = defaultdict(set)
    unknown: list[str] = []
    for vm, dev in given:
        pci = topo.pci(dev.known_address)
        if pci is None or not pci.vendor or not pci.device:
            unknown.append(f"{dev.address} ({vm})")
            continue
        pid = _pci_id(pci.vendor, pci.device)
        by_id[pid].append(dev.known_address)
        if dev.driver and dev.driver not in ("vfio-pci", "pci-stub"):
            drivers[pid].add(in_file(VFIO_OPTIONS, "driver", dev.driver, driver_name))
    ids: list[str] = []
    for pid, addresses in sorted(by_id.items()):
        host_kept = [
            d.address
            for d in topo.pci_devices
            if _id_text(d.vendor, d.device) == pid and d.address not in addresses and d.physfn is None
        ]
        if host_kept:
            lines.append(
                f"# {pid} ({', '.join(addresses)}) is not listed: the host keeps {', '.join(host_kept)} with the same"
                " ID; bmslice apply binds these by address instead\n"
            )
        else:
            ids.append(pid)
    for entry in unknown:
        lines.append(f"# {entry}: vendor/device unknown on this host; bmslice apply binds it by address\n")
    if ids:
        lines.append(f"options vfio-pci ids={','.join(ids)}\n")
        for driver in sorted({drv for pid in ids for drv in drivers[pid]}):
            if is_module_name(driver):
                lines.append(f"softdep {driver} pre: vfio-pci\n")
            else:  # a built-in driver's name may hold '.' or '+': no module by that name to order
                lines.append(f"# driver {driver} is not a module name: no softdep for it\n")
    return "".join(lines)


def _vfio_load(plan: Plan) -> str:
    if not _passthrough(plan):
        return HEADER + "# no whole PCI device is passed through: vfio-pci need not load at boot\n"
    return HEADER + "vfio-pci\n"


def render_host_files(plan: Plan, topo: HostTopology, exporter: ExporterUnit | None = None) -> dict[str, str]:
    """{relative path: text} for every host file; `topo` supplies the PCI IDs of passthrough devices;
    `exporter`: also the unit that runs `bmslice exporter` (what it runs, where it listens)."""
    files = {
        GRUB_DROPIN: _grub(plan),
        KERNEL_ARGS: kernel_args_line(plan),
        HUGEPAGES: _hugepages(plan),
        IRQBALANCE: _irqbalance(plan),
        TUNED: _tuned(plan),
        TUNED_PROFILE: _tuned_profile(plan, topo),
        SYSTEM_CONF: _system_conf(plan),
        VFIO_OPTIONS: _vfio_options(plan, topo),
        VFIO_LOAD: _vfio_load(plan),
    }
    if any(vm.realtime is not None for vm in plan.vms):
        files[TUNED_REALTIME] = _tuned_realtime(plan)
    for unit in SLICES:
        files[slice_dropin(unit)] = _slice(plan, unit)
    files[slice_dropin(INIT_SCOPE)] = _init_scope(plan)
    files.update(_boot_hugepage_files(plan, topo))
    files.update(sriov_host_files(plan))
    files.update(resctrl_files(plan))
    if exporter is not None:
        files[EXPORTER_UNIT_PATH] = exporter_unit(plan, exporter)
    return dict(sorted(files.items()))
