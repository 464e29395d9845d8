"""Readable (rich) views of a topology. Printing happens only in the CLI layer; the plan's
table is plain text (`cli/plan_text.py`), so a one-shot `bmslice plan` never imports rich."""

from __future__ import annotations

import sys

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bmslice.model.sizes import format_mib
from bmslice.model.topology import HostTopology, Resctrl
from bmslice.safe_text import one_line


def topology_view(topo: HostTopology) -> Group:
    head = Text(
        f"{topo.hostname or 'host'}: {topo.cpu_model or topo.cpu_vendor}, {len(topo.packages)} socket(s), "
        f"{len(topo.numa_nodes)} NUMA node(s), {len(topo.cores)} cores, {len(topo.online_cpus)} CPUs online "
        f"(SMT {'on' if topo.smt else 'off'}), IOMMU {_tri(topo.iommu_active)}"
    )
    nodes = Table(title="NUMA nodes", title_justify="left")
    for col in ("node", "CPUs", "cores (sibling sets)", "memory", "hugepages total/free"):
        nodes.add_column(col)
    for node in topo.numa_nodes:
        cores = [c for c in topo.cores if c.node == node.id]
        pages = ", ".join(f"{h.size_kib}k: {h.total}/{h.free}" for h in node.hugepages) or "-"
        nodes.add_row(
            str(node.id), node.cpus.format(), " ".join(f"({c.cpus})" for c in cores), format_mib(node.memory_mib), pages
        )
    nics = Table(title="Network PCI devices", title_justify="left")
    for col in ("address", "interfaces", "NUMA", "IOMMU group", "driver", "SR-IOV VFs", "note"):
        nics.add_column(col)
    for dev in topo.pci_devices:
        if not dev.is_network:
            continue
        note = "default route" if topo.default_route_interface in dev.interfaces else ""
        if dev.physfn:
            note = f"VF of {dev.physfn}"
        nics.add_row(
            dev.address,
            ",".join(dev.interfaces) or "-",
            _tri(dev.numa_node),
            _tri(dev.iommu_group),
            dev.driver or "-",
            f"{dev.sriov_numvfs}/{dev.sriov_totalvfs}" if dev.sriov_totalvfs else "-",
            note,
        )
    parts: list[Table | Text] = [head, nodes, nics]
    if topo.l3_domains:
        parts.append(_l3_table(topo))
    parts.append(Text(f"resctrl: {resctrl_text(topo.resctrl)}"))
    if topo.vf_states:
        parts.append(_vf_table(topo))
    tail = Text(f"kernel cmdline: {topo.kernel_cmdline or '(unknown)'}")
    warnings = [Text(f"warning: {one_line(w)}", style="yellow") for w in topo.warnings]
    return Group(*parts, tail, *warnings)


def _l3_table(topo: HostTopology) -> Table:
    """Each L3 cache instance (EPYC: one per CCX/CCD, several per node) and the cores sharing it."""
    table = Table(title="L3 caches", title_justify="left")
    for col in ("L3 id", "NUMA node(s)", "size", "CPUs"):
        table.add_column(col)
    for domain in topo.l3_domains:
        size = format_mib(domain.size_kib // 1024) if domain.size_kib % 1024 == 0 else f"{domain.size_kib}KiB"
        nodes = sorted({c.node for c in topo.cpus if c.id in domain.cpus and c.node is not None})
        table.add_row(str(domain.id), ",".join(map(str, nodes)) or "unknown", size, domain.cpus.format())
    return table


def resctrl_text(resctrl: Resctrl | None) -> str:
    """One line: what cache and memory bandwidth allocation the host offers."""
    if resctrl is None:
        return "none (no /sys/fs/resctrl, or the source cannot tell)"
    if not resctrl.mounted:
        return "supported, not mounted (mount -t resctrl resctrl /sys/fs/resctrl)"
    parts = []
    if resctrl.l3 is not None:
        l3 = resctrl.l3
        parts.append(f"L3 {l3.ways} ways (at least {l3.min_cbm_bits} a group), {l3.num_closids} CLOSIDs")
    elif resctrl.l3_cdp:
        parts.append("L3 with code/data prioritisation (cdp)")
    if resctrl.mb is not None:
        mb = resctrl.mb
        unit = "%" if mb.percent else " (absolute units)"
        parts.append(f"MB granularity {mb.bandwidth_gran}{unit}, minimum {mb.min_bandwidth}, {mb.num_closids} CLOSIDs")
    groups = len(resctrl.groups) - 1 if resctrl.groups else 0
    return "; ".join(parts or ["mounted, no allocation resources"]) + f"; {groups} group(s) besides the default"


def _vf_table(topo: HostTopology) -> Table:
    """Each VF's settings as the PF driver reports them, and who holds the VF."""
    table = Table(title="SR-IOV VFs (live)", title_justify="left")
    for col in ("PF", "VF", "PCI address", "MAC", "VLAN", "trust", "spoofchk", "held by"):
        table.add_column(col)
    for vf in topo.vf_states:
        pf = topo.pci_by_interface(vf.pf_interface)
        address = pf.virtfns[vf.index] if pf is not None and vf.index < len(pf.virtfns) else None
        dev = topo.pci(address) if address else None
        holder = "-" if dev is None else ("a guest (vfio-pci)" if dev.driver == "vfio-pci" else f"host ({dev.driver})")
        vlan = str(vf.vlan) if vf.vlan else "untagged"
        table.add_row(
            vf.pf_interface,
            str(vf.index),
            address or "?",
            vf.mac or "unset",
            vlan,
            _tri(vf.trust),
            _tri(vf.spoofchk),
            holder,
        )
    return table


def _tri(value: object) -> str:
    return "unknown" if value is None else ("yes" if value is True else "no" if value is False else str(value))


def console() -> Console:
    # Piped output (logs, CI, tickets) gets a fixed width instead of rich's 80 columns.
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 140)
