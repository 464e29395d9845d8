"""A refusal names the resource that is short: memory when memory is short, cores when cores are.

Each case is the design note's server (2 nodes x 5 free cores x 30 GiB after the host's
share) or a variant of it, with a spec that fits in one resource and not in the other.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from bmslice.errors import PlanError
from bmslice.model.spec import spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from topologies import server1


def vm(name: str, vcpus: int, memory: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "vcpus": vcpus, "memory": memory, **extra}


def uneven() -> HostTopology:
    """Node 0 has the cores but 8 GiB; node 1 has 64 GiB (its cores are reserved by the spec)."""
    topo = server1()
    n0, n1 = topo.numa_nodes
    return replace(topo, numa_nodes=(replace(n0, memory_mib=8192), replace(n1, memory_mib=65536)))


NODE1_MOSTLY_RESERVED = {"reserved_cpus": "0,12,1,13,3,15,5,17,7,19"}  # node 1 keeps 2 free cores

CASES = [
    (
        "memory on the bound node, cores enough",
        server1(),
        {"vms": [vm("a", 2, "40GiB", numa_node=1)]},
        "a needs 40960 MiB on NUMA node 1, only 30720 MiB are free",
    ),
    (
        "memory on every node, cores enough",
        server1(),
        {"vms": [vm("a", 2, "40GiB")]},
        "a needs 40960 MiB on one NUMA node; the most free on any node is 30720 MiB (node 0)",
    ),
    (
        "both on the bound node",
        server1(),
        {"vms": [vm("a", 12, "40GiB", numa_node=1)]},
        "a needs 7 whole cores and 40960 MiB on NUMA node 1; cores: only 5 are free; memory: only 30720 MiB is free",
    ),
    (
        "one node lacks memory, the other cores",
        uneven(),
        {"host": NODE1_MOSTLY_RESERVED, "vms": [vm("a", 6, "20GiB")]},
        "a needs 4 whole cores and 20480 MiB on one NUMA node; no node has both "
        "(node 0: memory short, only 6144 MiB free; node 1: cores short, only 2 are free)",
    ),
    (
        "memory of three VMs, each fits alone",
        server1(),
        {"vms": [vm("a", 4, "16GiB"), vm("b", 4, "16GiB"), vm("c", 2, "16GiB")]},
        "the VMs' memory does not fit on the NUMA nodes, their cores would: they need 49152 MiB "
        "(a 16384, b 16384, c 16384), free per node: node 0: 5 cores, 30720 MiB, node 1: 5 cores, 30720 MiB",
    ),
    (
        "cores of two VMs, each fits alone",
        server1(),
        {"host": NODE1_MOSTLY_RESERVED, "vms": [vm("x", 2, "1GiB", numa_node=0), vm("a", 6, "2GiB")]},
        "the VMs' cores do not fit on the NUMA nodes, their memory would: free per node: "
        "node 0: 5 cores, 30720 MiB, node 1: 2 cores, 30720 MiB",
    ),
]


@pytest.mark.parametrize(("case", "topo", "data", "message"), CASES, ids=[c[0] for c in CASES])
def test_the_refusal_names_what_is_short(case: str, topo: HostTopology, data: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError) as caught:
        make_plan(topo, spec_from_data(data, "spec.yaml"), origin="spec.yaml")
    assert message in str(caught.value)
    if case.startswith("memory"):
        assert "whole core" not in str(caught.value)


def test_each_case_fits_with_the_short_resource_given() -> None:
    """The cases above are refused for the named reason: with that resource relieved they plan."""
    relieved = [
        (server1(), {"vms": [vm("a", 2, "20GiB", numa_node=1)]}),
        (server1(), {"vms": [vm("a", 4, "14GiB"), vm("b", 4, "14GiB"), vm("c", 2, "14GiB")]}),
        (uneven(), {"host": NODE1_MOSTLY_RESERVED, "vms": [vm("a", 2, "20GiB")]}),
    ]
    for topo, data in relieved:
        assert make_plan(topo, spec_from_data(data, "spec.yaml")).vms
