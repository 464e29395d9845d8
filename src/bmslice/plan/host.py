"""The host's half of the plan: the CPUs it keeps, what is isolated, the kernel args.

>>> kernel_args("GenuineIntel", CpuSet.parse("0-1,12-13"), CpuSet.parse("2-11,14-23"), (), passthrough=True)
('intel_iommu=on', 'iommu=pt', 'isolcpus=2-11,14-23', 'nohz_full=2-11,14-23', 'rcu_nocbs=2-11,14-23', \
'irqaffinity=0-1,12-13')
>>> kernel_args("AuthenticAMD", CpuSet.parse("0"), CpuSet.parse("1-3"), (), passthrough=True, realtime=True)
('iommu=pt', 'isolcpus=managed_irq,domain,1-3', 'nohz_full=1-3', 'rcu_nocbs=1-3', 'irqaffinity=0', \
'skew_tick=1', 'tsc=reliable', 'nosoftlockup', 'nmi_watchdog=0')
>>> kernel_args("GenuineIntel", CpuSet.parse("0,2"), CpuSet.parse("1,3"), (), passthrough=False)
('isolcpus=1,3', 'nohz_full=1,3', 'rcu_nocbs=1,3', 'irqaffinity=0,2')
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from bmslice.cpuset import CpuListError, CpuSet
from bmslice.errors import PlanError
from bmslice.model.plan import NodeHugepages
from bmslice.model.sizes import GIB_KIB
from bmslice.model.spec import HostSpec
from bmslice.model.topology import Core, HostTopology
from bmslice.plan.realtime import ISOLCPUS_FLAGS, realtime_kernel_args

CPU_LIST_ARGS = ("isolcpus", "nohz_full", "rcu_nocbs", "irqaffinity")


def reserved_cores(topo: HostTopology, host: HostSpec) -> tuple[Core, ...]:
    """Whole cores the host OS keeps: the lowest N of each node, or an explicit list.

    CPU 0's core always stays with the host (boot CPU; faults.md 7).
    """
    cores = topo.cores
    explicit = host.reserved_cpuset
    if explicit is not None:
        offline = explicit - topo.online_cpus
        if offline:
            raise PlanError(f"host.reserved_cpus: CPUs {offline} are offline or do not exist")
        kept = tuple(core for core in cores if not core.cpus.isdisjoint(explicit))
        split = [core for core in kept if not core.cpus.issubset(explicit)]
        if split:
            raise PlanError(f"host.reserved_cpus: {explicit} splits core {split[0].cpus}; the host keeps whole cores")
    else:
        kept = tuple(
            core
            for node in topo.numa_nodes
            for core in [c for c in cores if c.node == node.id][: host.reserved_cores_per_node]
        )
    if 0 in topo.online_cpus and not any(0 in core.cpus for core in kept):
        if explicit is not None:
            raise PlanError(f"host.reserved_cpus: {explicit} leaves out CPU 0; the boot CPU stays with the host")
        kept = kept + tuple(core for core in cores if 0 in core.cpus)
    if not kept:
        raise PlanError("the host would keep no CPU at all; set host.reserved_cores_per_node to 1 or more")
    return tuple(sorted(kept, key=lambda c: c.first))


def iommu_args(vendor: str) -> tuple[str, ...]:
    """Intel needs intel_iommu=on; AMD's IOMMU is on by default and has no "on" value."""
    if vendor == "GenuineIntel":
        return ("intel_iommu=on", "iommu=pt")
    return ("iommu=pt",)


# hugepages=<node>:<count>,... came with Linux 5.16 ("hugetlbfs: extend the definition of hugepages
# parameter to support node allocation"); an older kernel does not parse it.
PER_NODE_HUGEPAGES_SINCE = (5, 16)
_RELEASE = re.compile(r"([0-9]+)\.([0-9]+)(?:[^0-9].*)?")


def per_node_hugepages(release: str) -> bool | None:
    """Whether the kernel `release` (/proc/sys/kernel/osrelease) takes hugepages= per node; None: unknown.

    >>> per_node_hugepages("6.1.0-18-amd64"), per_node_hugepages("4.15.0-20-generic"), per_node_hugepages("")
    (True, False, None)
    """
    match = _RELEASE.fullmatch(release.strip())
    if match is None:
        return None
    return (int(match.group(1)), int(match.group(2))) >= PER_NODE_HUGEPAGES_SINCE


def hugepage_args(hugepages: Sequence[NodeHugepages], per_node: bool = True, memory_nodes: int = 1) -> tuple[str, ...]:
    """1 GiB pages can only be had reliably at boot: per node from Linux 5.16 (hugepages=0:4,1:4).

    Older kernels take one global count and spread it round-robin over the nodes with memory,
    so each node gets the largest per-node need: `memory_nodes` times it. The boot unit
    (render/host_files.py) then gives each node back what it holds beyond its need.

    >>> hugepage_args([NodeHugepages(0, GIB_KIB, 4)], per_node=False, memory_nodes=2)
    ('hugepagesz=1G', 'hugepages=8')
    """
    gig = [h for h in hugepages if h.size_kib == GIB_KIB and h.pages > 0]
    if not gig:
        return ()
    if not per_node:
        return ("hugepagesz=1G", f"hugepages={max(h.pages for h in gig) * memory_nodes}")
    per_node_counts = ",".join(f"{h.node}:{h.pages}" for h in sorted(gig, key=lambda h: h.node))
    return ("hugepagesz=1G", f"hugepages={per_node_counts}")


def kernel_args(
    vendor: str,
    reserved: CpuSet,
    isolated: CpuSet,
    hugepages: Sequence[NodeHugepages],
    passthrough: bool,
    realtime: bool = False,
    per_node: bool = True,
    memory_nodes: int = 1,
) -> tuple[str, ...]:
    """`passthrough`: some VM gets a PCI device or VF, so the IOMMU must be on (and only then).
    `realtime`: the plan has a realtime VM, so the isolated CPUs also shed managed IRQs and
    the realtime boot args follow (plan/realtime.py). `per_node`, `memory_nodes`: how 1 GiB
    pages are asked for (hugepage_args)."""
    args = list(iommu_args(vendor)) if passthrough else []
    if isolated:
        flags = f"{ISOLCPUS_FLAGS}," if realtime else ""
        args.append(f"isolcpus={flags}{isolated}")
        for key in ("nohz_full", "rcu_nocbs"):
            args.append(f"{key}={isolated}")
    args.append(f"irqaffinity={reserved}")
    args.extend(hugepage_args(hugepages, per_node, memory_nodes))
    if realtime:
        args.extend(realtime_kernel_args(vendor))
    return tuple(args)


def _cpu_value(value: str) -> CpuSet | None:
    """The CPU list of isolcpus=managed_irq,domain,2-11 style values."""
    parts = [p for p in value.split(",") if p and not p[0].isalpha()]
    try:
        return CpuSet.parse(",".join(parts))
    except CpuListError:
        return None


def _isolcpus_flags(value: str) -> frozenset[str]:
    """isolcpus flags; a bare CPU list means "domain" (the kernel's default flag)."""
    flags = frozenset(p for p in value.split(",") if p and p[0].isalpha())
    return flags or frozenset({"domain"})


def missing_args(planned: Sequence[str], cmdline: str, iommu_active: bool | None) -> tuple[str, ...]:
    """Planned args the running kernel was not booted with.

    CPU lists compare as sets, not strings (isolcpus flags: the running ones must include the
    planned ones); the IOMMU arg counts as present when sysfs shows IOMMU groups, whatever the
    command line says (faults.md 6).
    """
    running: dict[str, str] = {}
    for token in cmdline.split():
        key, _, value = token.partition("=")
        running[key] = value
    missing = []
    for arg in planned:
        key, _, value = arg.partition("=")
        if key in ("intel_iommu", "amd_iommu") and iommu_active:
            continue
        if key not in running:
            missing.append(arg)
        elif key in CPU_LIST_ARGS:
            fewer_flags = key == "isolcpus" and not _isolcpus_flags(value) <= _isolcpus_flags(running[key])
            if fewer_flags or _cpu_value(running[key]) != _cpu_value(value):
                missing.append(arg)
        elif running[key] != value:
            missing.append(arg)
    return tuple(missing)
