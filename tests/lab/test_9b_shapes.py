"""Scenario: modern server shapes on a real kernel: four NUMA nodes, several L3 caches per node.

The L3 lab is `lab up --like` an EPYC 7543-like tree (2 sockets in NPS4, 8 nodes, two 4-core
CCDs per node; SMT off, see lab/shapes.py): four nodes of two L3 caches of two cores each,
from QEMU's dies and modules with the L3 at module level.

- `lab up --like` says what it scaled down, and discovery reads the L3 domains the guest
  kernel reports (ids, CPUs, node), which match its own cache/index3/shared_cpu_list;
- an L3-aware plan: with the host's core taken from each node's first L3, a 2-vCPU VM goes
  whole into the node's other L3 (lowest-CPU-first would split it); a VM with a dedicated
  emulator core has three cores, more than any L3 holds, and the plan says so; the live
  vCPU threads' CPUs, checked against the lab kernel's shared_cpu_list, show it;
- a VM over two of the four nodes starts, each guest cell's memory bound to its host node
  (numa_maps), each share inside one L3, its VF of node 2's NIC on an expander bus QEMU puts
  on the guest cell of host node 2; verify exits 0.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from lab import labctl, specs
from lab.conftest import BOOT, FAB1, L3, SWITCH, Lane, use

QEMU = "qemu:///system"
HOST = {"reserved_cores_per_node": 1, "reserved_memory_per_node": "256MiB", "domain_type": "qemu"}
WIDE_VF = {"pf": "enp129s0", "vlan": 300, "count": 1}  # the igb on node 2 (expander bus 0x80)

# The kernel's own L3 caches: "<cpu> <cache id> <shared_cpu_list>".
CACHES = r"""
for cpu in /sys/devices/system/cpu/cpu[0-9]*; do
    echo "${cpu##*cpu} $(cat $cpu/cache/index3/id) $(cat $cpu/cache/index3/shared_cpu_list)"
done
"""

# Each slice's QEMU: its threads' names and allowed CPUs, and the NUMA policy of each mapping.
THREADS = r"""
for vm in "$@"; do
    pid=$(cat /run/libvirt/qemu/$vm.pid)
    for task in /proc/$pid/task/*; do
        echo "thread $vm $(tr ' ' _ < $task/comm) $(awk '/^Cpus_allowed_list/ {print $2}' $task/status)"
    done
    grep -E ' bind:[0-9]+ ' /proc/$pid/numa_maps | sed "s/^/map $vm /"
done
pid=$(cat /run/libvirt/qemu/l3-wide.pid)
tr '\0' '\n' < /proc/$pid/cmdline | grep '^{' | sed 's/^/device /'
"""


def spec() -> dict[str, Any]:
    vm = {"vcpus": 2, "memory": "128MiB", "emulator": "host"}
    return {
        "host": HOST,
        "vms": [
            {**vm, "name": "l3-one", "numa_node": 0},  # fits one L3 of node 0
            {**vm, "name": "l3-split", "numa_node": 3, "emulator": "dedicated"},  # 3 cores: no L3 holds them
            # a share on each of 2 nodes, a VF of the NIC on node 2
            {**vm, "name": "l3-wide", "vcpus": 4, "memory": "256MiB", "numa_nodes": 2, "nics": [{"sriov": WIDE_VF}]},
        ],
    }


def test_four_nodes_and_several_l3_caches_per_node(lane: Lane, tmp_path: Path) -> None:
    info = use(lane, L3, then=(SWITCH, FAB1), done=(BOOT,))
    shape, said = info["shape"], info["up_stdout"]
    assert (shape["nodes"], shape["dies_per_socket"], shape["modules_per_die"], shape["l3"]) == (4, 2, 2, "module")
    assert "scaled down: NUMA nodes 8 -> 4 (4 at most)" in said, said
    assert "scaled down: cores per socket 32 -> 8 (2 per L3 cache; 16 CPUs at most under TCG)" in said, said
    labctl.say("checked: lab up --like the EPYC-like tree says what it scaled down (8 -> 4 nodes, 4 -> 2 cores per L3)")

    kernel = {}
    for line in labctl.sh(CACHES, lab=L3).expect().out.splitlines():
        cpu, cache_id, shared = line.split()
        kernel[int(cpu)] = (int(cache_id), shared)
    topo = labctl.bmslice("discover", "--json", lab=L3).expect().json()
    domains = topo["l3_domains"]
    assert len(domains) == 8 and {d["node"] for d in domains} == {0, 1, 2, 3}, domains
    per_node = defaultdict(list)
    for d in domains:
        per_node[d["node"]].append(d["id"])
        assert len(d["cpus"]) == 2, d
        for cpu in d["cpus"]:
            cache_id, shared = kernel[cpu]
            assert cache_id == d["id"] and shared == f"{d['cpus'][0]}-{d['cpus'][-1]}", (d, kernel[cpu])
    assert all(len(ids) == 2 for ids in per_node.values()), per_node
    labctl.say(f"checked: discover reads 8 L3 caches, 2 per node, as the kernel's shared_cpu_list: {dict(per_node)}")

    path = specs.write(tmp_path, "l3.yaml", spec())
    plan = labctl.bmslice("plan", path.name, "--json", files=[path], lab=L3).expect().json()
    vms = {vm["name"]: vm for vm in plan["vms"]}
    l3_of = {cpu: cache_id for cpu, (cache_id, _shared) in kernel.items()}
    one = vms["l3-one"]
    assert len(one["l3_domains"]) == 1 and {l3_of[c] for c in one["vcpu_pins"]} == set(one["l3_domains"]), one
    split = vms["l3-split"]
    assert len(split["l3_domains"]) == 2, split
    assert any(w.startswith("l3-split: its 3 cores span L3 caches") for w in plan["warnings"]), plan["warnings"]
    wide = vms["l3-wide"]
    assert len(wide["numa_nodes"]) == 2 and len(wide["l3_domains"]) == 2, wide
    labctl.say(
        f"checked: the plan keeps l3-one in L3 {one['l3_domains']}, l3-wide in one L3 per node "
        f"{wide['l3_domains']}, and says why l3-split spans {split['l3_domains']}"
    )

    labctl.bmslice("apply", path.name, "--connect", QEMU, files=[path], timeout=1800, lab=L3).expect()
    seen = labctl.run("/bin/sh", "-c", THREADS, "threads", *vms, lab=L3).expect().out.splitlines()
    vcpu_cpus: dict[str, list[int]] = defaultdict(list)
    bound: dict[str, set[int]] = defaultdict(set)
    for line in seen:
        kind, vm, *rest = line.split()
        if kind == "device":
            continue
        if kind == "thread" and re.fullmatch(r"CPU_\d+/TCG", rest[0]):
            assert re.fullmatch(r"\d+", rest[1]), line  # pinned 1:1
            vcpu_cpus[vm].append(int(rest[1]))
        elif kind == "map":
            policy = next(word for word in rest if word.startswith("bind:"))
            pages = {int(n): int(p) for n, p in re.findall(r"\bN(\d+)=(\d+)", " ".join(rest))}
            if sum(pages.values()) * 4 >= 16 * 1024:  # a guest cell's RAM, not a small mapping
                bound[vm].add(int(policy.removeprefix("bind:")))
                assert set(pages) == {int(policy.removeprefix("bind:"))}, line
    assert {kernel[c][1] for c in vcpu_cpus["l3-one"]} == {kernel[vcpu_cpus["l3-one"][0]][1]}, vcpu_cpus
    assert sorted(vcpu_cpus["l3-one"]) == sorted(one["vcpu_pins"]), vcpu_cpus
    labctl.say(f"checked: l3-one's vCPU threads run on CPUs {vcpu_cpus['l3-one']}, one L3 by the kernel's own list")
    node_of = {cpu: node["id"] for node in topo["numa_nodes"] for cpu in node["cpus"]}
    shares = defaultdict(set)
    for cpu in vcpu_cpus["l3-wide"]:
        shares[node_of[cpu]].add(kernel[cpu][1])
    assert len(shares) == 2 and all(len(lists) == 1 for lists in shares.values()), shares
    assert bound["l3-wide"] == set(wide["numa_nodes"]), (bound, wide["numa_nodes"])
    labctl.say(f"checked: l3-wide runs on nodes {sorted(bound['l3-wide'])}, one L3 each, each cell's RAM bound there")
    # its VF (node 2's NIC) hangs off an expander bus QEMU puts on the guest cell of host node 2
    [vf] = wide["devices"]
    assert vf["numa_node"] == 2 and 2 in wide["numa_nodes"], wide
    qemu = [json.loads(line.split(" ", 1)[1]) for line in seen if line.startswith("device ")]
    by_id = {str(d.get("id")): d for d in qemu}
    [vfio] = [d for d in qemu if d.get("driver") == "vfio-pci" and str(d.get("host")).endswith(vf["address"][5:])]
    expander = by_id[str(by_id[str(vfio["bus"])]["bus"])]
    cell = [c["node"] for c in wide["cells"]].index(2)
    assert expander["driver"] == "pxb-pcie" and expander["numa_node"] == cell, (vfio, expander)
    labctl.say(f"checked: l3-wide's VF {vf['address']} sits on a pxb-pcie of guest cell {cell}, on host node 2")
    labctl.bmslice("verify", path.name, "--connect", QEMU, files=[path], lab=L3).expect()
    labctl.say("checked: verify exit 0")
