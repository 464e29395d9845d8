"""The fleet and VMs over several NUMA nodes (`numa_nodes` in a cluster's VM size).

- a worker that spans both nodes of the design note's server is placed there, its host spec
  says `numa_nodes: 2` (and no `numa_node`), and the host planner accepts the spec with the
  VM on exactly the nodes the placement records (also beside one-node VMs pinned around it,
  and on a 4-node host where the planner, not the fleet's first guess, picks the nodes);
- its NIC counts as local when it sits on any of the VM's nodes;
- no host with enough nodes, or no host with room on enough nodes: one line saying which;
- the size is validated like the host spec's (equal shares), one line naming the field;
- the placement file carries the nodes and reads them back; a kept VM stays on them, and a
  size that now asks for another number of nodes is refused, never moved; with --allow-move
  a kept VM stays on its nodes in their recorded order (whatever order the host planner gave
  the shares after the first) and is not counted as moved;
- labels, cloud-init and the summary name the nodes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
import yaml

from bmslice.errors import PlanError, SpecError
from bmslice.fleet.check import check_host
from bmslice.fleet.guest import node_labels
from bmslice.fleet.placement import place
from bmslice.fleet.render import host_spec_data, render_fleet
from bmslice.model.fleet import (
    Fleet,
    PlacedVm,
    Placement,
    Role,
    fleet_from_data,
    placement_from_dict,
    placement_to_dict,
)
from bmslice.model.topology import HostTopology
from fleetgen import SHAPES
from topologies import nic, synthetic


def fleet_data(workers: dict[str, Any], hosts: tuple[str, ...] = ("a", "b"), **cluster: Any) -> dict[str, Any]:
    return {
        "inventory": [{"name": n, "uri": f"qemu+ssh://{n}/system", "role": "worker"} for n in hosts],
        "clusters": [{"name": "red", "vlan": 100, "workers": workers, **cluster}],
    }


def server1s(*names: str) -> dict[str, HostTopology]:
    return {name: SHAPES["server1"]() for name in names}


def four_nodes() -> HostTopology:
    """1 socket x 16 cores x 2 threads in 4 NUMA nodes; an SR-IOV NIC on node 2."""
    dev = replace(nic("0000:20:00.0", "ens1", 2, 60), sriov_totalvfs=8, sriov_offset=128, sriov_stride=2)
    return synthetic(1, 16, 2, nodes_per_socket=4, nics=(dev,), memory_mib_per_node=32768)


def planned(data: dict[str, Any], topos: dict[str, HostTopology], existing: Placement | None = None) -> Placement:
    return place(fleet_from_data(data, "fleet.yaml"), topos, existing)


def host_plan_nodes(fleet: Fleet, placement: Placement, topos: dict[str, HostTopology], host: str) -> dict[str, Any]:
    """Each VM's nodes as the host planner puts them, on the spec the fleet renders for `host`."""
    data = host_spec_data(fleet, placement, host)
    assert data is not None
    return {vm.name: vm.numa_nodes for vm in check_host(host, data, topos[host], f"{host}/spec.yaml").plan.vms}


def test_a_worker_over_both_nodes_of_server1() -> None:
    data = fleet_data({"count": 2, "vcpus": 8, "memory": "8GiB", "numa_nodes": 2})
    fleet, topos = fleet_from_data(data, "fleet.yaml"), server1s("a", "b")
    placement = place(fleet, topos)
    vm = placement.vm("red-worker-1")
    assert (vm.host, vm.numa_node, vm.numa_nodes, vm.nodes_text) == ("a", 0, (0, 1), "0,1")
    assert vm.guest_threads == 2 and vm.guest_cores[:2] == ((0, 1), (2, 3))
    spec = host_spec_data(fleet, placement, "a")
    assert spec is not None
    [entry] = spec["vms"]
    assert entry["numa_nodes"] == 2 and "numa_node" not in entry
    assert host_plan_nodes(fleet, placement, topos, "a") == {"red-worker-1": (0, 1)}
    # a share of 4 vCPUs (2 cores) on each node, the emulator core with the first
    assert [(u.node, u.cores_used, u.memory_used) for u in placement.usage if u.host == "a"] == [
        (0, 3, 4096),
        (1, 2, 4096),
    ]


def test_one_node_vms_are_pinned_around_it_and_the_host_agrees() -> None:
    """A blue worker over both nodes, then red workers of one node each filling what is left:
    the host planner, given the pinned red workers, puts blue where the placement says."""
    data = fleet_data({"count": 2, "vcpus": 2, "memory": "4GiB"}, hosts=("a",), spread={"max_per_host": 2})
    data["clusters"].append(
        {"name": "blue", "vlan": 200, "workers": {"count": 1, "vcpus": 8, "memory": "8GiB", "numa_nodes": 2}}
    )
    fleet, topos = fleet_from_data(data, "fleet.yaml"), server1s("a")
    placement = place(fleet, topos)
    assert placement.vm("blue-worker-1").nodes == (0, 1)
    assert sorted(placement.vm(f"red-worker-{i}").numa_node for i in (1, 2)) == [0, 1]
    assert host_plan_nodes(fleet, placement, topos, "a") == {vm.name: vm.nodes for vm in placement.vms}


def test_on_a_four_node_host_the_host_planner_picks_the_nodes_and_its_nic_is_local() -> None:
    data = fleet_data(
        {"count": 1, "vcpus": 8, "memory": "8GiB", "numa_nodes": 2, "nic": {"kind": "sriov"}}, hosts=("q",)
    )
    fleet, topos = fleet_from_data(data, "fleet.yaml"), {"q": four_nodes()}
    placement = place(fleet, topos)
    vm = placement.vm("red-worker-1")
    # The fleet found room first on nodes 0 and 2 (its VF's PF is on 2); the host planner tries
    # the NIC's node first and gives it the first share and the emulator core: that is recorded.
    assert vm.nodes == (2, 0)
    assert [(u.node, u.cores_used) for u in placement.usage] == [(0, 2), (1, 0), (2, 3), (3, 0)]
    assert [n.pf for n in vm.nics] == ["ens1"]
    assert host_plan_nodes(fleet, placement, topos, "q") == {"red-worker-1": vm.nodes}
    summary = render_fleet(fleet, placement, [], "fleet.yaml")["summary.txt"]
    row = next(line for line in summary.splitlines() if "red-worker-1" in line)
    assert f" {vm.nodes_text} " in row and "(NUMA" not in row  # a local NIC carries no NUMA note


def test_no_host_with_enough_nodes_is_one_line() -> None:
    with pytest.raises(PlanError) as info:
        planned(fleet_data({"count": 1, "vcpus": 8, "memory": "8GiB", "numa_nodes": 4}), server1s("a", "b"))
    assert str(info.value) == (
        "red-worker-1: numa_nodes: 4 needs a worker host with 4 NUMA nodes with CPUs; the most any has is 2 (a)"
    )


def test_no_room_on_enough_nodes_says_what_each_host_lacks() -> None:
    with pytest.raises(PlanError) as info:
        planned(fleet_data({"count": 1, "vcpus": 24, "memory": "8GiB", "numa_nodes": 2}, hosts=("a",)), server1s("a"))
    assert str(info.value).endswith("(a: room for a share on node(s) none, needs 2 nodes)")
    # server1 has 5 free cores per node: 2 shares of 10 vCPUs (5 cores) fit, the emulator core does not
    with pytest.raises(PlanError) as info:
        planned(fleet_data({"count": 1, "vcpus": 20, "memory": "8GiB", "numa_nodes": 2}, hosts=("a",)), server1s("a"))
    text = str(info.value)
    assert "\n" not in text
    assert text == (
        "red-worker-1: no worker host left with 5 free cores and 4GiB free on each of 2 NUMA nodes "
        "(6 on one of them, for the emulator core) (a: room for a share on nodes 0,1, but for the first, with the "
        "emulator core, on none)"
    )


@pytest.mark.parametrize(
    ("size", "needle"),
    [
        (
            {"vcpus": 7, "memory": "8GiB", "numa_nodes": 2},
            "clusters[0].workers: numa_nodes: 2 needs vcpus divisible by 2 (an equal share per node), got 7",
        ),
        (
            {"vcpus": 6, "memory": "3GiB", "numa_nodes": 2, "hugepages": "1G"},
            "clusters[0].workers: numa_nodes: 2 needs memory that splits into 2 equal shares of whole 1048576 KiB",
        ),
        ({"vcpus": 6, "memory": "8GiB", "numa_nodes": 0}, "numa_nodes: Expected `int` >= 1"),
    ],
)
def test_a_size_that_does_not_split_is_refused(size: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpecError) as info:
        fleet_from_data(fleet_data({"count": 1, **size}), "fleet.yaml")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_the_placement_file_keeps_the_nodes_and_a_kept_vm_stays() -> None:
    data = fleet_data({"count": 1, "vcpus": 8, "memory": "8GiB", "numa_nodes": 2})
    topos = server1s("a", "b")
    first = planned(data, topos)
    text = json.dumps(placement_to_dict(first))
    entry = json.loads(text)["vms"][0]
    assert (entry["numa_node"], entry["numa_nodes"]) == (0, [0, 1])
    read = placement_from_dict(json.loads(text), "placement.json")
    assert read.vm("red-worker-1").nodes == (0, 1)
    data["clusters"][0]["workers"]["count"] = 2
    again = planned(data, topos, read)
    assert again.vm("red-worker-1").nodes == (0, 1) and again.vm("red-worker-1").host == "a"
    data["clusters"][0]["workers"]["numa_nodes"] = 1
    with pytest.raises(PlanError) as info:
        planned(data, topos, read)
    assert str(info.value) == (
        "red-worker-1 is placed on a NUMA nodes 0,1, but its size now asks for numa_nodes: 1; remove it from the "
        "placement file to let bmslice place it afresh (the VM is then rebuilt)"
    )


def test_with_allow_move_a_kept_vm_stays_on_its_nodes_in_their_recorded_order() -> None:
    # The host planner may give the shares after the first in any order (here 0, 3, 1). On the
    # four-node host a (3 free cores a node) green-worker-2 needs a free node (3 cores) and may
    # not join green-worker-1 on b (max_per_host 1): blue-worker-1 moves to b, the one move
    # there is. red-worker-1 cannot help (it spans 3 nodes, b has 2) and stays, in its order.
    three = {"count": 1, "vcpus": 6, "memory": "3GiB", "numa_nodes": 3, "emulator": "dedicated"}
    three_cores = {"vcpus": 6, "memory": "1GiB", "emulator": "host"}
    data = fleet_data(three)
    data["clusters"] += [
        {"name": "blue", "vlan": 200, "workers": {"count": 1, **three_cores}},
        {"name": "green", "vlan": 300, "workers": {"count": 2, **three_cores}},
    ]
    fleet = fleet_from_data(data, "fleet.yaml")
    topos = {"a": four_nodes(), "b": SHAPES["server1"]()}
    kept = Placement(
        (
            PlacedVm("red-worker-1", "red", Role.WORKER, 1, "a", 0, numa_nodes=(0, 3, 1)),
            PlacedVm("blue-worker-1", "blue", Role.WORKER, 1, "a", 2),
            PlacedVm("green-worker-1", "green", Role.WORKER, 1, "b", 0),
        )
    )
    with pytest.raises(PlanError):
        place(fleet, topos, kept)
    moved = place(fleet, topos, kept, allow_move=True)
    assert moved.moved == ("blue-worker-1",) and moved.proven_optimal
    assert (moved.vm("red-worker-1").host, moved.vm("red-worker-1").nodes) == ("a", (0, 3, 1))


@pytest.mark.parametrize("nodes", [[1, 0], [0], [0, 0]])
def test_a_placement_file_with_bad_nodes_is_refused(nodes: list[int]) -> None:
    data = placement_to_dict(
        planned(fleet_data({"count": 1, "vcpus": 8, "memory": "8GiB", "numa_nodes": 2}, hosts=("a",)), server1s("a"))
    )
    data["vms"][0]["numa_nodes"] = nodes
    with pytest.raises(SpecError) as info:
        placement_from_dict(data, "placement.json")
    assert str(info.value) == (
        f"placement.json: VM 'red-worker-1': numa_nodes {nodes} must be two or more distinct nodes, numa_node (0) first"
    )


def test_labels_cloud_init_and_spec_name_the_nodes() -> None:
    data = fleet_data({"count": 1, "vcpus": 8, "memory": "8GiB", "numa_nodes": 2, "hugepages": "2M"}, hosts=("a",))
    fleet, topos = fleet_from_data(data, "fleet.yaml"), server1s("a")
    placement = place(fleet, topos)
    vm = placement.vm("red-worker-1")
    labels = node_labels(fleet, vm)
    assert labels["bmslice.io/numa-nodes"] == "0_1" and "bmslice.io/numa-node" not in labels
    files = render_fleet(fleet, placement, [], "fleet.yaml")
    user_data = files["hosts/a/guests/red-worker-1.user-data.yaml"]
    assert "on a NUMA nodes 0,1 (2 guest NUMA cells)." in user_data
    spec = yaml.safe_load(files["hosts/a/spec.yaml"])
    assert spec["vms"][0]["numa_nodes"] == 2 and spec["vms"][0]["hugepages"] == "2M"
