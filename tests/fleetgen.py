"""Generated fleets of mixed servers (in memory) for the fleet property tests and bench/fleet_bench.py.

`mixed_fleet(hosts, seed)` builds `hosts` servers of four shapes (the design note's
server1, a 2 x 12-core SMT server with SR-IOV NICs on both sockets, a 1-socket AMD server
with 4 NUMA nodes and no SMT, a 2 x 24-core SMT server with four NICs), ~3% of them control
hosts, spread over racks of 20, plus clusters of mixed sizes and NIC kinds that fill a good
part of the fleet. Same arguments, same fleet.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from bmslice.model.fleet import Fleet, fleet_from_data
from bmslice.model.topology import HostTopology, PciDevice
from topologies import nic, server1, synthetic


def _nics(count: int, nodes: int, vfs: int = 63) -> tuple[PciDevice, ...]:
    out = []
    for i in range(count):
        node = i * nodes // count
        dev = nic(f"0000:{0x10 + i:02x}:00.0", f"ens{i + 1}", node, 40 + i)
        out.append(replace(dev, sriov_totalvfs=vfs, sriov_offset=128, sriov_stride=2))
    return tuple(out)


def _offsets(topo: HostTopology) -> HostTopology:
    """Every SR-IOV PF with the First VF Offset and VF Stride ixgbe reports (the planner needs them)."""
    devices = tuple(
        replace(d, sriov_offset=128, sriov_stride=2) if d.sriov_totalvfs and d.sriov_offset is None else d
        for d in topo.pci_devices
    )
    return replace(topo, pci_devices=devices)


SHAPES: dict[str, Any] = {
    "server1": lambda: _offsets(server1()),
    "sr2x12": lambda: synthetic(2, 12, 2, nics=_nics(4, 2), memory_mib_per_node=65536),
    "amd1x32": lambda: synthetic(
        1, 32, 1, nodes_per_socket=4, nics=_nics(4, 4, vfs=8), vendor="AuthenticAMD", memory_mib_per_node=32768
    ),
    "big2x24": lambda: synthetic(2, 24, 2, nics=_nics(4, 2), memory_mib_per_node=196608),
}


def _nics_of(topo: HostTopology) -> list[str]:
    route = topo.default_route_interface
    return [d.interfaces[0] for d in topo.pci_devices if d.interfaces and d.interfaces[0] != route]


def mixed_fleet(
    hosts: int, seed: int = 0, clusters: int | None = None, fill: float = 0.6
) -> tuple[Fleet, dict[str, HostTopology]]:
    rng = random.Random(seed)
    shapes = sorted(SHAPES)
    inventory: list[dict[str, Any]] = []
    topologies: dict[str, HostTopology] = {}
    built: dict[str, HostTopology] = {name: SHAPES[name]() for name in shapes}  # frozen: safe to share
    controls = max(1, hosts * 3 // 100)
    ports: dict[str, int] = {}
    for i in range(hosts):
        shape = shapes[rng.randrange(len(shapes))]
        name = f"h{i:04d}"
        topo = built[shape]
        cabling = {}
        leaf = f"leaf{i // 10:03d}"  # 10 servers of at most 4 cabled NICs per 48-port leaf
        for ifname in _nics_of(topo):
            cabling[ifname] = {"switch": leaf, "port": f"xe-0/0/{ports.setdefault(leaf, 0)}"}
            ports[leaf] += 1
        inventory.append(
            {
                "name": name,
                "uri": f"qemu+ssh://root@{name}/system",
                "role": "control" if i < controls else "worker",
                "rack": f"r{i // 20:03d}",
                "nics": cabling,
            }
        )
        topologies[name] = topo
    worker_hosts = hosts - controls
    count = clusters if clusters is not None else max(2, hosts // 20)
    # Workers per cluster so that the fleet is about `fill` full (a worker host takes ~6 workers).
    per_cluster = max(1, int(worker_hosts * 6 * fill) // count)
    data_clusters = []
    for c in range(count):
        kind = "sriov" if c % 3 else "passthrough"
        vcpus = rng.choice([2, 4, 6, 8])
        data_clusters.append(
            {
                "name": f"c{c:03d}",
                "vlan": 100 + c,
                "control_plane": [{"vcpus": 2, "memory": "4GiB", "nic": {"kind": "sriov"}}],
                "workers": {
                    "count": min(per_cluster, worker_hosts * 2),
                    "vcpus": vcpus,
                    "memory": f"{vcpus * 2}GiB",
                    "emulator": "dedicated" if c % 2 else "host",
                    "nic": {"kind": kind, "count": 1},
                },
                "spread": {"max_per_host": 2, "racks": "spread"},
            }
        )
    fleet = fleet_from_data({"inventory": inventory, "clusters": data_clusters}, "generated")
    return fleet, topologies
