"""Scenario: a guest over both of the lab's NUMA nodes (issue 14, section 3), on a real kernel.

`numa_nodes: 2` gives the VM one share on each node. On the lab's real libvirtd and QEMU:
the guest starts; its memory is bound per cell (each guest cell's RAM is a memory backend
bound to its own host node, as the kernel's /proc/<pid>/numa_maps shows); and the VF it
takes from node 1's NIC hangs off a PCIe expander bus that QEMU puts on guest NUMA node 1
(QEMU's own command line, which libvirt built from bmslice's XML). verify exits 0.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

from lab import labctl, specs
from lab.conftest import Lab

QEMU = "qemu:///system"
VM = "lab-numa"

# The VM's QEMU: its command line (NUL-separated) and the NUMA policy of each mapping.
FACTS = r"""
pid=$(cat /run/libvirt/qemu/lab-numa.pid)
tr '\0' '\n' < /proc/$pid/cmdline > /tmp/lab-numa.cmdline
echo "--- numa_maps"
cat /proc/$pid/numa_maps
echo "--- cmdline"
cat /tmp/lab-numa.cmdline
"""


def _devices(cmdline: list[str]) -> list[dict[str, object]]:
    """QEMU's -device arguments (libvirt passes JSON)."""
    out = []
    for flag, value in itertools.pairwise(cmdline):
        if flag == "-device" and value.startswith("{"):
            out.append(json.loads(value))
    return out


def test_a_guest_over_two_nodes(lab: Lab, tmp_path: Path) -> None:
    lab.ensure()
    spec = {
        "host": specs.HOST,
        "vms": [
            {
                "name": VM,
                "vcpus": 4,
                "memory": "256MiB",
                "numa_nodes": 2,
                "nics": [{"sriov": {"pf": specs.PT_NIC, "vlan": 300, "count": 1}}],
            }
        ],
    }
    path = specs.write(tmp_path, "multinode.yaml", spec)
    plan = labctl.bmslice("plan", path.name, "--json", files=[path]).expect().json()
    [vm] = plan["vms"]
    assert sorted(vm["numa_nodes"]) == [0, 1] and [c["node"] for c in vm["cells"]] == vm["numa_nodes"], vm
    cell_of = {c["node"]: i for i, c in enumerate(vm["cells"])}
    [vf] = vm["devices"]
    assert vf["numa_node"] == 1, vf
    applied = labctl.bmslice("apply", path.name, "--connect", QEMU, files=[path], timeout=1500)
    try:
        applied.expect()
        labctl.say(f"checked: {VM} over nodes 0 and 1 applied and runs")
        facts = labctl.sh(FACTS).expect().out
        numa_maps, cmdline_text = facts.split("--- cmdline\n")
        # Each cell's RAM: a 128 MiB mapping bound to its own node (N<node>= counts its pages there).
        bound = re.findall(r"^\S+ bind:(\d+) .*?\bN(\d+)=(\d+)", numa_maps, re.M)
        big = {(policy, node) for policy, node, pages in bound if int(pages) * 4 >= 16 * 1024}
        assert {("0", "0"), ("1", "1")} <= big, f"memory not bound per cell:\n{numa_maps[-3000:]}"
        labctl.say(
            f"checked: guest cell {cell_of[0]}'s memory bound to host node 0, cell {cell_of[1]}'s to node 1 (numa_maps)"
        )

        devices = _devices(cmdline_text.split("\n"))
        by_id = {str(d.get("id")): d for d in devices}
        [vfio] = [
            d for d in devices if d.get("driver") == "vfio-pci" and str(d.get("host")).endswith(vf["address"][5:])
        ]
        port = by_id[str(vfio["bus"])]
        expander = by_id[str(port["bus"])]
        assert expander["driver"] == "pxb-pcie" and expander["numa_node"] == cell_of[1], (vfio, port, expander)
        labctl.say(
            f"checked: VF {vf['address']} of node 1's NIC sits on a pxb-pcie expander QEMU gives guest NUMA node "
            f"{cell_of[1]}, the guest cell on host node 1"
        )

        labctl.bmslice("verify", path.name, "--connect", QEMU, files=[path]).expect()
        labctl.say("checked: verify exit 0 (guest cells, memnodes, the VF's cell read back from libvirt)")
    finally:
        labctl.bmslice("destroy", path.name, "--connect", QEMU, files=[path], timeout=900).expect()
