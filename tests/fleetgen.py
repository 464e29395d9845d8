"""Generated fleets of mixed servers (in memory) for the fleet tests and benchmarks.

`mixed_fleet(hosts, seed)` builds `hosts` servers of four shapes (the design note's
server1, a 2 x 12-core SMT server with SR-IOV NICs on both sockets, a 1-socket AMD server
with 4 NUMA nodes and no SMT, a 2 x 24-core SMT server with four NICs), ~3% of them control
hosts, spread over racks of 20, plus clusters of mixed sizes and NIC kinds that fill a good
part of the fleet (bench/fleet_bench.py).

`issue_fleet(seed)` builds the placement issue's fleets: 3-12 servers of 2-4 random shapes,
Red and Blue clusters of 3 control planes and 2-40 workers each, at 50-100 % load;
`small_fleet(seed)` builds fleets of 2-4 small servers and at most ten VMs that the
exhaustive oracle (tests/fleet_oracle.py) decides in well under a second. Both vary what the
placement rules turn on: SMT or not, 1-4 NUMA nodes, NICs on various nodes with and without
SR-IOV, uncabled, bonded, default-route NICs, PFs with VFs already enabled, NICs sharing an
IOMMU group with a host device, racks, max_per_host, rack spread, control planes apart or
not. Same arguments, same fleet.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bmslice.model.fleet import Fleet, Role, fleet_from_data
from bmslice.model.spec import EmulatorPolicy
from bmslice.model.topology import HostTopology, NetInterface, PciDevice
from bmslice.plan.host import reserved_cores
from fleet_place import HAS_CONTROL_PLANES_FIELD
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


# --- the placement issue's fleets, and small ones an exhaustive oracle decides -----------------


def _random_shape(rng: random.Random, small: bool) -> HostTopology:
    """A server shape: 1-4 NUMA nodes, SMT or not, a default-route NIC and 0-4 data NICs on
    various nodes, with SR-IOV or without; now and then an uncabled-looking bond member, a PF
    with VFs already enabled, or a NIC whose IOMMU group also holds a host device."""
    if small:
        sockets, per_socket = rng.choice([(1, 1), (1, 1), (2, 1), (1, 2), (3, 1)])
        cores = per_socket * rng.randint(3, 6)
        memory = rng.choice([8192, 12288, 16384])
        data_nics = rng.randint(1, 3)
        vfs = [0, 2, 4, 8]
    else:
        sockets, per_socket = rng.choice([(1, 1), (2, 1), (2, 1), (1, 2), (2, 2), (1, 4)])
        cores = per_socket * rng.choice([8, 10, 12, 16])
        memory = rng.choice([65536, 98304, 131072, 196608])
        data_nics = rng.randint(2, 4)
        vfs = [0, 8, 16, 63, 63]
    nodes = sockets * per_socket
    threads = rng.choice([1, 2, 2])
    devices = [nic("0000:01:00.0", "eno1", 0, 1, driver="igb")]  # the management NIC
    interfaces: list[NetInterface] = []
    for i in range(data_nics):
        name = f"ens{i + 1}"
        node = rng.choice([*range(nodes), *range(nodes), None]) if nodes > 1 else rng.choice([0, 0, 0, None])
        dev = replace(
            nic(f"0000:{0x10 + i:02x}:00.0", name, node, 10 + i),
            sriov_totalvfs=rng.choice(vfs),
            sriov_offset=128,
            sriov_stride=2,
        )
        odd = rng.random()
        if odd < 0.06 and dev.sriov_totalvfs:
            dev = replace(dev, sriov_numvfs=dev.sriov_totalvfs // 2)  # VFs enabled: no longer passed through whole
        elif odd < 0.12:
            interfaces.append(NetInterface(name, dev.address, master="bond0", master_kind="bond"))
        elif odd < 0.18:
            usb = PciDevice(f"0000:{0x10 + i:02x}:00.1", "0x0c0330", "0x8086", "0x8c31", node, 10 + i, "xhci_hcd")
            devices.append(usb)  # shares the NIC's IOMMU group and stays the host's
        devices.append(dev)
    topo = synthetic(
        sockets,
        cores,
        threads,
        nodes_per_socket=per_socket,
        memory_mib_per_node=memory,
        nics=devices,
        vendor="GenuineIntel" if threads == 2 or rng.random() < 0.5 else "AuthenticAMD",
        default_route="eno1",
        numbering=rng.choice(["spread", "adjacent"]),
    )
    return replace(topo, net_interfaces=tuple(interfaces))


def _cabling(rng: random.Random, topo: HostTopology, host: str, all_of_them: bool) -> dict[str, Any]:
    """The inventory's `nics`: every data NIC cabled, or (now and then) all but one."""
    names = [d.interfaces[0] for d in topo.pci_devices if d.interfaces and d.interfaces[0] != "eno1"]
    if not all_of_them and len(names) > 1 and rng.random() < 0.2:
        names.remove(rng.choice(names))
    slot = int(host.lstrip("s"))  # "s03": PIC 3 of the leaf, one port per NIC
    return {name: {"switch": "leaf", "port": f"xe-0/{slot}/{i}"} for i, name in enumerate(names)}


def _servers(
    rng: random.Random, count: int, shapes: int, controls: int, racks: int, small: bool
) -> tuple[list[dict[str, Any]], dict[str, HostTopology]]:
    built = [_random_shape(rng, small) for _ in range(shapes)]
    picks = list(range(shapes)) + [rng.randrange(shapes) for _ in range(max(0, count - shapes))]
    rng.shuffle(picks)
    inventory: list[dict[str, Any]] = []
    topologies: dict[str, HostTopology] = {}
    for i in range(count):
        name = f"s{i:02d}"
        topo = built[picks[i]]
        entry: dict[str, Any] = {
            "name": name,
            "uri": f"qemu+ssh://root@{name}/system",
            "role": "control" if i < controls else "worker",
            "rack": f"r{rng.randrange(racks)}" if i >= racks else f"r{i % racks}",
            "nics": _cabling(rng, topo, name, all_of_them=not small),
        }
        if rng.random() < 0.25:
            entry["host"] = {
                "reserved_cores_per_node": rng.choice([0, 1, 2]),
                "reserved_memory_per_node": rng.choice([1024, 2048, 4096]),
            }
        inventory.append(entry)
        topologies[name] = topo
    return inventory, topologies


def _size(rng: random.Random, vcpus: list[int], gib_per_vcpu: list[float], nodes: int, cabled: bool) -> dict[str, Any]:
    """A VM size: vCPUs, memory, emulator, a NIC (passthrough or SR-IOV, 1-2), some over 2 nodes."""
    v = rng.choice(vcpus)
    size: dict[str, Any] = {
        "vcpus": v,
        "memory": f"{max(1024, int(v * rng.choice(gib_per_vcpu) * 1024)) // 512 * 512}MiB",
        "emulator": rng.choice(["dedicated", "host"]),
    }
    if nodes >= 2 and v % 2 == 0 and v >= 2 and rng.random() < 0.25:
        size["numa_nodes"] = 2
        size["memory"] = f"{max(1024, int(v * rng.choice(gib_per_vcpu) * 1024)) // 1024 * 1024}MiB"
    if cabled:
        size["nic"] = {"kind": rng.choice(["sriov", "sriov", "passthrough"]), "count": rng.choice([1, 1, 2])}
    return size


def _tenant_nics(entry: dict[str, Any], topo: HostTopology, ref: str) -> list[tuple[int, bool]]:
    """A rough look at the NICs a VM could get: (VFs, may go whole) of each cabled, unbonded one
    that `ref` names; whole when it has no VFs enabled and its IOMMU group holds nothing else."""
    bonded = {i.name for i in topo.net_interfaces if i.master}
    out = []
    for dev in topo.pci_devices:
        if not dev.interfaces or dev.interfaces[0] not in entry["nics"] or dev.interfaces[0] in bonded:
            continue
        if ref not in ("any", dev.interfaces[0]):
            continue
        alone = sum(d.iommu_group == dev.iommu_group for d in topo.pci_devices) == 1
        out.append((dev.sriov_totalvfs, dev.sriov_numvfs == 0 and alone))
    return out


def _nic_supply(size: dict[str, Any], servers: list[tuple[dict[str, Any], HostTopology]]) -> int:
    """Roughly how many VMs of this size the servers' NICs serve (many: no NIC asked)."""
    nic = size.get("nic")
    if nic is None:
        return 1000
    nics = [n for entry, topo in servers for n in _tenant_nics(entry, topo, nic.get("pf", "any"))]
    if nic["kind"] == "sriov":
        return sum(vfs // nic["count"] for vfs, _ in nics)
    return sum(whole for _, whole in nics) // nic["count"]


def _fits_somewhere(size: dict[str, Any], servers: list[tuple[dict[str, Any], HostTopology]]) -> bool:
    """A rough look (not the placement rules): some server has nodes with the cores and
    memory of the VM's shares and NICs of the kind it asks for."""
    k = size.get("numa_nodes", 1)
    share = size["vcpus"] // k
    memory = int(size["memory"].removesuffix("MiB")) // k
    for entry, topo in servers:
        host = entry.get("host", {})
        need = (share + 1) // 2 if topo.smt else share
        need += size["emulator"] == "dedicated"
        cores = len(topo.cores) // max(len(topo.numa_nodes), 1) - max(host.get("reserved_cores_per_node", 1), 1)
        free_memory = topo.numa_nodes[0].memory_mib - host.get("reserved_memory_per_node", 2048)
        if len(topo.numa_nodes) >= k and cores >= need and free_memory >= memory and _nic_supply(size, [(entry, topo)]):
            return True
    return False


def _size_that_fits(
    rng: random.Random, servers: list[tuple[dict[str, Any], HostTopology]], *args: Any
) -> dict[str, Any]:
    """A size (`_size(rng, *args)`) that, most of the time, some server could hold."""
    size = _size(rng, *args)
    for _ in range(30):
        if _fits_somewhere(size, servers) or rng.random() < 0.03:
            break
        size = _size(rng, *args)
    return size


def _spread(rng: random.Random, max_per_host: int, opt_out: bool) -> dict[str, Any]:
    spread: dict[str, Any] = {"max_per_host": max_per_host, "racks": rng.choice(["spread", "spread", "any"])}
    if opt_out and HAS_CONTROL_PLANES_FIELD:
        spread["control_planes"] = "any"
    return spread


def small_fleet(seed: int) -> tuple[Fleet, dict[str, HostTopology]]:
    """2-4 small servers (one or two of them control hosts when a cluster has control planes),
    1-2 clusters of 0-3 control planes and 1-5 workers, ten VMs at most, at 40-110 % worker load."""
    rng = random.Random(seed)
    count = rng.randint(2, 4)
    controls = rng.choice([0, 1, 1, 2]) if count > 2 else rng.choice([0, 1])
    inventory, topologies = _servers(rng, count, rng.randint(1, min(count, 3)), controls, rng.randint(1, 3), small=True)
    servers = fleet_from_data({"inventory": inventory}, "servers")
    capacity = worker_capacity(servers, topologies)
    most_nodes = max(len([n for n in topologies[h["name"]].numa_nodes if n.cpus]) for h in inventory[controls:])
    names = ["red", "blue"][: rng.choice([1, 2, 2])]
    target = rng.uniform(0.25, 0.8) / len(names)
    by_role = {
        role: [(h, topologies[h["name"]]) for h in inventory if h["role"] == role] for role in ("control", "worker")
    }
    clusters = []
    budget = 10
    for c, name in enumerate(names):
        planes = min(rng.randint(1, controls + (rng.random() < 0.2)), 3) if controls else 0
        with_nic = rng.random() < 0.5
        control = [
            _size_that_fits(rng, by_role["control"], [1, 2, 2, 3], [0.5, 1], 1, with_nic) for _ in range(planes)
        ][:budget]
        budget -= len(control)
        size = _size_that_fits(
            rng, by_role["worker"], [1, 2, 2, 3, 4, 4, 6], [0.5, 1, 2], most_nodes, rng.random() < 0.7
        )
        if "nic" in size and rng.random() < 0.1:
            size["nic"]["pf"] = rng.choice(["ens1", "ens2"])
        wanted = round(target / _size_load(capacity, size, 1))
        workers = min(max(wanted, 1), 5, budget, _nic_supply(size, by_role["worker"]) + rng.choice([0, 0, 0, 1]))
        workers = max(workers, 1)
        budget -= workers
        clusters.append(
            {
                "name": name,
                "vlan": 100 + c,
                "control_plane": control,
                "workers": {"count": workers, **size},
                "spread": _spread(rng, rng.choice([1, 2, 2, 3, 4]), opt_out=rng.random() < 0.25),
            }
        )
    return fleet_from_data({"inventory": inventory, "clusters": clusters}, f"small-{seed}"), topologies


@dataclass(frozen=True)
class Capacity:
    """Free whole cores (two-thread and one-thread) and free MiB of a fleet's worker hosts."""

    twos: int
    ones: int
    memory_mib: int

    def load(self, vcpus: int, numa_nodes: int, dedicated: bool, memory_mib: int, count: int) -> float:
        """What `count` VMs of this size ask of it: the larger of whole cores (on a two-thread core
        a share's vCPU pair takes one core, on a one-thread core two; the dedicated emulator core
        a whole one; mixed as the capacity is) and memory."""
        share = vcpus // numa_nodes
        on_twos = numa_nodes * ((share + 1) // 2) + dedicated
        on_ones = vcpus + dedicated
        cores = self.twos + self.ones
        per_vm = (self.twos * on_twos + self.ones * on_ones) / max(cores, 1)
        return max(count * per_vm / max(cores, 1), count * memory_mib / max(self.memory_mib, 1))


def worker_capacity(fleet: Fleet, topologies: Mapping[str, HostTopology]) -> Capacity:
    """Free whole cores and MiB of the worker hosts (after what each host keeps)."""
    twos = ones = memory = 0
    for inv in fleet.inventory:
        if inv.role is not Role.WORKER:
            continue
        topo = topologies[inv.name]
        kept = {cpu for core in reserved_cores(topo, inv.host) for cpu in core.cpus}
        free = [core for core in topo.cores if not set(core.cpus) & kept]
        twos += sum(core.threads == 2 for core in free)
        ones += sum(core.threads == 1 for core in free)
        memory += sum(n.memory_mib - inv.host.reserved_memory_per_node for n in topo.numa_nodes if n.cpus)
    return Capacity(twos, ones, memory)


def _size_load(capacity: Capacity, size: dict[str, Any], count: int) -> float:
    memory = int(size["memory"].removesuffix("MiB"))
    dedicated = size["emulator"] == "dedicated"
    return capacity.load(size["vcpus"], size.get("numa_nodes", 1), dedicated, memory, count)


def fleet_load(fleet: Fleet, topologies: Mapping[str, HostTopology]) -> float:
    """Worker demand over worker capacity (`Capacity.load`), summed over the clusters."""
    capacity = worker_capacity(fleet, topologies)
    return sum(
        capacity.load(w.vcpus, w.numa_nodes, w.emulator is EmulatorPolicy.DEDICATED, w.memory, w.count)
        for w in (c.workers for c in fleet.clusters)
    )


def issue_fleet(seed: int) -> tuple[Fleet, dict[str, HostTopology]]:
    """3-12 servers of 2-4 shapes over 1-4 racks (3 of them control hosts, 1-2 of 3-4); Red and Blue, each
    3 control planes and 2-40 workers of its own size, together at 50-100 % worker load."""
    rng = random.Random(seed)
    count = rng.randint(3, 12)
    controls = 3 if count >= 5 else rng.choice([1, 2][: count - 2])
    inventory, topologies = _servers(
        rng, count, rng.randint(2, min(4, count)), controls, rng.randint(1, 4), small=False
    )
    capacity = worker_capacity(fleet_from_data({"inventory": inventory}, "servers"), topologies)
    worker_hosts = count - controls
    by_role = {
        role: [(h, topologies[h["name"]]) for h in inventory if h["role"] == role] for role in ("control", "worker")
    }
    most_nodes = max(len([n for n in topologies[h["name"]].numa_nodes if n.cpus]) for h in inventory[controls:])
    target = rng.uniform(0.5, 1.0)
    share = rng.uniform(0.3, 0.7)  # of the load, Red's
    clusters = []
    for c, (name, part) in enumerate([("red", share), ("blue", 1 - share)]):
        for _ in range(100):  # a size that makes 2-40 workers of this cluster's part of the load
            size = _size_that_fits(
                rng, by_role["worker"], [2, 3, 4, 4, 6, 8, 8, 10, 12, 16], [0.5, 1, 2, 4], most_nodes, True
            )
            workers = round(part * target / _size_load(capacity, size, 1))
            if 2 <= workers <= 40 and (not clusters or clusters[0]["workers"]["vcpus"] != size["vcpus"]):
                break
        workers = min(max(workers, 2), 40)
        if _nic_supply(size, by_role["worker"]) < workers and rng.random() < 0.8:
            size["nic"] = {"kind": "sriov", "count": 1}  # more NICs than the servers have: one VF instead
            if _nic_supply(size, by_role["worker"]) < workers:
                del size["nic"]
        control = []
        for _ in range(3):
            cp = _size(rng, [2, 2, 4], [1, 2], 1, True)
            cp["nic"] = {"kind": "sriov", "count": 1}
            if not _fits_somewhere(cp, by_role["control"]):
                del cp["nic"]  # no control host has a VF to give
            control.append(cp)
        fewest = math.ceil(workers / max(worker_hosts, 1))
        clusters.append(
            {
                "name": name,
                "vlan": 100 + c,
                "control_plane": control,
                "workers": {"count": workers, **size},
                "spread": _spread(
                    rng, fewest + rng.choice([0, 1, 2, 2, 8]), opt_out=controls < 3 and rng.random() < 0.7
                ),
            }
        )
    return fleet_from_data({"inventory": inventory, "clusters": clusters}, f"issue-{seed}"), topologies


def grown(fleet: Fleet, cluster: str, more: int = 1) -> Fleet:
    """The fleet with `more` workers added to `cluster` (the new ones get the next indices)."""
    from bmslice.fleet.capacity import with_more_workers

    return with_more_workers(fleet, cluster, more)
