"""Last-level caches from sysfs: which CPUs share each L3, and how big it is.

The kernel describes every cache a CPU sees under
/sys/devices/system/cpu/cpuN/cache/indexM/ (`level`, `type`, `id`, `shared_cpu_list`,
`size` such as "32768K"). The L3 instances, keyed by their `id` (the id resctrl and libvirt
use), are the domains the planner keeps VMs inside.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from bmslice.cpuset import CpuSet
from bmslice.model.topology import CacheDomain, Cpu
from bmslice.numbers import decimal
from bmslice.topology.sysfs import CPU_DIR, FsRoot

L3_LEVEL = 3
_SIZE = re.compile(r"([0-9]+)([KMG]?)")
_SIZE_KIB = {"": 1 / 1024, "K": 1, "M": 1024, "G": 1024 * 1024}


def parse_cache_size(text: str) -> int | None:
    """sysfs cache `size` in KiB: "32768K" -> 32768; None when it is not a size.

    >>> parse_cache_size("32768K"), parse_cache_size("16M"), parse_cache_size("big")
    (32768, 16384, None)
    """
    match = _SIZE.fullmatch(text)
    number = decimal(match.group(1)) if match else None  # ASCII, bounded: 5,000 digits broke int()
    return None if match is None or number is None else int(number * _SIZE_KIB[match.group(2)])


def _index_dirs(fs: FsRoot, cpu: int) -> list[str]:
    base = f"{CPU_DIR}/cpu{cpu}/cache"
    return [f"{base}/{name}" for name in fs.listdir(base) if re.fullmatch(r"index[0-9]+", name)]


def read_l3_domains(fs: FsRoot, cpus: Sequence[Cpu]) -> tuple[CacheDomain, ...]:
    """Every L3 instance of the online CPUs, ordered by id; () when sysfs shows no caches."""
    found: dict[CpuSet, tuple[int | None, int]] = {}  # shared CPUs -> (kernel id, size KiB)
    dirs = set(fs.listdir(CPU_DIR))  # one listing, not a failed lookup per CPU without a directory
    for cpu in cpus:
        if not cpu.online or f"cpu{cpu.id}" not in dirs:
            continue  # an offline CPU has no cache directory
        for rel in _index_dirs(fs, cpu.id):
            if fs.read_int(f"{rel}/level") != L3_LEVEL or fs.read_line(f"{rel}/type") == "Instruction":
                continue
            shared = (fs.read_cpuset(f"{rel}/shared_cpu_list") or CpuSet()) | CpuSet.of(cpu.id)
            size = parse_cache_size(fs.read_line(f"{rel}/size") or "")
            if size is None:
                fs.warnings.append(f"{fs.display(rel)}/size: not a cache size; L3 of CPU {cpu.id} ignored")
                continue
            found.setdefault(shared, (fs.read_int(f"{rel}/id"), size))
    if any(cache_id is None for cache_id, _ in found.values()):
        # Kernels before 4.14 have no `id`: number the instances by their lowest CPU.
        fs.warnings.append("L3 caches have no id in sysfs (kernel older than 4.14); numbered by lowest CPU")
        found = {shared: (i, size) for i, (shared, (_, size)) in enumerate(sorted(found.items(), key=_lowest))}
    return l3_domains([(cache_id or 0, shared, size) for shared, (cache_id, size) in found.items()], cpus)


def l3_domains(found: Iterable[tuple[int, CpuSet, int]], cpus: Sequence[Cpu]) -> tuple[CacheDomain, ...]:
    """(id, CPUs, KiB) of each L3 -> domains by id, each with the NUMA node of its CPUs if it has one."""
    node_of = {cpu.id: cpu.node for cpu in cpus}
    domains = []
    for cache_id, shared, size in found:
        nodes = {node_of.get(c) for c in shared}
        domains.append(CacheDomain(cache_id, shared, size, nodes.pop() if len(nodes) == 1 else None))
    return tuple(sorted(domains, key=lambda d: d.id))


def _lowest(item: tuple[CpuSet, object]) -> int:
    return item[0].min()
