"""Placement invariants over generated fleets (hypothesis).

For every fleet the placement accepts: no NUMA node of any host over its whole-core or
memory capacity (checked by the host planner itself on every generated spec), no NIC
over-committed (a passed-through PF is used once and carries no VFs; VFs per PF within
sriov_totalvfs), anti-affinity and roles respected. Placement is deterministic (also when
the inventory is listed in another order) and stable: adding a worker or a cluster keeps
every placed VM on its host, node and NICs. A refusal names the VM that found no host.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmslice.errors import PlanError
from bmslice.fleet.check import check_host
from bmslice.fleet.placement import place
from bmslice.fleet.render import render_fleet
from bmslice.model.fleet import Fleet, NicKind, Placement, fleet_from_data
from bmslice.model.topology import HostTopology
from fleetgen import SHAPES
from topologies import nic, synthetic

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def topologies(draw: st.DrawFn) -> HostTopology:
    if draw(st.booleans()):
        return SHAPES[draw(st.sampled_from(sorted(SHAPES)))]()
    sockets = draw(st.integers(1, 2))
    nodes_per_socket = draw(st.integers(1, 2))
    cores = draw(st.integers(3, 8)) * nodes_per_socket
    nodes = sockets * nodes_per_socket
    count = draw(st.integers(0, 4))
    nics = tuple(
        replace(
            nic(f"0000:{0x20 + i:02x}:00.0", f"ens{i + 1}", i % nodes, 60 + i),
            sriov_totalvfs=draw(st.sampled_from([0, 2, 8])),
            sriov_offset=128,
            sriov_stride=2,
        )
        for i in range(count)
    )
    return synthetic(
        sockets,
        cores,
        draw(st.integers(1, 2)),
        nodes_per_socket=nodes_per_socket,
        memory_mib_per_node=draw(st.sampled_from([8192, 16384, 65536])),
        nics=nics,
    )


@st.composite
def fleets(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, HostTopology]]:
    n_hosts = draw(st.integers(1, 7))
    control = n_hosts > 1 and draw(st.booleans())  # host0 is then the control host
    inventory = []
    topos = {}
    for i in range(n_hosts):
        topo = draw(topologies())
        name = f"host{i}"
        ifnames = [
            d.interfaces[0]
            for d in topo.pci_devices
            if d.interfaces and d.interfaces[0] != topo.default_route_interface
        ]
        cabled = draw(st.booleans())
        inventory.append(
            {
                "name": name,
                "uri": f"qemu+ssh://{name}/system",
                "role": "control" if i == 0 and control else "worker",
                "rack": f"r{draw(st.integers(0, 2))}",
                "nics": {f: {"switch": "sw", "port": f"xe-{i}/0/{j}"} for j, f in enumerate(ifnames)} if cabled else {},
            }
        )
        topos[name] = topo
    clusters = []
    for c in range(draw(st.integers(1, 3))):
        clusters.append(
            {
                "name": f"k{c}",
                "vlan": 100 + c,
                "control_plane": [draw(sizes()) for _ in range(draw(st.integers(0, 2)) if control else 0)],
                "workers": {"count": draw(st.integers(0, 4)), **draw(sizes())},
                "spread": {"max_per_host": draw(st.integers(1, 4)), "racks": draw(st.sampled_from(["spread", "any"]))},
            }
        )
    return {"inventory": inventory, "clusters": clusters}, topos


@st.composite
def sizes(draw: st.DrawFn) -> dict[str, Any]:
    cells = draw(st.sampled_from([1, 1, 1, 2]))  # some VMs over two NUMA nodes
    size: dict[str, Any] = {
        "vcpus": cells * draw(st.integers(1, 6 // cells)),
        "memory": f"{cells * draw(st.integers(1, 4 // cells))}GiB",
        "emulator": draw(st.sampled_from(["dedicated", "host"])),
    }
    if cells > 1:
        size["numa_nodes"] = cells
    kind = draw(st.sampled_from([None, None, "sriov", "sriov", "passthrough"]))
    if kind is not None:
        size["nic"] = {"kind": kind, "count": draw(st.sampled_from([1, 1, 2]))}
    return size


def _place(data: dict[str, Any], topos: dict[str, HostTopology], existing: Placement | None = None) -> Placement | None:
    fleet = fleet_from_data(data, "generated")
    try:
        return place(fleet, topos, existing)
    except PlanError as exc:
        _assert_names_what_it_refuses(fleet, str(exc))
        return None


def _assert_names_what_it_refuses(fleet: Fleet, text: str) -> None:
    """A refusal starts with what it is about: the VM that fits nowhere, the VMs that cannot all be
    placed together, the cluster whose rule cannot hold, or the rule."""
    head = text.split(":", 1)[0]
    names = {r.name for r in fleet.vm_requests()} | {c.name for c in fleet.clusters} | {"control planes apart"}
    if head.endswith(" cannot all be placed") or " cannot all be placed " in head:
        listed = head.split(" cannot all be placed")[0].replace(" .. ", ", ").split(", ")
        assert all(name.split(" (")[0] in names for name in listed), text
    else:
        assert head in names, text


def _assert_invariants(fleet: Fleet, topos: dict[str, HostTopology], placement: Placement) -> None:
    assert sorted(vm.name for vm in placement.vms) == sorted(r.name for r in fleet.vm_requests())
    per_host = Counter((vm.cluster, vm.role, vm.host) for vm in placement.vms)
    for (cluster, _role, _host), count in per_host.items():
        assert count <= fleet.cluster(cluster).spread.max_per_host
    vfs: Counter[tuple[str, str]] = Counter()
    passed: Counter[tuple[str, str]] = Counter()
    for vm in placement.vms:
        inv = fleet.host(vm.host)
        assert inv.role is vm.role
        for n in vm.nics:
            dev = topos[vm.host].pci(n.address)
            assert (
                dev is not None
                and dev.interfaces[0] == n.pf
                and dev.interfaces[0] != topos[vm.host].default_route_interface
            )
            assert not inv.nics or n.pf in inv.nics  # only cabled NICs when the inventory says where they go
            if n.kind is NicKind.PASSTHROUGH:
                passed[(vm.host, n.address)] += 1
            else:
                vfs[(vm.host, n.address)] += n.count
    assert all(count == 1 for count in passed.values())
    assert not set(passed) & set(vfs)
    for (host, address), count in vfs.items():
        dev = topos[host].pci(address)
        assert dev is not None and count <= dev.sriov_totalvfs
    # capacity per NUMA node, cores and memory, as the per-host planner counts it
    files = render_fleet(fleet, placement, [], "generated")
    for host in {vm.host for vm in placement.vms}:
        data = yaml.safe_load(files[f"hosts/{host}/spec.yaml"])
        check = check_host(host, data, topos[host], f"{host}/spec.yaml")
        assert check.plan.vms, check.warnings
        # every VM where the placement says, a VM over several nodes on the nodes it records
        # (unless a note says a fresh plan of the host moves a kept one: see docs/fleet.md)
        nodes = {vm.name: vm.nodes for vm in placement.on_host(host)}
        if not any(note.startswith(f"{host}: planned afresh") for note in placement.notes):
            assert {vm.name: vm.numa_nodes for vm in check.plan.vms} == nodes
        assert {vm.name: len(vm.numa_nodes) for vm in check.plan.vms} == {n: len(v) for n, v in nodes.items()}
        threads = {vm.name: vm.guest_threads for vm in placement.on_host(host)}
        assert {vm.name: vm.guest_topology.threads for vm in check.plan.vms} == threads
    used: dict[tuple[str, int], int] = defaultdict(int)
    for u in placement.usage:
        used[(u.host, u.node)] += 1
        assert u.cores_used <= u.cores_free_before and u.memory_used <= u.memory_free_before


@PROPERTY
@given(fleets())
def test_placement_holds_its_invariants(generated: tuple[dict[str, Any], dict[str, HostTopology]]) -> None:
    data, topos = generated
    placement = _place(data, topos)
    if placement is not None:
        _assert_invariants(fleet_from_data(data, "generated"), topos, placement)


@PROPERTY
@given(fleets(), st.randoms(use_true_random=False))
def test_placement_is_deterministic_whatever_the_inventory_order(
    generated: tuple[dict[str, Any], dict[str, HostTopology]], rng: Any
) -> None:
    data, topos = generated
    first = _place(data, topos)
    shuffled = {**data, "inventory": rng.sample(data["inventory"], len(data["inventory"]))}
    again = _place(shuffled, topos)
    assert (first is None) == (again is None)
    if first is not None and again is not None:
        assert first.vms == again.vms and first.usage == again.usage
        assert _place(data, topos) == first


@PROPERTY
@given(fleets(), st.integers(0, 2), st.booleans())
def test_adding_a_worker_or_a_cluster_moves_nothing(
    generated: tuple[dict[str, Any], dict[str, HostTopology]], which: int, new_cluster: bool
) -> None:
    data, topos = generated
    first = _place(data, topos)
    if first is None:
        return
    clusters = [dict(c) for c in data["clusters"]]
    if new_cluster:
        clusters.append({"name": "added", "vlan": 999, "workers": {"count": 2, "vcpus": 2, "memory": "1GiB"}})
    else:
        cluster = clusters[which % len(clusters)]
        cluster["workers"] = {**cluster["workers"], "count": cluster["workers"]["count"] + 1}
    grown = {**data, "clusters": clusters}
    again = _place(grown, topos, first)
    if again is None:
        return  # no room for the new VM: refused, never made by moving others
    for vm in first.vms:
        assert again.vm(vm.name) == vm
    _assert_invariants(fleet_from_data(grown, "generated"), topos, again)


def test_a_vm_that_no_longer_fits_where_it_is_is_refused_not_moved() -> None:
    topo = SHAPES["server1"]()
    data = {
        "inventory": [{"name": n, "uri": f"qemu+ssh://{n}/system", "role": "worker"} for n in ("a", "b")],
        "clusters": [{"name": "red", "vlan": 100, "workers": {"count": 1, "vcpus": 4, "memory": "4GiB"}}],
    }
    topos = {"a": topo, "b": topo}
    first = place(fleet_from_data(data, "t"), topos)
    assert first.vm("red-worker-1").host == "a"
    data["clusters"][0]["workers"]["vcpus"] = 12
    with pytest.raises(PlanError) as refused:
        place(fleet_from_data(data, "t"), topos, first)
    assert str(refused.value) == (
        "red-worker-1 is placed on a NUMA node 0 and no longer fits there: it needs 7 whole cores and 4GiB, "
        "the node has 5 cores and 30GiB left; remove it from the placement file to let bmslice place it afresh "
        "(the VM is then rebuilt)"
    )
