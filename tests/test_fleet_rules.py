"""Each placement rule on its own (src/bmslice/fleet/placement/rules/, one module per rule): what
it refuses before any search, what it admits, and for the objectives their cost and lower bound.
The first pass and the CP-SAT model read the same rules; test_fleet_exact.py tests them together."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from bmslice.errors import PlanError
from bmslice.fleet.placement import place
from bmslice.fleet.placement.inputs import build_problem
from bmslice.fleet.placement.problem import Problem, Spot, read_host
from bmslice.fleet.placement.rules import Rules
from bmslice.fleet.placement.rules.host_planner import NoGood
from bmslice.fleet.placement.rules.nics import every_option, options
from bmslice.fleet.placement.rules.room import _spread
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import Fleet, NicKind, NicRequest, PlacedVm, Placement, Role, fleet_from_data
from bmslice.model.topology import HostTopology, PciDevice
from topologies import nic, synthetic

SMT = synthetic(1, 6, 2)  # 5 free cores on one node
PLAIN = synthetic(1, 10, 1)  # 9 free cores, no SMT


def host(name: str, role: str = "worker", rack: str = "default", **more: Any) -> dict[str, Any]:
    return {"name": name, "uri": f"qemu+ssh://{name}/system", "role": role, "rack": rack, **more}


def fleet_of(hosts: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> Fleet:
    return fleet_from_data({"inventory": hosts, "clusters": clusters}, "fleet.yaml")


def red(count: int = 1, **size: Any) -> dict[str, Any]:
    return {"name": "red", "vlan": 100, "workers": {"count": count, "vcpus": 2, "memory": "1GiB", **size}}


def problem_of(fleet: Fleet, topos: dict[str, HostTopology], existing: Placement | None = None) -> Problem:
    return build_problem(fleet, topos, existing, False)


def checks(problem: Problem) -> list[str]:
    base = Tally.of(problem, problem.fixed)
    return [text for rule in Rules().all if (text := rule.check(problem, base)) is not None]


# --- roles --------------------------------------------------------------------------------------


def test_roles_a_control_plane_without_control_host_is_refused_before_any_search() -> None:
    cluster = {**red(0), "control_plane": [{"vcpus": 2, "memory": "1GiB"}]}
    problem = problem_of(fleet_of([host("a")], [cluster]), {"a": SMT})
    assert checks(problem) == ["red-control-1: the inventory has no control host"]
    rules, base = Rules(), Tally(problem)
    assert not rules.roles.admits(problem, base, problem.classes[0], problem.hosts[0], frozenset())


# --- max_per_host ----------------------------------------------------------------------------------


def test_max_per_host_counts_the_cluster_and_role_on_each_host() -> None:
    problem = problem_of(
        fleet_of([host("a"), host("b")], [{**red(2), "spread": {"max_per_host": 1}}]), {"a": SMT, "b": SMT}
    )
    rules, tally = Rules(), Tally(problem)
    cls, a = problem.classes[0], problem.host("a")
    assert rules.max_per_host.host_ok(tally, cls, a)
    tally.add("red-worker-1", Spot("a", (0,)))
    assert not rules.max_per_host.host_ok(tally, cls, a)
    assert rules.max_per_host.shortfall(tally, cls, a) == "runs 1 red worker VM(s) already (max_per_host 1)"
    assert checks(problem) == []


# --- control planes apart -------------------------------------------------------------------------


def _control_fleet(racks: tuple[str, ...], **spread: Any) -> Fleet:
    hosts = [host(f"c{i}", "control", rack) for i, rack in enumerate(racks)]
    cluster = {**red(0), "control_plane": [{"vcpus": 2, "memory": "1GiB"}] * 2, "spread": {"max_per_host": 2, **spread}}
    return fleet_of(hosts, [cluster])


def test_control_planes_go_to_distinct_racks_when_the_control_hosts_span_enough_of_them() -> None:
    topos = {f"c{i}": SMT for i in range(3)}
    spread = place(_control_fleet(("r1", "r1", "r2")), topos)
    assert {spread.vm("red-control-1").host, spread.vm("red-control-2").host} == {"c0", "c2"}
    # one rack only: distinct hosts are enough
    one_rack = place(_control_fleet(("r1", "r1", "r1")), topos)
    assert len({vm.host for vm in one_rack.vms}) == 2


def test_kept_control_planes_stacked_by_an_older_bmslice_are_refused_or_moved_apart() -> None:
    fleet = _control_fleet(("r1", "r1"))
    topos = {"c0": SMT, "c1": SMT}
    stacked = Placement(tuple(PlacedVm(f"red-control-{i}", "red", Role.CONTROL, i, "c0", 0) for i in (1, 2)))
    with pytest.raises(PlanError) as refused:
        place(fleet, topos, stacked)
    assert str(refused.value) == (
        "control planes apart: red-control-1 and red-control-2 of the kept placement are both on c0; let one move "
        "with --allow-move, or say spread: {control_planes: any}"
    )
    apart = place(fleet, topos, stacked, allow_move=True)
    assert len(apart.moved) == 1 and {vm.host for vm in apart.vms} == {"c0", "c1"}
    assert apart.vm(apart.moved[0]).host == "c1"
    assert place(_control_fleet(("r1", "r1"), control_planes="any"), topos, stacked).moved == ()


# --- capacity -------------------------------------------------------------------------------------


def test_capacity_counts_a_vcpu_pair_as_one_core_with_smt_and_two_without() -> None:
    """6 vCPUs and an emulator core: 4 cores with SMT (5 free), 7 without (9 free, but a node of 6 is short)."""
    fleet = fleet_of([host("a"), host("b")], [red(1, vcpus=6)])
    problem = problem_of(fleet, {"a": SMT, "b": synthetic(1, 7, 1)})
    rules, base, cls = Rules(), Tally(problem), problem.classes[0]
    assert rules.capacity.slot_admits(base, cls, problem.host("a"), (0,), frozenset())
    assert not rules.capacity.slot_admits(base, cls, problem.host("b"), (0,), frozenset())
    assert rules.capacity.slot_admits(base, cls, problem.host("b"), (0,), frozenset({"cores"}))
    assert rules.capacity.shortfall(base, cls, problem.host("b")) == "most free on one node: 6 cores, 30GiB"
    assert problem.host("a").cores_for(cls.shares[0]) == 4 and problem.host("b").cores_for(cls.shares[0]) == 7


def test_a_vm_over_two_nodes_needs_a_host_with_two_nodes() -> None:
    fleet = fleet_of([host("a")], [red(1, vcpus=4, numa_nodes=2)])
    assert checks(problem_of(fleet, {"a": SMT})) == [
        "red-worker-1: numa_nodes: 2 needs a worker host with 2 NUMA nodes with CPUs; the most any has is 1 (a)"
    ]


# --- NICs -------------------------------------------------------------------------------------------


def _host_with(*devices: PciDevice, **inv: Any) -> Any:
    fleet = fleet_of([host("a", **inv)], [red()])
    return read_host(fleet.inventory[0], replace(synthetic(2, 6, 2), pci_devices=devices))


def test_nics_local_first_then_by_name() -> None:
    a = _host_with(nic("0000:01:00.0", "ens1", 0, 40), nic("0000:02:00.0", "ens2", 1, 41))
    tally = Tally(problem_of(fleet_of([host("a")], [red()]), {"a": SMT}))
    sriov = NicRequest(kind=NicKind.SRIOV)
    assert [o[0].pf for o in options(tally, a, sriov, (1,), 100)] == ["ens2", "ens1"]
    assert [o[0].pf for o in options(tally, a, sriov, (0,), 100)] == ["ens1", "ens2"]


def test_a_pf_with_vfs_enabled_or_an_iommu_group_the_host_uses_is_never_passed_through() -> None:
    storage = PciDevice("0000:01:00.1", "0x010802", "0x144d", "0xa808", 0, 40, "nvme")
    a = _host_with(nic("0000:01:00.0", "ens1", 0, 40), storage, nic("0000:02:00.0", "ens2", 0, 41, vfs=4))
    assert [(pf.name, pf.blocked) for pf in a.pfs] == [
        ("ens1", "shares IOMMU group 40 with 0000:01:00.1 (driver nvme)"),
        ("ens2", "has 4 VFs enabled"),
    ]


def test_iommu_mates_the_host_drives_go_to_one_vm_together() -> None:
    a = _host_with(nic("0000:01:00.0", "ens1", 0, 40), nic("0000:01:00.1", "ens2", 0, 40))
    assert [pf.mates for pf in a.pfs] == [("0000:01:00.1",), ("0000:01:00.0",)]
    tally = Tally(problem_of(fleet_of([host("a")], [red()]), {"a": SMT}))
    one, two = NicRequest(kind=NicKind.PASSTHROUGH), NicRequest(kind=NicKind.PASSTHROUGH, count=2)
    assert list(every_option(tally, a, one, (0,), 100)) == []
    assert [[n.pf for n in o] for o in every_option(tally, a, two, (0,), 100)] == [["ens1", "ens2"]]


def test_vfs_a_pf_offers_follow_the_host_pool_and_the_vfs_in_use() -> None:
    pf = replace(nic("0000:01:00.0", "ens1", 0, 40, vfs=4), virtfns=tuple(f"0000:01:10.{i}" for i in range(4)))
    busy = PciDevice("0000:01:10.1", "0x020000", "0x8086", "0x1515", 0, 50, "vfio-pci", physfn=pf.address)
    assert _host_with(pf, busy).pfs[0].vf_cap == 3  # 4 VFs exist, one held by a guest: it cannot grow
    assert _host_with(nic("0000:01:00.0", "ens1", 0, 40), host={"sriov_vfs": {"ens1": 8}}).pfs[0].vf_cap == 8


def test_with_nic_numa_policy_require_only_local_nics_are_offered() -> None:
    a = _host_with(nic("0000:01:00.0", "ens1", 0, 40), host={"nic_numa_policy": "require"})
    tally = Tally(problem_of(fleet_of([host("a")], [red()]), {"a": SMT}))
    sriov = NicRequest(kind=NicKind.SRIOV)
    assert list(options(tally, a, sriov, (1,), 100)) == []
    assert len(list(options(tally, a, sriov, (0,), 100))) == 1


# --- rack spread (O2) and cross-NUMA NICs (O3) ----------------------------------------------------


def test_rack_spread_lower_bound_fills_the_emptiest_rack_within_what_its_hosts_may_take() -> None:
    """4 workers, max_per_host 1: 2 + 2 would be evenest, but rack r2 has one host: 3 + 1."""
    hosts = [host("a", rack="r1"), host("b", rack="r1"), host("c", rack="r1"), host("d", rack="r2")]
    problem = problem_of(fleet_of(hosts, [red(4)]), dict.fromkeys("abcd", SMT))
    rules, base = Rules(), Tally(problem)
    assert rules.racks.lower_bound(problem, base) == 3 * 3 + 1  # r1: 3, r2: 1 (its one host)
    layout = {f"red-worker-{i}": Spot(h, (0,)) for i, h in enumerate("abcd", start=1)}
    assert rules.racks.cost(problem, layout) == 10


def test_cross_numa_lower_bound_counts_the_local_room_of_each_node() -> None:
    """Both NICs on node 0, room there for one VM: of two NIC VMs on this host one is cross."""
    topo = replace(
        synthetic(2, 6, 2), pci_devices=(nic("0000:01:00.0", "ens1", 0, 40), nic("0000:01:00.1", "ens2", 0, 41))
    )
    problem = problem_of(
        fleet_of([host("a")], [{**red(2, vcpus=8, nic={"kind": "sriov"}), "spread": {"max_per_host": 2}}]), {"a": topo}
    )
    rules = Rules()
    assert rules.locality.lower_bound(problem, Tally(problem)) == 1
    placement = place(
        fleet_of([host("a")], [{**red(2, vcpus=8, nic={"kind": "sriov"}), "spread": {"max_per_host": 2}}]), {"a": topo}
    )
    assert placement.objective is not None and placement.objective.cross_numa_nics == 1 and placement.proven_optimal


# --- room, moves, the host planner's no-goods ------------------------------------------------------


def test_room_for_vms_over_several_nodes_counts_distinct_nodes() -> None:
    assert _spread([5, 5], 2) == 5
    assert _spread([9, 1, 1, 1], 2) == 3  # each VM takes one of the three small nodes at least
    assert _spread([4], 2) == 0


def test_a_no_good_hits_only_with_all_of_its_vms() -> None:
    key = ("class", "red", Role.WORKER, None)
    item = (key, (0,), ())
    no_good = NoGood(frozenset({"a"}), ((item, 2),), "refused")
    assert not no_good.hit(Counter({item: 1}))
    assert no_good.hit(Counter({item: 2}))
