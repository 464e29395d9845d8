"""L3-aware placement: on hosts with several L3 domains per NUMA node, the fewest split VMs.

tests/oracle.py's best_l3_layout tries every way of giving each VM cores per (L3 domain,
thread count) on every node assignment, sharing no code with bmslice.plan; the planner's
cross-NUMA NICs and split VMs must equal its minimum, and every plan keeps the usual
invariants (check_plan). bench/completeness_bench.py runs the same comparison on thousands.
"""

from __future__ import annotations

import doctest
import random
from dataclasses import replace
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bmslice.plan.l3_placement as l3_placement
from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.plan import Plan, plan_from_dict, plan_to_dict
from bmslice.model.spec import Spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from oracle import (
    OCore,
    OVm,
    best_l3_layout,
    check_plan,
    literal_min_splits,
    node_min_splits,
    physical_cores,
    split_vms,
)
from topologies import l3_case, nic, synthetic

CASES = 200


def cross_numa(plan: Plan) -> int:
    return sum(1 for vm in plan.vms for d in vm.devices if d.numa_node is not None and d.numa_node not in vm.numa_nodes)


def try_plan(topo: HostTopology, spec: Spec, keep: tuple[Any, ...] = ()) -> Plan | None:
    try:
        return make_plan(topo, spec, "case.yaml", keep)
    except PlanError:
        return None


def agrees_with_oracle(topo: HostTopology, spec: Spec) -> str | None:
    """None when the planner matches the oracle, else what differs."""
    best = best_l3_layout(topo, spec)
    plan = try_plan(topo, spec)
    if best is None:
        return None if plan is None else "accepted a spec with no valid layout"
    if plan is None:
        return "refused a feasible spec"
    check_plan(topo, spec, plan)
    got = (cross_numa(plan), split_vms(topo, plan))
    return None if got == best else f"(cross-NUMA, split VMs) {got}, oracle {best}"


@pytest.mark.parametrize("seed", range(CASES))
def test_fewest_split_vms_equals_the_oracle(seed: int) -> None:
    topo, spec = l3_case(random.Random(seed))
    problem = agrees_with_oracle(topo, spec)
    assert problem is None, f"seed {seed}: {problem}"


def test_random_cases_need_the_search() -> None:
    """Not vacuous: some cases split VMs unavoidably, and in some, cores taken lowest first (the
    layout without L3 awareness) split more VMs than the planner does."""
    forced = naive_worse = 0
    for seed in range(CASES):
        topo, spec = l3_case(random.Random(seed))
        plan = try_plan(topo, spec)
        if plan is None:
            continue
        forced += split_vms(topo, plan) > 0
        naive = try_plan(replace(topo, l3_domains=()), spec)
        assert naive is not None
        naive_worse += split_vms(topo, naive) > split_vms(topo, plan)
    assert forced >= 10 and naive_worse >= 10, (forced, naive_worse)


@pytest.mark.parametrize("seed", range(0, CASES, 4))
def test_replanning_keeps_running_slices_and_minimises_the_rest(seed: int) -> None:
    topo, spec = l3_case(random.Random(seed))
    first = msgspec.structs.replace(spec, vms=spec.vms[:1])
    running = try_plan(topo, first)
    if running is None:
        return
    best = best_l3_layout(topo, spec, running.vms)
    plan = try_plan(topo, spec, tuple(running.vms))
    assert (plan is None) == (best is None), f"seed {seed}"
    if plan is None or best is None:
        return
    assert plan.vms[0] == running.vms[0], "a running slice moved"
    new = [vm.name for vm in spec.vms[1:]]
    assert (cross_numa(plan) - cross_numa(running), split_vms(topo, plan, new)) == best
    check_plan(topo, spec, plan)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=10_000, max_value=10**9))
def test_property_planner_matches_the_oracle(seed: int) -> None:
    topo, spec = l3_case(random.Random(seed))
    assert agrees_with_oracle(topo, spec) is None


def test_oracle_counts_agree_with_core_by_core() -> None:
    """The oracle's per-domain counting against a literal brute force over cores (tiny nodes)."""
    rng = random.Random(5)
    two, one = OCore(frozenset({0, 1}), 0), OCore(frozenset({0}), 0)
    checked = 0
    for _ in range(60):
        domains = [(rng.randint(0, 2), rng.randint(0, 1)) for _ in range(rng.choice([2, 3]))]
        cores = [two] * sum(t for t, _ in domains) + [one] * sum(o for _, o in domains)
        l3 = [d for d, (t, _) in enumerate(domains) for _ in range(t)]
        l3 += [d for d, (_, o) in enumerate(domains) for _ in range(o)]
        if len(cores) > 6:
            continue
        vms = [OVm(f"v{k}", rng.choice([1, 2, 3]), rng.random() < 0.4, 0, None, ()) for k in range(rng.randint(1, 2))]
        assert node_min_splits(tuple(domains), vms) == literal_min_splits(cores, l3, vms)
        checked += 1
    assert checked >= 30


# --- worked examples --------------------------------------------------------------------------


def two_ccds(**kwargs: Any) -> HostTopology:
    """One node: 9 cores x 2 threads; the host keeps core 0, the L3s hold cores 1-4 and 5-8."""
    args: dict[str, Any] = {"sockets": 1, "cores": 9, "threads": 2, "cores_per_l3": 4}
    args.update(kwargs)
    topo = synthetic(**args)
    # re-cut: the host's core 0 on its own L3, then two 4-core L3s (as if the CCDs were 1-4, 5-8)
    cores = physical_cores(topo)
    groups = [cores[0:1], cores[1:5], cores[5:9]]
    domains = tuple(
        replace(topo.l3_domains[0], id=i * 2, cpus=CpuSet.from_iter(c for core in g for c in core.cpus))
        for i, g in enumerate(groups)
    )
    return replace(topo, l3_domains=domains)


def spec(vms: list[dict[str, Any]], **host: Any) -> Spec:
    return spec_from_data({"host": host, "vms": vms}, "t.yaml")


def test_first_fit_would_split_a_vm_that_fits_one_l3() -> None:
    """VMs of 3, 3, 1 and 1 cores on two free 4-core L3s. Lowest-CPU-first in spec order puts
    a on cores 1-3 and b on 4-6, over both L3s; the planner gives a and b one L3 each."""
    topo = two_ccds()
    vms = [
        {"name": "a", "vcpus": 6, "memory": 1024, "emulator": "host"},
        {"name": "b", "vcpus": 6, "memory": 1024, "emulator": "host"},
        {"name": "c", "vcpus": 2, "memory": 1024, "emulator": "host"},
        {"name": "d", "vcpus": 2, "memory": 1024, "emulator": "host"},
    ]
    plan = make_plan(topo, spec(vms), "t")
    assert [vm.l3_domains for vm in plan.vms] == [(2,), (4,), (2,), (4,)]
    assert split_vms(topo, plan) == 0 and best_l3_layout(topo, spec(vms)) == (0, 0)
    naive = make_plan(replace(topo, l3_domains=()), spec(vms), "t")
    assert split_vms(topo, naive) == 1
    assert not any("span L3" in w for w in plan.warnings)


def test_the_emulator_core_counts() -> None:
    """6 vCPUs + a dedicated emulator core are 4 cores: exactly one L3. Two such VMs fill both."""
    topo = two_ccds()
    vms = [{"name": n, "vcpus": 6, "memory": 1024} for n in ("a", "b")]
    plan = make_plan(topo, spec(vms), "t")
    for vm in plan.vms:
        assert len(vm.cores) == 4 and len(vm.l3_domains) == 1
        assert topo.l3_of(vm.emulator_cpus.min()).id == vm.l3_domains[0]  # type: ignore[union-attr]


def test_an_unavoidable_split_is_explained() -> None:
    topo = two_ccds()
    plan = make_plan(topo, spec([{"name": "big", "vcpus": 10, "memory": 1024}]), "t")  # 6 cores
    assert plan.vm("big").l3_domains == (2, 4)
    assert (
        "big: its 6 cores span L3 caches 2, 4 (more cores than one L3 cache of node 0 has outside the host's (4))"
        in plan.warnings
    )
    # 3 + 3 + 2 cores on two 4-core L3s: one VM has to span them, and the oracle agrees
    vms = [{"name": n, "vcpus": v, "memory": 1024, "emulator": "host"} for n, v in (("a", 6), ("b", 6), ("c", 4))]
    plan = make_plan(topo, spec(vms), "t")
    assert split_vms(topo, plan) == 1 and best_l3_layout(topo, spec(vms)) == (0, 1)
    assert "c: its 2 cores span L3 caches 2, 4 (no layout of the whole plan keeps every VM inside one L3 cache)" in (
        plan.warnings
    )


def test_cross_numa_nics_come_before_split_vms() -> None:
    """Node 0 can hold the VM only split; node 1 whole. Its NIC is on node 0: node 0 wins."""
    topo = synthetic(sockets=2, cores=5, threads=2, cores_per_l3=2, nics=(nic("0000:01:00.0", "eth0", 0, 40),))
    vm = {"name": "a", "vcpus": 4, "memory": 1024, "emulator": "host", "nics": [{"passthrough": "eth0"}]}
    # node 0: host core 0, then L3s {1} (part of {0,1}), {2,3}, {4}; two 2-core VMs fill {2,3} first
    fill = {"name": "f", "vcpus": 4, "memory": 1024, "emulator": "host", "numa_node": 0}
    plan = make_plan(topo, spec([fill, vm]), "t")
    assert plan.vm("a").numa_nodes == (0,) and len(plan.vm("a").l3_domains) == 2
    assert best_l3_layout(topo, spec([fill, vm])) == (0, 1)


def test_plan_json_shows_l3_domains_and_reads_back() -> None:
    topo = two_ccds()
    plan = make_plan(topo, spec([{"name": "a", "vcpus": 4, "memory": 1024}]), "t")
    data = plan_to_dict(plan)
    assert data["vms"][0]["l3_domains"] == [2]
    assert plan_from_dict(data) == plan
    plain = plan_to_dict(
        make_plan(synthetic(sockets=1, cores=4), spec([{"name": "a", "vcpus": 2, "memory": 1024}]), "t")
    )
    assert "l3_domains" not in plain["vms"][0]  # the host does not say: plans read as before


@pytest.mark.parametrize("seed", range(0, CASES, 3))
def test_cp_sat_layout_equals_the_oracle(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no steps for the depth-first search every L3 layout is CP-SAT's (plan/l3_sat.py),
    the method that settles EPYC-sized hosts: the same fewest split VMs as the oracle."""
    monkeypatch.setattr(l3_placement, "L3_STEP_LIMIT", 0)
    topo, spec = l3_case(random.Random(seed))
    problem = agrees_with_oracle(topo, spec)
    assert problem is None, f"seed {seed}: {problem}"


def test_search_budget_fallback_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past every budget (no steps, no CP-SAT time) the plan is still valid, placed node by node,
    and says it is not proven."""
    monkeypatch.setattr(l3_placement, "L3_STEP_LIMIT", 1)
    monkeypatch.setattr(l3_placement, "L3_SAT_TIME_LIMIT", 0.0)
    topo = two_ccds()
    vms = [{"name": n, "vcpus": 2, "memory": 1024, "emulator": "host"} for n in "abcd"]
    plan = make_plan(topo, spec(vms), "t")
    check_plan(topo, spec(vms), plan)
    assert "the L3 cache layout is the best found in the search budget, not proven the fewest split VMs" in (
        plan.warnings
    )


def test_epyc_sized_host_plans_quickly() -> None:
    """8 NUMA nodes x 2 L3 domains of 4 cores, 24 VMs of 1-4 cores: exact, no VM split that fits."""
    topo = synthetic(sockets=2, cores=32, threads=2, nodes_per_socket=4, cores_per_l3=4, memory_mib_per_node=65536)
    sizes = [6, 4, 2, 6, 4, 2, 8, 2] * 3
    vms = [{"name": f"vm{i}", "vcpus": v, "memory": 2048, "emulator": "host"} for i, v in enumerate(sizes)]
    plan = make_plan(topo, spec(vms, reserved_cores_per_node=0), "t")
    assert split_vms(topo, plan) == 0
    assert not any("search budget" in w for w in plan.warnings)


def test_docstring_examples() -> None:
    assert doctest.testmod(l3_placement).failed == 0
