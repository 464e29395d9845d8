"""Utilisation: the share of host CPUs that become guest vCPUs, per emulator policy.

Run: .venv/bin/python bench/utilisation_bench.py

For each host and VM size, as many equal VMs as the planner will place (8, 4 or 2 vCPUs,
4 GiB each so memory never binds), under emulator: dedicated (one extra whole core per VM
for the emulator threads and IOThread) and emulator: host (those threads share the host's
reserved CPUs). The host keeps 1 core per NUMA node (the default), which holds CPU 0 on node 0.

The VMs are spread round-robin over the nodes with numa_node, so the count is found by
adding one VM per node until make_plan refuses (nodes are identical, so this is the
maximum; it also keeps the planner off its exponential proof-of-infeasibility search on
many-node hosts, see bench/placement_stress.py). On the design note's server the unpinned
planner is checked to reach the same count.
"""

from __future__ import annotations

import sys
from typing import Any

from common import HostShape, design_note_host, table

from bmslice.errors import PlanError
from bmslice.model.spec import spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan

HOSTS: tuple[tuple[str, HostShape | None], ...] = (
    ("design note server1 (2s x 6c x 2t, 2 nodes)", None),
    ("2s x 32c, no SMT, 2 nodes", HostShape("64", 2, 32, 1, 1)),
    ("2s x 24c x 2t, 2 nodes", HostShape("96", 2, 24, 2, 1)),
    ("2s x 64c x 2t, 8 nodes", HostShape("256", 2, 64, 2, 4)),
    ("2s x 192c x 2t, 16 nodes", HostShape("768", 2, 192, 2, 8)),
)
SIZES = (8, 4, 2)
POLICIES = ("dedicated", "host")


def fits(topo: HostTopology, vcpus: int, policy: str, count: int, pin: bool) -> bool:
    nodes = [n.id for n in topo.numa_nodes]
    vms: list[dict[str, Any]] = []
    for i in range(count):
        vm: dict[str, Any] = {"name": f"vm{i:03d}", "vcpus": vcpus, "memory": "4GiB", "emulator": policy}
        if pin:
            vm["numa_node"] = nodes[i % len(nodes)]
        vms.append(vm)
    try:
        make_plan(topo, spec_from_data({"vms": vms}, "utilisation"), "utilisation")
    except PlanError as exc:
        if "gave up" in str(exc):
            raise
        return False
    return True


def most(topo: HostTopology, vcpus: int, policy: str, pin: bool) -> int:
    if not pin:
        count = 0
        while fits(topo, vcpus, policy, count + 1, pin):
            count += 1
        return count
    nodes = len(topo.numa_nodes)
    per_node = 0
    while fits(topo, vcpus, policy, nodes * (per_node + 1), pin):
        per_node += 1
    count = nodes * per_node
    while fits(topo, vcpus, policy, count + 1, pin):  # a node may hold one more (not here: nodes are equal)
        count += 1
    return count


def main() -> int:
    print("Utilisation: host CPUs that end up as guest vCPUs, as many equal VMs as the planner places")
    print("(host keeps 1 core per NUMA node; 4 GiB per VM, memory never binds)\n")
    rows = []
    ceilings = []
    for label, shape in HOSTS:
        topo = design_note_host() if shape is None else shape.topology(with_nics=False)
        total = len(topo.online_cpus)
        reserved = len(
            make_plan(
                topo, spec_from_data({"vms": [{"name": "probe", "vcpus": 1, "memory": 1024}]}, "p")
            ).host.reserved_cpus
        )
        ceilings.append(f"{label}: {total - reserved} / {total} = {100 * (total - reserved) / total:.1f}%")
        first = True
        for vcpus in SIZES:
            for policy in POLICIES:
                n = most(topo, vcpus, policy, pin=True)
                if shape is None:
                    unpinned = most(topo, vcpus, policy, pin=False)
                    assert unpinned == n, f"unpinned planner places {unpinned}, round-robin {n}"
                guest = n * vcpus
                rows.append(
                    [
                        label if first else "",
                        f"{vcpus}",
                        policy,
                        str(n),
                        f"{guest} / {total}",
                        f"{100 * guest / total:.1f}%",
                    ]
                )
                first = False
    print(table(["host", "vCPUs per VM", "emulator", "VMs", "guest vCPUs / host CPUs", "share"], rows, "lrlrrr"))
    print(
        "\nThe design note's own layout on server1: 2 VMs x 8 vCPUs, emulator: dedicated = 16 / 24 CPUs = 66.7%\n"
        "(the server1 8-vCPU dedicated row above reproduces it). Ceiling: the CPUs the host does not keep\n"
        "(1 core per node), which no policy can exceed:"
    )
    for line in ceilings:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
