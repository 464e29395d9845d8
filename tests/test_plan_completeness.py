"""Completeness and optimality: the planner refuses exactly the specs that have no layout.

tests/oracle.py decides feasibility by brute force over whole-core assignments, sharing
no code with bmslice.plan. On small random hosts and specs the two must agree, and when
both find a layout the planner's number of cross-NUMA NICs must be the oracle's minimum.
The same holds with VMs over several NUMA nodes (numa_nodes: k, an equal share on each of
k distinct nodes) on random hosts of 2-4 nodes.
"""

from __future__ import annotations

import random
import re
from typing import Any

import msgspec
import pytest

from bmslice.errors import PlanError
from bmslice.model.plan import Plan
from bmslice.model.spec import Spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan import placement
from bmslice.plan.planner import make_plan
from oracle import best_layout, check_plan, physical_cores, reserved_cpus, vcpu_cores_ok
from topologies import multinode_case, nic, synthetic

CASES = 300
MULTINODE_CASES = 200


def _random_case(seed: int) -> tuple[HostTopology, Spec]:
    rng = random.Random(seed)
    shape = rng.choice([(1, 1), (2, 1), (1, 2)])  # (sockets, nodes_per_socket): 1 or 2 nodes
    sockets, per_socket = shape
    nodes = sockets * per_socket
    cores = rng.choice(
        [per_socket, *range(per_socket, 4 * per_socket + 1), *[3 * per_socket, 4 * per_socket] * 3]
    )  # <= 4 cores per node
    threads = rng.choice([1, 2, 2])
    numbering = rng.choice(["spread", "adjacent", "interleaved"])
    all_cpus = sockets * cores * threads
    offline = (
        sorted(rng.sample(range(1, all_cpus), k=rng.randint(0, min(3, all_cpus - 1)))) if rng.random() < 0.4 else []
    )
    node_mem = rng.choice([6144, 8192, 12288, 16384, 16384])
    nic_devs = [
        nic(f"0000:0{i + 1}:00.0", f"eth{i}", rng.choice([*range(nodes), None]) if rng.random() < 0.9 else None, 40 + i)
        for i in range(rng.randint(0, 3))
    ]
    topo = synthetic(
        sockets=sockets,
        cores=cores,
        threads=threads,
        nodes_per_socket=per_socket,
        numbering=numbering,
        memory_mib_per_node=node_mem,
        offline=offline,
        nics=nic_devs,
    )
    unassigned = [d.interfaces[0] for d in nic_devs]
    rng.shuffle(unassigned)
    vms: list[dict[str, Any]] = []
    for k in range(rng.randint(1, 3)):
        vm: dict[str, Any] = {
            "name": f"vm{k}",
            "vcpus": rng.choice([1, 1, 1, 2, 2, 2, 3, 4, 5, 6]),
            "memory": rng.choice([512, 1024, 1024, 2048, 2048, 4096, 6144]),
            "emulator": rng.choice(["dedicated", "host", "host"]),
        }
        if rng.random() < 0.25:
            vm["numa_node"] = rng.randrange(nodes)
        if unassigned and rng.random() < 0.6:
            vm["nics"] = [{"passthrough": unassigned.pop()}]
        vms.append(vm)
    host: dict[str, Any] = {
        "reserved_cores_per_node": rng.choice([0, 1, 1]),
        "reserved_memory_per_node": rng.choice([1024, 2048]),
    }
    if rng.random() < 0.2:
        host["nic_numa_policy"] = "require"
    return topo, spec_from_data({"host": host, "vms": vms}, "case.yaml")


def _random_multinode_case(seed: int) -> tuple[HostTopology, Spec]:
    return multinode_case(random.Random(10_000 + seed))


def _cross_numa(plan: Plan) -> int:
    return sum(1 for vm in plan.vms for d in vm.devices if d.numa_node is not None and d.numa_node not in vm.numa_nodes)


def _try_plan(topo: HostTopology, spec: Spec) -> Plan | PlanError:
    try:
        return make_plan(topo, spec, "case.yaml")
    except PlanError as exc:
        return exc


# (generator, seed): the one-node cases, and hosts of 2-4 nodes with VMs over several nodes
FAMILIES = {"one-node": _random_case, "multinode": _random_multinode_case}
SEEDS = [("one-node", seed) for seed in range(CASES)] + [("multinode", seed) for seed in range(MULTINODE_CASES)]


@pytest.mark.parametrize(("family", "seed"), SEEDS)
def test_planner_agrees_with_oracle(family: str, seed: int) -> None:
    _agrees_with_oracle(family, seed)


@pytest.mark.parametrize(("family", "seed"), SEEDS[::4])
def test_cp_sat_agrees_with_oracle(family: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with no steps for the depth-first search: every placement is CP-SAT's
    (plan/placement_sat.py), the method that settles the cases the search cannot on big hosts."""
    monkeypatch.setattr(placement, "STEP_LIMIT", 0)
    _agrees_with_oracle(family, seed)


def _agrees_with_oracle(family: str, seed: int) -> None:
    topo, spec = FAMILIES[family](seed)
    oracle = best_layout(topo, spec)
    result = _try_plan(topo, spec)
    if oracle is None:
        assert isinstance(result, PlanError), f"seed {seed}: planner accepted a spec with no valid layout"
        return
    assert not isinstance(result, PlanError), f"seed {seed}: planner refused a feasible spec: {result}"
    assert _cross_numa(result) == oracle.cross_numa, f"seed {seed}: cross-NUMA NICs not minimal"
    check_plan(topo, spec, result)


@pytest.mark.parametrize(("family", "seed"), SEEDS[::3])
def test_replanning_around_running_slices_is_complete(family: str, seed: int) -> None:
    """Plan the first VM alone (often one over several nodes, in the multinode family), keep it
    running, then plan the whole spec around it."""
    topo, spec = FAMILIES[family](seed)
    first = msgspec.structs.replace(spec, vms=spec.vms[:1])
    plan = _try_plan(topo, first)
    if isinstance(plan, PlanError):
        return
    oracle = best_layout(topo, spec, plan.vms)
    try:
        result = make_plan(topo, spec, "case.yaml", plan.vms)
    except PlanError as exc:
        assert oracle is None, f"seed {seed}: refused a layout that goes around the running VM: {exc}"
        return
    assert oracle is not None, f"seed {seed}: planner accepted a spec with no valid layout around the running VM"
    assert result.vms[0] == plan.vms[0]
    running_cross = _cross_numa(plan)
    assert _cross_numa(result) - running_cross == oracle.cross_numa
    check_plan(topo, spec, result)


def test_multinode_cases_cover_both_outcomes_and_span_nodes() -> None:
    """The generator is not degenerate: feasible and infeasible specs, and planned VMs over 2 and 3 nodes."""
    outcomes = []
    spans: set[int] = set()
    for seed in range(MULTINODE_CASES):
        topo, spec = _random_multinode_case(seed)
        outcomes.append(best_layout(topo, spec) is not None)
        result = _try_plan(topo, spec)
        if not isinstance(result, PlanError):
            spans |= {len(vm.numa_nodes) for vm in result.vms}
    assert 0.2 * MULTINODE_CASES <= sum(outcomes) <= 0.85 * MULTINODE_CASES
    assert {1, 2, 3} <= spans


def test_random_cases_cover_both_outcomes() -> None:
    """The generator is not degenerate: it yields feasible and infeasible specs, SMT and not."""
    outcomes = [best_layout(*_random_case(seed)) is not None for seed in range(80)]
    assert 10 <= sum(outcomes) <= 70


def test_oracle_rules_on_tiny_examples() -> None:
    """Sanity of the oracle itself (its rules, not the planner's)."""
    topo = synthetic(sockets=1, cores=4, threads=2)
    cores = physical_cores(topo)
    assert [sorted(c.cpus) for c in cores] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert reserved_cpus(topo, 1) == {0, 4}
    assert reserved_cpus(topo, 0) == {0, 4}  # CPU 0's core always
    two, one = cores[1], physical_cores(synthetic(sockets=1, cores=2, threads=1))[1]
    assert vcpu_cores_ok(2, [two]) and not vcpu_cores_ok(1, [two, two])
    assert vcpu_cores_ok(1, [two]) and vcpu_cores_ok(3, [two, two])  # odd: one idle thread allowed
    assert not vcpu_cores_ok(2, [two, one])  # even: no idle thread
    assert vcpu_cores_ok(2, [one, one]) and not vcpu_cores_ok(4, [two])
    # 3 free SMT cores: 4 vCPUs + a dedicated emulator core fit, 6 vCPUs do not.
    spec = spec_from_data({"vms": [{"name": "a", "vcpus": 4, "memory": 1024}]}, "t")
    assert best_layout(topo, spec) is not None
    spec = spec_from_data({"vms": [{"name": "a", "vcpus": 6, "memory": 1024}]}, "t")
    assert best_layout(topo, spec) is None


def test_first_fit_in_spec_order_fails_but_a_layout_exists() -> None:
    """2 nodes x 5 free SMT cores. VMs take 2, 2, 3, 3 whole cores (emulator core included).

    First-fit in spec order puts a and b on node 0 (1 core left), c on node 1 (2 left),
    and has no room for d. The only layouts pair a 2-core VM with a 3-core VM per node.
    """
    topo = synthetic(sockets=2, cores=6, threads=2)
    spec = spec_from_data(
        {
            "vms": [
                {"name": "a", "vcpus": 2, "memory": 1024},
                {"name": "b", "vcpus": 2, "memory": 1024},
                {"name": "c", "vcpus": 4, "memory": 1024},
                {"name": "d", "vcpus": 4, "memory": 1024},
            ]
        },
        "t",
    )
    plan = make_plan(topo, spec, "t")
    by_node: dict[int, set[str]] = {}
    for vm in plan.vms:
        by_node.setdefault(vm.numa_nodes[0], set()).add(vm.name)
    assert sorted(sorted(names) for names in by_node.values()) in (
        [["a", "c"], ["b", "d"]],
        [["a", "d"], ["b", "c"]],
    )
    assert all(len(vm.cores) == (2 if vm.vcpus == 2 else 3) for vm in plan.vms)


def test_fragmentation_of_smt_cores_by_odd_vms_is_avoided() -> None:
    """Node 0: 2 free SMT cores; node 1: 2 free one-thread cores (siblings offline).

    VM "odd" (1 vCPU, emulator on host) fits either node; VM "pair" (2 vCPUs, host
    emulator) fits either too, but "big" (3 vCPUs) needs node 0's 4 threads minus one idle:
    both SMT cores. So big -> node 0, and the others share node 1's two one-thread cores.
    """
    # spread numbering, 2 sockets x 3 cores x 2 threads: node 0 = cores {0,6},{1,7},{2,8}; node 1 = {3,9},{4,10},{5,11}
    topo = synthetic(sockets=2, cores=3, threads=2, offline=[10, 11])
    spec = spec_from_data(
        {
            "host": {"reserved_cores_per_node": 1},
            "vms": [
                {"name": "odd", "vcpus": 1, "memory": 1024, "emulator": "host"},
                {"name": "pair", "vcpus": 1, "memory": 1024, "emulator": "host"},
                {"name": "big", "vcpus": 3, "memory": 1024, "emulator": "host"},
            ],
        },
        "t",
    )
    assert best_layout(topo, spec) is not None
    plan = make_plan(topo, spec, "t")
    assert plan.vm("big").numa_nodes == (0,)
    assert {plan.vm("odd").numa_nodes, plan.vm("pair").numa_nodes} == {(1,)}


def test_cross_numa_minimised_over_assignments() -> None:
    """Both VMs want node 0 for their NIC, only one fits there: exactly one cross-NUMA NIC."""
    nics = (nic("0000:01:00.0", "eth0", 0, 40), nic("0000:02:00.0", "eth1", 0, 41))
    topo = synthetic(sockets=2, cores=4, threads=2, nics=nics)
    spec = spec_from_data(
        {
            "vms": [
                {"name": "a", "vcpus": 4, "memory": 1024, "nics": [{"passthrough": "eth0"}]},
                {"name": "b", "vcpus": 4, "memory": 1024, "nics": [{"passthrough": "eth1"}]},
            ]
        },
        "t",
    )
    layout = best_layout(topo, spec)
    assert layout is not None and layout.cross_numa == 1
    plan = make_plan(topo, spec, "t")
    assert _cross_numa(plan) == 1
    assert sum("(cross-NUMA)" in w for w in plan.warnings) == 1


_SHORTFALL = re.compile(
    r"needs? (\d+) whole cores?(?: on NUMA node \d+, only | on one NUMA node; the most free on any node is "
    r"|, only | in all, only )(\d+)"
)


def _contradiction(text: str) -> bool:
    """A core-shortfall message whose 'needs N' is not more than its 'only M free'."""
    match = _SHORTFALL.search(text)
    return match is not None and int(match.group(1)) <= int(match.group(2))


def test_core_shortfall_message_is_a_real_shortfall_minimal() -> None:
    # Regression: NodeFree.cores_needed once counted every pair as one core on a node with
    # both two-thread and one-thread free cores, so the refusal said "needs 2 whole cores on
    # NUMA node 0, only 2 are free". Here the free cores are {2,5} (SMT) and {1} (sibling 4
    # offline): 4 vCPUs need 4 threads, 3 exist.
    topo = synthetic(sockets=1, cores=3, threads=2, offline=[4])
    spec = spec_from_data({"vms": [{"name": "a", "vcpus": 4, "memory": 1024, "emulator": "host"}]}, "t")
    assert best_layout(topo, spec) is None
    result = _try_plan(topo, spec)
    assert isinstance(result, PlanError)
    assert not _contradiction(str(result)), str(result)


def test_core_shortfall_messages_are_real_shortfalls() -> None:
    # Regression: same defect as above, over the random cases.
    bad = []
    for seed in range(CASES):
        result = _try_plan(*_random_case(seed))
        if isinstance(result, PlanError) and _contradiction(str(result)):
            bad.append(f"seed {seed}: {result}")
    assert not bad, "\n".join(bad[:5])


def test_core_shortfall_on_an_smt_node_counts_one_core_per_vcpu_pair() -> None:
    # Regression: overflow pairs were once counted as two one-thread cores on an all-SMT node,
    # so 8 vCPUs + a dedicated emulator core read "needs 7 whole cores" although 5 SMT cores do.
    topo = synthetic(sockets=1, cores=4, threads=2)  # 3 free SMT cores
    spec = spec_from_data({"vms": [{"name": "a", "vcpus": 8, "memory": 1024}]}, "t")
    result = _try_plan(topo, spec)
    assert isinstance(result, PlanError)
    assert "a needs 5 whole cores on NUMA node 0, only 3 are free" in str(result)


def _exact_fit_16(seed: int) -> tuple[HostTopology, Spec]:
    """16 nodes of 24 two-thread cores (one kept for the host): each node's 23 free cores cut at
    random into VMs of 3-8 cores, shuffled; the first VM cut from node k passes through node k's
    NIC. Feasible by construction with no cross-NUMA NIC; the depth-first search alone runs for
    minutes on some seeds (bench/placement_stress.py, family c')."""
    rng = random.Random(seed)
    vms: list[dict[str, Any]] = []
    for node in range(16):
        left, first = 23, True
        while left > 0:
            cores = rng.choice([3, 4, 5, 6, 7, 8]) if left > 8 else left
            left -= cores
            vm: dict[str, Any] = {"name": f"vm{len(vms):03d}", "vcpus": 2 * cores, "memory": "4GiB", "emulator": "host"}
            if first:
                vm["nics"] = [{"passthrough": f"ens{node}"}]
            first = False
            vms.append(vm)
    rng.shuffle(vms)
    nics = [nic(f"0000:{0x10 + n:02x}:00.0", f"ens{n}", n, 100 + n) for n in range(16)]
    topo = synthetic(sockets=16, cores=24, threads=2, memory_mib_per_node=131072, nics=nics)
    return topo, spec_from_data({"host": {"reserved_cores_per_node": 1}, "vms": vms}, "case.yaml")


@pytest.mark.parametrize("seed", [0, 18])
def test_exact_fit_on_a_16_node_host_is_planned(seed: int) -> None:
    """Every free core used, every NIC local: the plan exists and the planner finds it (CP-SAT
    settles what the search's steps do not), with 0 cross-NUMA NICs, proven the fewest."""
    topo, spec = _exact_fit_16(seed)
    plan = make_plan(topo, spec, "case.yaml")
    assert _cross_numa(plan) == 0
    assert not any("not proven" in w for w in plan.warnings)
    assert sum(len(vm.cores) for vm in plan.vms) == 16 * 23
    check_plan(topo, spec, plan)
