"""In-memory HostTopology builders for planner tests (fast enough for hypothesis).

Disk trees (tests/treebuilder.py) test discovery; these test planning.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from bmslice.cpuset import CpuSet
from bmslice.model.spec import Spec, spec_from_data
from bmslice.model.topology import CacheDomain, Cpu, HostTopology, NumaNode, PciDevice, Resctrl


def synthetic(
    sockets: int = 2,
    cores: int = 6,
    threads: int = 2,
    nodes_per_socket: int = 1,
    numbering: str = "spread",
    memory_mib_per_node: int = 32768,
    offline: Sequence[int] = (),
    nics: Sequence[PciDevice] = (),
    vendor: str = "GenuineIntel",
    cmdline: str = "root=/dev/sda1 ro",
    default_route: str | None = None,
    cores_per_l3: int | None = None,
    l3_kib: int = 32768,
    resctrl: Resctrl | None = None,
) -> HostTopology:
    """A machine with `sockets` x `cores` x `threads`.

    cores_per_l3: each socket's cores, in order, share an L3 of `l3_kib` in groups of that
    many (an EPYC CCX/CCD; a group may straddle two nodes, as under sub-NUMA clustering).

    numbering "spread": siblings are N and N + total cores (Intel);
    "adjacent": siblings N, N+1; "interleaved": the design note's server, where socket s
    holds CPUs s, s+sockets, ... (node 0 even, node 1 odd) and siblings are N, N + total cores.
    """
    total_cores = sockets * cores
    cpu_ids: dict[tuple[int, int, int], int] = {}
    for s in range(sockets):
        for c in range(cores):
            for t in range(threads):
                if numbering == "adjacent":
                    cpu = (s * cores + c) * threads + t
                elif numbering == "interleaved":
                    cpu = c * sockets + s + t * total_cores
                else:
                    cpu = s * cores + c + t * total_cores
                cpu_ids[(s, c, t)] = cpu
    cores_per_node = cores // nodes_per_socket
    cpus: list[Cpu] = []
    node_cpus: dict[int, set[int]] = {}
    for (s, c, _t), cpu in cpu_ids.items():
        node = s * nodes_per_socket + min(c // cores_per_node, nodes_per_socket - 1)
        siblings = CpuSet.from_iter(cpu_ids[(s, c, t)] for t in range(threads) if cpu_ids[(s, c, t)] not in offline)
        online = cpu not in offline
        cpus.append(Cpu(cpu, s, c, node, siblings if online else CpuSet.of(cpu), online))
        node_cpus.setdefault(node, set()).add(cpu)
    nodes = tuple(
        NumaNode(n, CpuSet.from_iter(ids), memory_mib_per_node, memory_mib_per_node)
        for n, ids in sorted(node_cpus.items())
    )
    l3: list[CacheDomain] = []
    if cores_per_l3:
        for s in range(sockets):
            for start in range(0, cores, cores_per_l3):
                ids = [
                    cpu_ids[(s, c, t)]
                    for c in range(start, min(start + cores_per_l3, cores))
                    for t in range(threads)
                    if cpu_ids[(s, c, t)] not in offline
                ]
                members = CpuSet.from_iter(ids)
                owners = {cpu.node for cpu in cpus if cpu.id in members}
                l3.append(CacheDomain(len(l3), members, l3_kib, owners.pop() if len(owners) == 1 else None))
    return HostTopology(
        cpu_vendor=vendor,
        kernel_cmdline=cmdline,
        default_route_interface=default_route,
        cpus=tuple(sorted(cpus, key=lambda c: c.id)),
        numa_nodes=nodes,
        pci_devices=tuple(nics),
        iommu_active=True,
        source="synthetic",
        l3_domains=tuple(l3),
        resctrl=resctrl,
    )


def nic(address: str, name: str, node: int | None, group: int, driver: str = "ixgbe", vfs: int = 0) -> PciDevice:
    return PciDevice(
        address=address,
        class_code="0x020000",
        vendor="0x8086",
        device="0x1528",
        numa_node=node,
        iommu_group=group,
        driver=driver,
        interfaces=(name,),
        sriov_totalvfs=63,
        sriov_numvfs=vfs,
    )


def server1(**kwargs: object) -> HostTopology:
    """The design note's server1, in memory (the disk tree is examples/server1/host)."""
    nics = (
        nic("0000:01:00.0", "eno1", 0, 25),
        nic("0000:01:00.1", "eno2", 0, 26),
        nic("0000:08:00.0", "eno3", 0, 30, driver="igb"),
        nic("0000:08:00.1", "eno4", 0, 31, driver="igb"),
    )
    args: dict[str, object] = {
        "sockets": 2,
        "cores": 6,
        "threads": 2,
        "numbering": "interleaved",
        "nics": nics,
        "default_route": "eno3",
        "cmdline": "BOOT_IMAGE=/vmlinuz-4.15.0-20-generic root=/dev/mapper/server1--vg-root ro intel_iommu=on",
    }
    args.update(kwargs)
    return synthetic(**args)  # type: ignore[arg-type]


def _random_host(
    rng: random.Random,
    sockets: int,
    per_socket: int,
    cores: int,
    offline: tuple[float, int, int],
    nics: tuple[int, int],
    memory_mib: Sequence[int],
    cores_per_l3: Sequence[int] = (),
) -> tuple[HostTopology, list[str]]:
    """A random small host of that shape and its NICs' names: SMT or not, with the odds and
    count of offline CPUs `offline` says, `nics` (fewest, most) NICs on random nodes (or none)."""
    nodes = sockets * per_socket
    threads = rng.choice([1, 2, 2])
    total = sockets * cores * threads
    odds, fewest, most = offline
    down = sorted(rng.sample(range(1, total), k=rng.randint(fewest, most))) if rng.random() < odds else []
    devices = [
        nic(f"0000:0{i + 1}:00.0", f"eth{i}", rng.choice([*range(nodes), None]), 40 + i)
        for i in range(rng.randint(*nics))
    ]
    topo = synthetic(
        sockets=sockets,
        cores=cores,
        threads=threads,
        nodes_per_socket=per_socket,
        numbering=rng.choice(["spread", "adjacent", "interleaved"]),
        memory_mib_per_node=rng.choice(list(memory_mib)),
        offline=down,
        nics=devices,
        cores_per_l3=rng.choice(list(cores_per_l3)) if cores_per_l3 else None,
    )
    return topo, [d.interfaces[0] for d in devices]


def l3_case(rng: random.Random) -> tuple[HostTopology, Spec]:
    """A small host with 2-3 L3 domains per node (some straddling two nodes) and 1-4 VMs."""
    sockets, per_socket = rng.choice([(1, 1), (2, 1), (1, 2)])
    nodes = sockets * per_socket
    cores = per_socket * rng.choice([4, 5, 6])
    topo, names = _random_host(
        rng, sockets, per_socket, cores, (0.3, 0, 2), (0, 2), [8192, 16384], cores_per_l3=(2, 2, 3)
    )
    vms: list[dict[str, Any]] = []
    for k in range(rng.randint(1, 4)):
        vm: dict[str, Any] = {
            "name": f"vm{k}",
            "vcpus": rng.choice([1, 2, 2, 3, 4, 4, 6]),
            "memory": rng.choice([512, 1024, 2048]),
            "emulator": rng.choice(["dedicated", "host"]),
        }
        if rng.random() < 0.15:
            vm["numa_node"] = rng.randrange(nodes)
        if names and rng.random() < 0.5:
            vm["nics"] = [{"passthrough": names.pop()}]
        vms.append(vm)
    host = {"reserved_cores_per_node": rng.choice([0, 1, 1]), "reserved_memory_per_node": 1024}
    return topo, spec_from_data({"host": host, "vms": vms}, "case.yaml")


def multinode_case(rng: random.Random, max_vms: int = 3) -> tuple[HostTopology, Spec]:
    """A small host of 2-4 NUMA nodes of 2-4 cores and 1-`max_vms` VMs, about half of them over
    2 or 3 nodes (numa_nodes), some with NICs, some under nic_numa_policy: require."""
    sockets, per_socket = rng.choice([(2, 1), (1, 2), (2, 2), (1, 3), (3, 1), (1, 4)])
    nodes = sockets * per_socket
    cores = per_socket * rng.randint(2, 4)
    topo, unassigned = _random_host(rng, sockets, per_socket, cores, (0.25, 1, 2), (1, 4), [6144, 8192, 12288])
    rng.shuffle(unassigned)
    vms: list[dict[str, Any]] = []
    for k in range(rng.randint(1, max_vms)):
        cells = rng.choice([1, 2, 2, min(3, nodes)])
        vm: dict[str, Any] = {
            "name": f"vm{k}",
            "vcpus": cells * rng.choice([1, 1, 2, 2, 3]),
            "memory": cells * rng.choice([512, 1024, 1024, 2048, 3072]),
            "emulator": rng.choice(["dedicated", "host"]),
        }
        if cells > 1:
            vm["numa_nodes"] = cells
        elif rng.random() < 0.25:
            vm["numa_node"] = rng.randrange(nodes)
        if unassigned and rng.random() < 0.7:
            count = rng.choice([1, 2, 2]) if len(unassigned) > 1 else 1
            vm["nics"] = [{"passthrough": unassigned.pop()} for _ in range(count)]
        vms.append(vm)
    host: dict[str, Any] = {
        "reserved_cores_per_node": rng.choice([0, 1, 1]),
        "reserved_memory_per_node": rng.choice([512, 1024]),
    }
    if rng.random() < 0.2:
        host["nic_numa_policy"] = "require"
    return topo, spec_from_data({"host": host, "vms": vms}, "case.yaml")
