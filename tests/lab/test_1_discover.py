"""Scenario 1: `bmslice discover` on the lab's real kernel finds what the lab was booted with."""

from __future__ import annotations

from collections import Counter

from lab import labctl
from lab.conftest import Lab

IGB = ("0x8086", "0x10c9")  # Intel 82576, QEMU's igb


def test_discover_finds_the_booted_shape(lab: Lab) -> None:
    shape = lab.ensure()["shape"]
    result = labctl.bmslice("discover", "--json").expect()
    topo = result.json()

    packages = {cpu["package"] for cpu in topo["cpus"]}
    assert len(packages) == shape["sockets"], result.report()
    labctl.say(f"checked: {len(packages)} sockets")

    assert [node["id"] for node in topo["numa_nodes"]] == list(range(shape["nodes"])), result.report()
    per_node = shape["sockets"] * shape["cores_per_socket"] * shape["threads_per_core"] // shape["nodes"]
    for node in topo["numa_nodes"]:
        first = node["id"] * per_node
        assert node["cpus"] == list(range(first, first + per_node)), result.report()
    labctl.say(f"checked: {shape['nodes']} NUMA nodes of {per_node} CPUs each")

    cores = topo["cores"]
    assert len(cores) == shape["sockets"] * shape["cores_per_socket"], result.report()
    for core in cores:  # QEMU numbers a core's threads adjacently
        assert len(core["cpus"]) == shape["threads_per_core"], result.report()
        assert core["cpus"] == list(range(core["cpus"][0], core["cpus"][0] + shape["threads_per_core"]))
    labctl.say(f"checked: {len(cores)} cores, SMT sibling pairs {[c['cpus'] for c in cores[:3]]}...")

    pfs = [d for d in topo["pci_devices"] if (d["vendor"], d["device"]) == IGB]
    assert Counter(d["numa_node"] for d in pfs) == {
        node: count for node, count in enumerate(shape["sriov_nics_per_node"]) if count
    }, result.report()
    for pf in pfs:
        assert pf["iommu_group"] is not None and pf["driver"] == "igb", result.report()
        assert (pf["sriov_totalvfs"], pf["sriov_offset"], pf["sriov_stride"]) == (7, 128, 2), result.report()
        assert pf["interfaces"], result.report()
    labctl.say(
        "checked: SR-IOV NICs "
        + ", ".join(f"{pf['interfaces'][0]} on node {pf['numa_node']} group {pf['iommu_group']}" for pf in pfs)
        + "; 7 VFs, offset 128, stride 2 each"
    )

    assert topo["iommu_active"] is True, result.report()
    groups = {d["iommu_group"] for d in topo["pci_devices"]}
    assert None not in groups, result.report()
    labctl.say(f"checked: IOMMU active, {len(groups)} groups, every PCI device in one")

    mgmt = topo["default_route_interface"]
    nic = next((d for d in topo["pci_devices"] if mgmt in d["interfaces"]), None)
    assert nic is not None and nic["driver"] == "virtio-pci" and nic["numa_node"] == 0, result.report()
    labctl.say(f"checked: management NIC {mgmt} ({nic['address']}) carries the default route")
