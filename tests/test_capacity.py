"""bmslice capacity: how many more VMs of a shape fit beside the running slices.

The count is the planner's: on random small hosts (hypothesis) the planner itself plans exactly
that many more copies and refuses one more, and the independent brute-force oracle
(tests/oracle.py, no code shared with bmslice.plan) agrees on both. Then the answers on the
design note's server and its kernel-4.15 tree, NICs handed out to copies, and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bmslice.cli import capacity_cmd
from bmslice.errors import PlanError
from bmslice.model.input_file import validated
from bmslice.model.plan import Plan
from bmslice.model.shapes import parse_vm_shape
from bmslice.model.spec import Spec, VmSpec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from bmslice.plan.room import MIX, asked_shapes, free_room, spec_shapes
from oracle import best_layout
from topologies import nic, synthetic

REPO = Path(__file__).resolve().parents[1]
SERVER1 = ["examples/server1/spec.yaml", "--host-root", "examples/server1/host"]


@st.composite
def cases(draw: st.DrawFn) -> tuple[HostTopology, Spec, dict[str, Any]]:
    """A host of 1-2 nodes of 3-4 cores (SMT or not), 0-2 VMs already planned, and a shape."""
    sockets = draw(st.integers(1, 2))
    topo = synthetic(
        sockets=sockets,
        cores=draw(st.integers(3, 4)),
        threads=draw(st.sampled_from([1, 2])),
        memory_mib_per_node=draw(st.sampled_from([6144, 8192, 12288])),
    )

    def vm(name: str, most_vcpus: int) -> dict[str, Any]:
        return {
            "name": name,
            "vcpus": draw(st.integers(1, most_vcpus)),
            "memory": draw(st.sampled_from([512, 1024, 1536])),
            "emulator": draw(st.sampled_from(["dedicated", "host"])),
        }

    running = [vm(f"run{i}", 2) for i in range(draw(st.integers(0, 2)))]
    host = {"reserved_cores_per_node": draw(st.integers(0, 1)), "reserved_memory_per_node": 1024}
    shape = vm("shape", 3)  # the spec's last VM: its copies are counted
    return topo, spec_from_data({"host": host, "vms": [*running, shape]}, "case.yaml"), shape


def planned_base(topo: HostTopology, spec: Spec) -> Plan:
    """The spec's plan; a case whose VMs do not fit the host is not a case (nothing runs to count around)."""
    try:
        return make_plan(topo, spec, "case.yaml")
    except PlanError:
        assume(False)
        raise


def copies(shape: dict[str, Any], n: int) -> tuple[VmSpec, ...]:
    """The test's own n copies of the shape (not the module's)."""
    return tuple(validated({**shape, "name": f"copy{i}"}, VmSpec, "shape") for i in range(n))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_the_count_is_planned_and_one_more_is_refused(case: tuple[HostTopology, Spec, dict[str, Any]]) -> None:
    topo, spec, shape = case
    base = planned_base(topo, spec)
    room = next(r for r in free_room(topo, spec, base, spec_shapes(spec), "case.yaml").shapes if "shape" in r.shape)
    n = room.more

    def with_copies(k: int) -> Spec:
        return Spec(host=spec.host, vms=(*spec.vms, *copies(shape, k)))

    planned = make_plan(topo, with_copies(n), "case.yaml", base.vms)
    assert len(room.vms) == n and len(planned.vms) == len(spec.vms) + n
    with pytest.raises(PlanError):
        make_plan(topo, with_copies(n + 1), "case.yaml", base.vms)
    # the oracle, which shares no code with the planner, agrees on both counts
    assert best_layout(topo, with_copies(n), base.vms) is not None
    assert best_layout(topo, with_copies(n + 1), base.vms) is None
    assert room.refusal and room.limits  # one more is refused, and something ran out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_each_node_alone_takes_at_most_the_whole_count(case: tuple[HostTopology, Spec, dict[str, Any]]) -> None:
    topo, spec, _ = case
    base = planned_base(topo, spec)
    room = free_room(topo, spec, base, spec_shapes(spec), "case.yaml", per_node=True)
    more = {r.shape: r.more for r in room.shapes}
    for node in room.nodes:
        for shape, count in node.fits:
            assert 0 <= count <= more[shape]
    for shape, total in more.items():
        if shape != MIX:
            # copies that fit node by node fit together only if each node's room is its own: at least the best node
            assert total >= max((dict(n.fits).get(shape, 0) for n in room.nodes), default=0)


def test_the_design_notes_server_is_full_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert capacity_cmd.main(["capacity", *SERVER1]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "capacity of server1 for examples/server1/spec.yaml (kept where they are: Red_k8s_cluster_worker1, "
        "Blue_k8s_cluster_worker1)"
    )
    assert "Red_k8s_cluster_worker1, Blue_k8s_cluster_worker1: 0 more fit; runs out first: cores" in out
    assert (
        "  one more is refused: Red_k8s_cluster_worker1+1 needs 5 whole cores on one NUMA node; "
        "the most free on any node is 0 (node 0)" in out
    )
    # the mix (one Red and one Blue more) needs two free NICs as well: the host can pass one through (eno4)
    assert "mix: 0 sets of one of each VM fit; runs out first: whole NICs and cores" in out


def test_a_host_with_room_says_where_the_next_vm_goes(capsys: pytest.CaptureFixture[str]) -> None:
    """The note's server on its 4.15 kernel with a third worker on VFs: node 1 has one core left."""
    args = ["tests/data/server1-kernel4.15-vfs.yaml", "--host-root", "tests/data/trees/server1-kernel4.15"]
    assert capacity_cmd.main(["capacity", *args, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    green = next(s for s in answer["shapes"] if s["shape"] == "Green_k8s_cluster_worker1")
    assert green["more"] == 1 and green["runs_out_first"] == ["cores"]
    assert green["vms"] == [
        {
            "name": "Green_k8s_cluster_worker1+1",
            "numa_nodes": [1],
            "l3_domains": [],
            "cores": [[11, 23]],
            "nics": ["VF 2 of eno2 (VLAN 300)"],
        }
    ]
    assert [(n["node"], n["free_cores"], n["fits"]["Green_k8s_cluster_worker1"]) for n in answer["nodes"]] == [
        (0, 0, 0),
        (1, 1, 1),
    ]


def test_copies_take_free_whole_nics_in_turn_and_run_out_of_them() -> None:
    """8 cores a node, 3 free NICs: a worker passing one through fits 3 times, one NIC each, local first."""
    nics = [nic("0000:10:00.0", "ens0", 0, 10), nic("0000:11:00.0", "ens1", 0, 11), nic("0000:12:00.0", "ens2", 1, 12)]
    nics.append(nic("0000:13:00.0", "ens3", 1, 13))
    topo = synthetic(sockets=2, cores=8, threads=2, memory_mib_per_node=65536, nics=nics)
    spec = spec_from_data(
        {"vms": [{"name": "du", "vcpus": 2, "memory": "4GiB", "nics": [{"passthrough": "ens3"}]}]}, "s"
    )
    base = make_plan(topo, spec, "s")
    room = free_room(topo, spec, base, spec_shapes(spec), "s").shapes[0]
    assert room.more == 3 and room.limits == ("whole NICs",)
    given = [d.interface for vm in room.vms for d in vm.devices]
    assert sorted(given) == ["ens0", "ens1", "ens2"]
    assert all(d.numa_node in vm.numa_nodes for vm in room.vms for d in vm.devices)  # each copy beside its NIC
    assert room.refusal == "4 more need 4 free whole NICs; the host can pass through 3 more (ens0, ens2, ens1)"


def test_vm_shapes_with_vfs_and_their_mix() -> None:
    nics = [nic("0000:10:00.0", "ens0", 0, 10), nic("0000:12:00.0", "ens2", 1, 12)]
    topo = synthetic(sockets=2, cores=5, threads=2, memory_mib_per_node=65536, nics=nics)
    spec = spec_from_data({"vms": [{"name": "a", "vcpus": 2, "memory": "2GiB"}]}, "s")
    base = make_plan(topo, spec, "s")
    shapes = asked_shapes([parse_vm_shape("2:2GiB:vf"), parse_vm_shape("2:2GiB:pt")])
    rooms = {r.shape: r for r in free_room(topo, spec, base, shapes, "s").shapes}
    # 5 cores a node, the host keeps one, `a` takes 2 on node 0: 2 + 4 free cores, 2 a VM (vCPU pair, emulator)
    assert rooms["2:2GiB:vf"].more == 3 and rooms["2:2GiB:vf"].limits == ("cores",)
    assert rooms["2:2GiB:pt"].more == 2 and rooms["2:2GiB:pt"].limits == ("whole NICs",)
    assert all(d.type == "vf" for vm in rooms["2:2GiB:vf"].vms for d in vm.devices)
    # one of each takes a NIC whole and VFs of the other: one set fits; a second would need the two NICs
    # whole, leaving none for VFs, and 8 cores of the 6 left
    assert rooms[MIX].more == 1 and rooms[MIX].limits == ("VFs and cores",)
    vf_pf = next(d.pf for vm in rooms[MIX].vms for d in vm.devices if d.type == "vf")
    whole = next(d.address for vm in rooms[MIX].vms for d in vm.devices if d.type == "passthrough")
    assert vf_pf != whole


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("8:8GiBB", "error: --vm '8:8GiBB': memory: expected a size such as 8GiB or 512MiB, got '8GiBB'"),
        ("0:8GiB", "error: --vm '0:8GiB': vCPUs must be from 1 to 4096, got 0"),
        ("8", "error: --vm '8': expected VCPUS:MEMORY[:NICS]"),
        ("8:8GiB:vf=eth0\n", "error: --vm '8:8GiB:vf=eth0\\n': expected VCPUS:MEMORY[:NICS]"),
        ("8:8GiB:nic", "error: --vm '8:8GiB:nic': expected VCPUS:MEMORY[:NICS]"),
    ],
)
def test_a_bad_shape_is_one_line(value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert capacity_cmd.main(["capacity", *SERVER1, "--vm", value]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1, err


def test_the_picture_and_the_report_show_each_nodes_room(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lxml import html

    from bmslice.cli import show_cmd

    args = ["tests/data/server1-kernel4.15-vfs.yaml", "--host-root", "tests/data/trees/server1-kernel4.15"]
    assert show_cmd.main(["show", *args]) == 0
    out = capsys.readouterr().out
    # A, B, C: Red, Blue, Green; node 1 has one core left, room for one more Green
    assert "│ room: 0 free cores, 18GiB · more fit here: A 0, B 0, C 0" in out
    assert "│ room: 1 free core, 22GiB · more fit here: A 0, B 0, C 1" in out
    assert "room: 1 more C fit on the host; runs out first: cores\n" in out
    assert "room: 0 more sets of one of each VM fit on the host; runs out first: cores\n" in out

    report = tmp_path / "report.html"
    assert show_cmd.main(["show", *args, "--html", str(report)]) == 0
    page = html.fromstring(report.read_bytes())
    assert [h.text for h in page.iter("h2")][-2:] == ["Free room", "Pins"]
    rows = [[td.text_content() for td in tr.iter("td")] for tr in page.find_class("room")[0].iter("tr")][1:]
    assert rows == [["0", "0", "18GiB", "A 0, B 0, C 0"], ["1", "1", "22GiB", "A 0, B 0, C 1"]]
    shapes = [[td.text_content() for td in tr.iter("td")] for tr in page.find_class("shapes")[0].iter("tr")][1:]
    assert shapes[2][:3] == ["C (Green_k8s_cluster_worker1)", "1", "cores"]
    assert shapes[3][:2] == ["one of each VM", "0"]
