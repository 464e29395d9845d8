"""The fleet placement is exact: refused only when no placement exists, saying why in operator
terms; the best layout (rack spread, then cross-NUMA NICs), said proven or feasible only; the
host planner the judge of every host's share; control planes apart unless the fleet opts out;
growth moves nothing unless --allow-move, which moves the fewest and lists them.

Fleets here are small and built by hand, each for one case; the generated ones are in
test_fleet_properties.py (invariants) and the oracle's completeness benchmark.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from bmslice.cli import fleet_cmd
from bmslice.errors import PlanError, SpecError
from bmslice.fleet.check import check_host
from bmslice.fleet.placement import place
from bmslice.fleet.placement.cpsat_model import build, solve
from bmslice.fleet.placement.inputs import build_problem
from bmslice.fleet.placement.rules import Rules
from bmslice.fleet.placement.tally import Tally
from bmslice.fleet.render import render_fleet
from bmslice.model.fleet import Fleet, Placement, fleet_from_data, placement_from_dict, placement_to_dict
from bmslice.model.topology import HostTopology, PciDevice
from fleetgen import mixed_fleet
from test_fleet_properties import fleets
from topologies import nic, synthetic

# One node with 6 cores: 5 free after the host's core, as on the design note's server1.
SMT = synthetic(1, 6, 2, memory_mib_per_node=32768)
PLAIN = synthetic(1, 10, 1, memory_mib_per_node=32768)  # no SMT: 9 free cores, a vCPU pair takes two


def host(name: str, role: str = "worker", rack: str = "default") -> dict[str, Any]:
    return {"name": name, "uri": f"qemu+ssh://{name}/system", "role": role, "rack": rack}


def cluster(name: str, vlan: int, workers: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"name": name, "vlan": vlan, "workers": {"memory": "1GiB", **workers}, **more}


def fleet_of(hosts: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> Fleet:
    return fleet_from_data({"inventory": hosts, "clusters": clusters}, "fleet.yaml")


def with_nics(topo: HostTopology, *devices: PciDevice) -> HostTopology:
    return replace(topo, pci_devices=tuple(devices))


def refusal(fleet: Fleet, topos: dict[str, HostTopology], existing: Placement | None = None) -> str:
    with pytest.raises(PlanError) as refused:
        place(fleet, topos, existing)
    text = str(refused.value)
    assert "\n" not in text
    return text


def assert_accepted_by_host_planner(fleet: Fleet, topos: dict[str, HostTopology], placement: Placement) -> None:
    files = render_fleet(fleet, placement, [], "fleet.yaml")
    for name in {vm.host for vm in placement.vms}:
        check_host(name, yaml.safe_load(files[f"hosts/{name}/spec.yaml"]), topos[name], f"{name}/spec.yaml")


# --- placeable fleets a first-come-first-served greedy refuses -------------------------------


def test_small_vms_that_would_fragment_both_hosts_are_packed_around_the_big_ones() -> None:
    """Biggest first, first fit: big-1 and big-2 (3 cores each) fill host a to 6 of its 7 cores,
    the small VMs (2 cores) then find room for only three. The exact placement puts one big and
    two small on each host."""
    topo = synthetic(1, 8, 2)
    fleet = fleet_of(
        [host("a"), host("b")],
        [
            cluster("big", 100, {"count": 2, "vcpus": 4}, spread={"max_per_host": 2, "racks": "any"}),
            cluster("small", 101, {"count": 4, "vcpus": 4, "emulator": "host"}, spread={"max_per_host": 2}),
        ],
    )
    topos = {"a": topo, "b": topo}
    placement = place(fleet, topos)
    assert {h: sorted(vm.name for vm in placement.on_host(h)) for h in "ab"} == {
        "a": ["big-worker-1", "small-worker-1", "small-worker-2"],
        "b": ["big-worker-2", "small-worker-3", "small-worker-4"],
    }
    assert placement.proven_optimal
    assert_accepted_by_host_planner(fleet, topos, placement)


def test_a_vm_that_needs_the_only_nic_gets_the_host_that_has_it() -> None:
    """The bigger VM without a NIC comes first and would take host a, the only one with a NIC."""
    topos = {"a": with_nics(SMT, nic("0000:01:00.0", "ens1", 0, 40)), "b": SMT}
    fleet = fleet_of(
        [host("a"), host("b")],
        [
            cluster("red", 100, {"count": 1, "vcpus": 6}),
            cluster("blue", 101, {"count": 1, "vcpus": 4, "nic": {"kind": "passthrough"}}),
        ],
    )
    placement = place(fleet, topos)
    assert (placement.vm("red-worker-1").host, placement.vm("blue-worker-1").host) == ("b", "a")
    assert [n.pf for n in placement.vm("blue-worker-1").nics] == ["ens1"]


# --- refusals: what binds, in operator terms ---------------------------------------------------


def test_cores_per_node_are_quoted_per_server_with_and_without_smt() -> None:
    """8 vCPUs with an emulator core: 5 cores on an SMT server, 9 on one without SMT."""
    topos = {"a": synthetic(1, 5, 2), "b": synthetic(1, 9, 1)}  # 4 and 8 free cores
    fleet = fleet_of([host("a"), host("b")], [cluster("red", 100, {"count": 1, "vcpus": 8, "memory": "8GiB"})])
    assert refusal(fleet, topos) == (
        "red-worker-1: no worker host left with 5 free cores (9 without SMT) and 8GiB free on one NUMA node "
        "(a: needs 5 cores; most free on one node: 4 cores, 30GiB; b: needs 9 cores; most free on one node: "
        "8 cores, 30GiB)"
    )


def test_memory_binds() -> None:
    fleet = fleet_of(
        [host("a")], [cluster("red", 100, {"count": 2, "vcpus": 2, "memory": "20GiB"}, spread={"max_per_host": 2})]
    )
    assert refusal(fleet, {"a": SMT}) == (
        "red: 2 worker VM(s) to place, the worker hosts hold at most 1 of them, so red-worker-1, red-worker-2 cannot "
        "all be placed: on each host the least of what max_per_host 2 (2 in all), its whole cores per NUMA node (2 in all) and its memory "
        "(1 in all) allow"
    )


def test_free_vfs_bind() -> None:
    pf = replace(nic("0000:01:00.0", "ens1", 0, 40), sriov_totalvfs=2)
    fleet = fleet_of(
        [host("a")],
        [
            cluster(
                "red",
                100,
                {"count": 3, "vcpus": 1, "emulator": "host", "nic": {"kind": "sriov"}},
                spread={"max_per_host": 3},
            )
        ],
    )
    text = refusal(fleet, {"a": with_nics(SMT, pf)})
    assert text.startswith(
        "red: 3 worker VM(s) to place, the worker hosts hold at most 2 of them, so red-worker-1 .. red-worker-3 "
        "(3 VMs) cannot all be placed"
    )
    assert text.endswith("its free VFs (2 in all) allow")


def test_free_vfs_of_two_clusters_together_bind() -> None:
    pf = replace(nic("0000:01:00.0", "ens1", 0, 40), sriov_totalvfs=2)
    sriov = {"vcpus": 1, "emulator": "host", "nic": {"kind": "sriov"}}
    fleet = fleet_of(
        [host("a")],
        [
            cluster("red", 100, {"count": 2, **sriov}, spread={"max_per_host": 2}),
            cluster("blue", 101, {"count": 1, **sriov}),
        ],
    )
    assert refusal(fleet, {"a": with_nics(SMT, pf)}).startswith(
        "red-worker-1, red-worker-2, blue-worker-1 cannot all be placed: too few free VFs. Each red worker needs 1 "
        "core and 1GiB on one NUMA node and a free VF on VLAN 100; blue-worker-1 needs"
    )


def test_passthrough_nics_bind() -> None:
    fleet = fleet_of(
        [host("a")],
        [
            cluster(
                "red",
                100,
                {"count": 2, "vcpus": 1, "emulator": "host", "nic": {"kind": "passthrough"}},
                spread={"max_per_host": 2},
            )
        ],
    )
    text = refusal(fleet, {"a": with_nics(SMT, nic("0000:01:00.0", "ens1", 0, 40))})
    assert "the worker hosts hold at most 1 of them" in text
    assert text.endswith("its free NICs to pass through (1 in all) allow")


def test_max_per_host_binds() -> None:
    fleet = fleet_of([host("a"), host("b")], [cluster("red", 100, {"count": 3, "vcpus": 2})])
    assert refusal(fleet, {"a": SMT, "b": SMT}) == (
        "red: 3 worker VMs, at most 1 per host (spread.max_per_host) on 2 worker host(s) is 2; add worker hosts or "
        "raise max_per_host"
    )


def test_cores_of_two_clusters_together_bind_and_the_set_is_the_fewest() -> None:
    """Each cluster fits alone; together they do not: the refusal names the fewest VMs that do not fit."""
    fleet = fleet_of(
        [host("a"), host("b")],
        [
            cluster("red", 100, {"count": 2, "vcpus": 6}, spread={"max_per_host": 2}),
            cluster("blue", 101, {"count": 2, "vcpus": 4, "emulator": "host"}, spread={"max_per_host": 2}),
        ],
    )
    text = refusal(fleet, {"a": SMT, "b": SMT})
    # red takes 4 cores a VM, blue 2: one of each per 5-core host; a third VM never fits
    assert text.startswith("red-worker-1, red-worker-2, blue-worker-1 cannot all be placed: too few free whole cores.")
    assert "Each red worker needs 4 cores and 1GiB on one NUMA node; blue-worker-1 needs 2 cores" in text
    assert "Free on the worker hosts: a (SMT) node 0 5 cores 30GiB; b (SMT) node 0 5 cores 30GiB" in text


def test_control_planes_apart_binds() -> None:
    hosts = [host("c1", "control"), host("c2", "control"), host("w1")]
    red = cluster("red", 100, {"count": 0, "vcpus": 2}, control_plane=[{"vcpus": 2, "memory": "1GiB"}] * 3)
    assert refusal(fleet_of(hosts, [red]), {"c1": SMT, "c2": SMT, "w1": SMT}) == (
        "control planes apart: red has 3 control-plane VMs, the inventory has 2 control host(s); add control hosts "
        "or say spread: {control_planes: any}"
    )


def test_control_planes_on_distinct_racks_bind() -> None:
    """Two control racks for two control planes: one per rack, and rack r2's host is too small."""
    hosts = [host("c1", "control", "r1"), host("c2", "control", "r1"), host("c3", "control", "r2")]
    red = cluster("red", 100, {"count": 0, "vcpus": 2}, control_plane=[{"vcpus": 6, "memory": "1GiB"}] * 2)
    text = refusal(fleet_of(hosts, [red]), {"c1": SMT, "c2": SMT, "c3": synthetic(1, 3, 2)})
    # more cores on c3 would do, as would dropping the rack rule
    assert text.startswith(
        "red-control-1, red-control-2 cannot all be placed: too few free whole cores or control planes on distinct "
        "racks (any one of them relaxed would let them fit)."
    )


# --- control planes apart, and the opt-out ----------------------------------------------------


def test_control_planes_are_never_stacked_and_the_fleet_may_opt_out() -> None:
    hosts = [host("c1", "control"), host("c2", "control"), host("w1")]
    topos = {"c1": SMT, "c2": SMT, "w1": SMT}
    red = cluster(
        "red",
        100,
        {"count": 0, "vcpus": 2},
        control_plane=[{"vcpus": 2, "memory": "1GiB"}] * 2,
        spread={"max_per_host": 2},
    )
    apart = place(fleet_of(hosts, [red]), topos)
    assert {apart.vm("red-control-1").host, apart.vm("red-control-2").host} == {"c1", "c2"}
    # one control host, two control planes: refused, unless the cluster says stacking is fine
    assert refusal(fleet_of(hosts[1:], [red]), topos).startswith("control planes apart: red has 2 control-plane VMs")
    stacked = place(fleet_of(hosts[1:], [{**red, "spread": {"max_per_host": 2, "control_planes": "any"}}]), topos)
    assert {vm.host for vm in stacked.vms} == {"c2"}


def test_the_opt_out_is_validated_like_the_rest_of_the_file() -> None:
    red = cluster("red", 100, {"count": 1, "vcpus": 2}, spread={"control_planes": "stacked"})
    with pytest.raises(SpecError) as refused:
        fleet_of([host("a")], [red])
    assert str(refused.value) == (
        "fleet.yaml: clusters[0].spread.control_planes: expected 'apart' or 'any', got 'stacked'"
    )


# --- the host planner is the judge -------------------------------------------------------------


def test_what_the_host_planner_refuses_is_learned_and_placed_around() -> None:
    """A realtime worker with one housekeeping vCPU splits a sibling pair on an SMT server (the
    host planner refuses it there); the fleet's own rules do not know that. It is placed on the
    server without SMT, and the placement says what the planner taught it."""
    topos = {"a": synthetic(1, 8, 2), "b": synthetic(1, 12, 1)}
    fleet = fleet_of(
        [host("a"), host("b")],
        [
            cluster(
                "red",
                100,
                {"count": 1, "vcpus": 4, "memory": "2GiB", "hugepages": "1G", "realtime": {"housekeeping_vcpus": 1}},
            )
        ],
    )
    placement = place(fleet, topos)
    assert placement.vm("red-worker-1").host == "b"
    assert placement.notes[0].startswith(
        "the host planner refuses a red worker on NUMA node 0 of a: a/spec.yaml: vms[0].realtime.housekeeping_vcpus: "
        "1 splits host core"
    )
    assert placement.proven_optimal
    assert_accepted_by_host_planner(fleet, topos, placement)


def test_a_pf_whose_iommu_group_mate_the_host_drives_goes_with_its_mate() -> None:
    """ens1 and ens2 share an IOMMU group and the host drives both: the host planner passes one
    through only with the other, to the same VM. A one-NIC VM takes ens3 (alone in its group);
    a two-NIC VM takes the pair."""
    pfs = (nic("0000:01:00.0", "ens1", 0, 40), nic("0000:01:00.1", "ens2", 0, 40), nic("0000:02:00.0", "ens3", 0, 41))
    topos = {"a": with_nics(synthetic(1, 8, 2), *pfs)}
    fleet = fleet_of(
        [host("a")],
        [
            cluster("red", 100, {"count": 1, "vcpus": 2, "nic": {"kind": "passthrough"}}),
            cluster("blue", 101, {"count": 1, "vcpus": 2, "nic": {"kind": "passthrough", "count": 2}}),
        ],
    )
    placement = place(fleet, topos)
    assert [n.pf for n in placement.vm("red-worker-1").nics] == ["ens3"]
    assert [n.pf for n in placement.vm("blue-worker-1").nics] == ["ens1", "ens2"]
    assert_accepted_by_host_planner(fleet, topos, placement)


# --- the best layout, proven or not --------------------------------------------------------------


def test_the_example_is_proven_optimal_and_says_so_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet_file = Path(__file__).resolve().parents[1] / "examples" / "fleet" / "fleet.yaml"
    assert fleet_cmd.main(["fleet", "plan", str(fleet_file), "--out", str(tmp_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["placement"]["proven_optimal"] is True
    assert printed["placement"]["objective"] == {"moved": 0, "rack_spread": 8, "cross_numa_nics": 4}
    assert json.loads((tmp_path / "placement.json").read_text())["proven_optimal"] is True
    assert (
        "placement: proven optimal; 0 moved, rack spread 8, 4 cross-NUMA NIC(s)"
        in (tmp_path / "summary.txt").read_text()
    )


def test_out_of_time_the_first_pass_layout_is_kept_as_feasible_only() -> None:
    """50 generated servers whose first-pass layout misses the cross-NUMA lower bound: the solver
    gets no time to prove better, so the placement is the first pass's, said feasible only."""
    fleet, topos = mixed_fleet(50, 0, fill=0.6)
    placement = place(fleet, topos, budget_s=0.01)
    assert not placement.proven_optimal
    assert placement.objective is not None and placement.objective.cross_numa_nics > 0
    text = render_fleet(fleet, placement, [], "fleet.yaml")["summary.txt"]
    assert "placement: feasible only (the best found within the time budget)" in text


def test_a_placement_file_of_an_older_bmslice_still_loads() -> None:
    topos = {"a": SMT}
    placement = place(fleet_of([host("a")], [cluster("red", 100, {"count": 1, "vcpus": 2})]), topos)
    data = placement_to_dict(placement)
    for key in ("proven_optimal", "moved", "objective"):
        del data[key]
    old = placement_from_dict(data, "placement.json")
    assert old.vms == placement.vms and not old.proven_optimal and old.objective is None


# --- growth ------------------------------------------------------------------------------------------


def _grown() -> tuple[Fleet, Fleet, dict[str, HostTopology]]:
    """red's two workers spread over racks r1 and r2, one per host; then blue needs three whole nodes."""
    topo = synthetic(2, 6, 2)
    hosts = [host("a", rack="r1"), host("b", rack="r2")]
    red = cluster("red", 100, {"count": 2, "vcpus": 4, "emulator": "host"}, spread={"max_per_host": 2})
    blue = cluster("blue", 101, {"count": 3, "vcpus": 8}, spread={"max_per_host": 2})
    return fleet_of(hosts, [red]), fleet_of(hosts, [red, blue]), {"a": topo, "b": topo}


def test_growth_moves_nothing_and_is_refused_when_the_new_vms_do_not_fit_around_the_kept_ones() -> None:
    first_fleet, grown, topos = _grown()
    first = place(first_fleet, topos)
    assert (first.vm("red-worker-1").host, first.vm("red-worker-2").host) == ("a", "b")
    assert refusal(grown, topos, first) == (
        "blue: 3 worker VM(s) to place, the worker hosts hold at most 2 of them with the kept VMs where they are, so "
        "blue-worker-1 .. blue-worker-3 (3 VMs) cannot all be placed: on each host the least of what max_per_host 2 (4 in all), its whole "
        "cores per NUMA node (2 in all) and its memory (8 in all) allow"
    )


def test_allow_move_moves_the_fewest_and_lists_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first_fleet, grown, topos = _grown()
    first = place(first_fleet, topos)
    moved = place(grown, topos, first, allow_move=True)
    assert moved.moved == ("red-worker-1",) and moved.proven_optimal
    assert moved.objective is not None and moved.objective.moved == 1
    kept = moved.vm("red-worker-2")
    assert (kept.host, kept.nodes) == (first.vm("red-worker-2").host, first.vm("red-worker-2").nodes)
    assert moved.vm("red-worker-1").host == "b"  # next to red-worker-2, making a whole host free for blue
    summary = render_fleet(grown, moved, [], "fleet.yaml")["summary.txt"]
    assert "moved (rebuilt elsewhere): red-worker-1" in summary
    # nothing needs to move: nothing does, even allowed to
    again = place(grown, topos, moved, allow_move=True)
    assert again.moved == () and again.vms == moved.vms


def test_cli_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet_file = Path(__file__).resolve().parents[1] / "examples" / "fleet" / "fleet.yaml"
    with pytest.raises(SystemExit) as exited:
        fleet_cmd.main(["fleet", "plan", str(fleet_file), "--time-budget", "0"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bmslice fleet plan: argument --time-budget: '0' is not a number of seconds above 0")
    assert err.count("\n") == 1
    assert fleet_cmd.main(["fleet", "plan", str(fleet_file), "--time-budget", "2.5", "--allow-move"]) == 0
    assert "placement: proven optimal" in capsys.readouterr().out


# --- determinism -----------------------------------------------------------------------------------


def test_the_solver_s_layout_is_the_same_every_time_and_whatever_the_inventory_order() -> None:
    topo = synthetic(1, 8, 2)
    clusters = [
        cluster("big", 100, {"count": 2, "vcpus": 4}, spread={"max_per_host": 2, "racks": "any"}),
        cluster("small", 101, {"count": 4, "vcpus": 4, "emulator": "host"}, spread={"max_per_host": 2}),
    ]
    hosts = [host("a"), host("b"), host("c")]
    topos = {"a": topo, "b": topo, "c": topo}
    first = place(fleet_of(hosts, clusters), topos)
    assert place(fleet_of(hosts, clusters), topos) == first
    assert place(fleet_of(hosts[::-1], clusters), topos) == first


# --- what "proven" claims holds -----------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_a_proven_placement_is_never_beaten_and_a_refused_fleet_has_no_placement(
    generated: tuple[dict[str, Any], dict[str, HostTopology]],
) -> None:
    """Whatever decided it (the first pass with its lower bounds, or CP-SAT), a placement said to
    be proven optimal has the objective of CP-SAT's optimum over the whole model, and a refused
    fleet has none (the host planner's no-goods aside: these fleets' hosts accept every share)."""
    data, topos = generated
    fleet = fleet_from_data(data, "generated")
    try:
        placement: Placement | None = place(fleet, topos)
    except PlanError:
        placement = None
    problem = build_problem(fleet, topos, None, False)
    rules = Rules()
    solved = solve(build(problem, Tally(problem), rules.all), 30)
    assert solved.status in ("optimal", "infeasible")
    if placement is None:
        assert solved.status == "infeasible"
        return
    assert solved.status == "optimal" and placement.objective is not None
    best = tuple(rule.cost(problem, solved.layout) for rule in rules.objectives)
    if placement.proven_optimal:
        assert placement.objective.values() == best
    else:
        assert placement.objective.values() >= best
