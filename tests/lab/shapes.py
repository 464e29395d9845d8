"""Host trees the lane's labs are shaped after (`bmslice lab up --like TREE`), written with tests/treebuilder.py.

- `write_epyc_nosmt`: the EPYC 7543-like server of the L3 tests (2 sockets, NPS4, two 4-core
  CCDs per node) with SMT off, as many telco hosts run. `lab up --like` keeps its four
  NUMA nodes (of eight) and two L3 caches per node with two cores each: 16 CPUs. With SMT on,
  the same 16 CPUs leave one core per L3, where no plan has a choice to make;
- `write_small`: a one-socket server of a few cores with SR-IOV NICs, for the fabric's labs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from treebuilder import HostSpec, PciSpec, cpu_layout, epyc_spec, l3_by_cores, write_tree


def write_epyc_nosmt(root: Path) -> Path:
    cpus = cpu_layout(2, 32, 1, nodes_per_socket=4)
    return write_tree(replace(epyc_spec(), cpus=cpus, l3=l3_by_cores(cpus, 4, 32768, id_step=2)), root)


def write_small(root: Path, cores: int, threads: int, sriov_nics: int) -> Path:
    nics = tuple(
        PciSpec(
            f"0000:0{i + 1}:00.0",
            device="0x10c9",
            driver="igb",
            iommu_group=10 + i,
            interfaces=(f"eno{i + 1}",),
            sriov_totalvfs=7,
            sriov_offset=128,
            sriov_stride=2,
        )
        for i in range(sriov_nics)
    )
    return write_tree(HostSpec(cpus=cpu_layout(1, cores, threads, siblings="adjacent"), pci=nics), root)
