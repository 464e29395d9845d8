"""`bmslice lab up --like`: a lab shaped after a discovered host — the design note's server, from
its committed host tree — says what it scaled down, and the lab's kernel shows that shape."""

from __future__ import annotations

from collections import Counter

from lab import labctl
from lab.conftest import Lab

SERVER1 = str(labctl.REPO / "examples/server1/host")


def test_a_lab_shaped_like_the_design_notes_server(lab: Lab) -> None:
    info = lab.ensure(like=SERVER1)
    shape = info["shape"]
    # 2 sockets of 6 cores x 2 threads, 2 nodes; eno1-eno4 all on node 0 and SR-IOV capable
    assert (shape["sockets"], shape["threads_per_core"], shape["nodes"]) == (2, 2, 2), shape
    assert shape["cores_per_socket"] == 4 and shape["sriov_nics_per_node"] == [2, 0], shape
    said = info["up_stdout"]
    assert "scaled down: cores per socket 6 -> 4" in said and "scaled down: node 0: 4 SR-IOV NICs -> 2" in said, said
    labctl.say(f"checked: lab up --like says what it scaled down ({len(info['scaled_down'])} notes)")

    topo = labctl.bmslice("discover", "--json").expect().json()
    assert len({cpu["package"] for cpu in topo["cpus"]}) == 2 and len(topo["numa_nodes"]) == 2
    assert len(topo["cores"]) == 8 and all(len(core["cpus"]) == 2 for core in topo["cores"]), topo["cores"]
    igbs = [d for d in topo["pci_devices"] if d["sriov_totalvfs"] == 7]
    assert Counter(d["numa_node"] for d in igbs) == {0: 2}, igbs
    labctl.say("checked: its kernel shows 2 sockets, 2 nodes, 8 cores of 2 threads, 2 SR-IOV NICs on node 0")
