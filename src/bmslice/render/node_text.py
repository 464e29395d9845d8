"""Where a slice sits, in one short line for tables (the plan table, the HTML report).

Its own module so that printing a plan does not build the picture's map types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bmslice.model.plan import VmPlan


def node_text(vm: VmPlan) -> str:
    """Where a slice sits, for tables: "1", "1 · L3 6 · L3 ways f000 on 6 · MB 40%"."""
    parts = [",".join(map(str, vm.numa_nodes))]
    if vm.l3_domains:
        parts.append(f"L3 {','.join(map(str, vm.l3_domains))}")
    if vm.cache is not None and vm.cache.ways:
        parts.append("L3 ways " + ", ".join(f"{w.mask:x} on {w.cache_id}" for w in vm.cache.ways))
    if vm.cache is not None and vm.cache.memory_bandwidth is not None:
        parts.append(f"MB {vm.cache.memory_bandwidth}%")
    return " · ".join(parts)
