"""Read every server of a fleet: from its host tree, its hwloc file, or through libvirt."""

from __future__ import annotations

from pathlib import Path

from bmslice.errors import TopologyError
from bmslice.model.fleet import Fleet, InventoryHost
from bmslice.model.topology import HostTopology


def host_source(inv: InventoryHost) -> str:
    if inv.host_root is not None:
        return f"host tree {inv.host_root}"
    if inv.hwloc is not None:
        return f"hwloc file {inv.hwloc}"
    return f"libvirt {inv.uri}"


def read_host(inv: InventoryHost) -> HostTopology:
    """A host tree or hwloc file when the inventory names one; this machine's sysfs for a local
    URI (it knows more than libvirt); libvirt otherwise. Errors name the host."""
    try:
        if inv.host_root is not None:
            from bmslice.topology.sysfs import read_host_tree

            if not inv.host_root.is_dir():
                raise TopologyError(f"host_root {inv.host_root}: no such directory")
            return read_host_tree(inv.host_root)
        if inv.hwloc is not None:
            from bmslice.model.input_file import read_input_bytes
            from bmslice.topology.hwloc import topology_from_hwloc

            data = read_input_bytes(inv.hwloc, "hwloc XML", error=TopologyError)
            return topology_from_hwloc(data, source=str(inv.hwloc))
        if inv.is_local:
            from bmslice.topology.sysfs import read_host_tree

            return read_host_tree(Path("/"))
        from bmslice.apply.connection import read_libvirt_topology

        return read_libvirt_topology(inv.uri)
    except TopologyError as exc:
        raise TopologyError(f"{inv.name}: cannot read the host ({host_source(inv)}): {exc}") from None


def read_hosts(fleet: Fleet) -> dict[str, HostTopology]:
    return {inv.name: read_host(inv) for inv in fleet.inventory}
