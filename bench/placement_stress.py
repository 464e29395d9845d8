"""Where the NUMA-placement search is slow: stress cases and reproducers for planner issues.

Run: .venv/bin/python bench/placement_stress.py [--budget SECONDS] [--seeds N] [--write DIR]

plan/placement.py searches VM -> node assignments depth first with a memo over per-node
load sums, a lower bound on cross-NUMA NICs, an aggregate capacity cut and symmetry between
interchangeable nodes; past STEP_LIMIT (COST_STEP_LIMIT for the fewest cross-NUMA NICs)
CP-SAT answers instead (plan/placement_sat.py), and only past its SAT_TIME_LIMIT would the
planner say "placement search gave up". Families of specs:

  a.  a fleet where some VMs pass through a NIC (found exponential before 5c48e93);
  b.  one VM more than identical nodes can hold (must be refused, with an explanation);
  b'. the same with a NIC on every node, so no two nodes are interchangeable;
  c.  exact-fit packings (every free core used; feasible by construction);
  c'. the same with a NIC on every node;
  d.  EPYC-like hosts (several L3 caches per node) with a fleet and NICs: the L3-domain layout
      (plan/l3_placement.py), which ran for minutes on 8 nodes before CP-SAT backed it.

Every case runs in a child process with a time budget, so the whole script is bounded;
"no answer within budget" means the planner was still searching when it was stopped.
"search steps" are the NUMA search's; "+ CP-SAT" says CP-SAT settled the NUMA placement,
"+ L3 CP-SAT" the L3-domain layout.
The summary at the end gives each family's worst case against the goal of 1 s a case.
`--write DIR` writes case b' on 8 nodes as a host tree + spec for the CLI:
    bmslice plan DIR/spec.yaml --host-root DIR/host
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from common import HostShape, fleet_spec, run_limited, table

from bmslice.errors import PlanError
from bmslice.model.spec import spec_from_data
from bmslice.plan import l3_sat, placement, placement_sat
from bmslice.plan.planner import make_plan


def plan_once(shape: HostShape, data: dict[str, Any], with_nics: bool) -> tuple[float, float, str, str, int]:
    """(seconds, CPU seconds, search steps, outcome, cross-NUMA NICs) of one make_plan call."""
    steps: list[int] = []
    sat: list[bool] = []
    l3: list[bool] = []
    original = placement._Search.assignment
    original_sat = placement_sat.solve
    original_l3 = l3_sat.solve_l3

    def counting(self: Any) -> Any:
        try:
            return original(self)
        finally:
            steps.append(self.steps)

    def sat_counting(*args: Any, **kwargs: Any) -> Any:
        sat.append(True)
        return original_sat(*args, **kwargs)

    def l3_counting(*args: Any, **kwargs: Any) -> Any:
        l3.append(True)
        return original_l3(*args, **kwargs)

    placement._Search.assignment = counting  # type: ignore[method-assign]
    placement_sat.solve = sat_counting
    l3_sat.solve_l3 = l3_counting
    topo = shape.topology(with_nics)
    spec = spec_from_data(data, "stress")
    start, cpu = time.perf_counter(), time.process_time()
    try:
        plan = make_plan(topo, spec, "stress")
        outcome = "planned"
        cross = sum(1 for vm in plan.vms for d in vm.devices if d.numa_node not in vm.numa_nodes)
    except PlanError as exc:
        outcome = "gave up" if "gave up" in str(exc) else "refused (explained)"
        cross = -1
    done, cpu = time.perf_counter() - start, time.process_time() - cpu
    return (
        done,
        cpu,
        f"{max(steps, default=0):,}" + (" + CP-SAT" if sat else "") + (" + L3 CP-SAT" if l3 else ""),
        outcome,
        cross,
    )


WORST: dict[str, tuple[float, float, str]] = {}  # family -> (worst seconds, its CPU seconds, its outcome)


def run(family: str, shape: HostShape, data: dict[str, Any], with_nics: bool, budget: float) -> list[str]:
    status, value = run_limited(plan_once, (shape, data, with_nics), budget)
    if status == "timeout":
        row = [f"> {budget:.0f} s", "?", "?", "no answer within budget"]
        seconds = cpu = float("inf")
    elif status == "error":
        row = ["-", "-", "-", str(value)[:60]]
        seconds = cpu = float("inf")
    else:
        seconds, cpu, steps, outcome, cross = value
        extra = f", {cross} cross-NUMA" if cross >= 0 and with_nics else ""
        row = [f"{seconds:.3f} s", f"{cpu:.3f} s", steps, outcome + extra]
    if family not in WORST or seconds >= WORST[family][0]:
        WORST[family] = (seconds, cpu, row[-1])
    return row


def nic_fleet(budget: float) -> None:
    print(
        "\na. Fleet with NICs: 2 VMs per 24-core node (a quarter full), VM k < nodes has the NIC of node 7k mod nodes.\n"
        "   Feasible with 0 cross-NUMA NICs in every row."
    )
    rows = []
    for nodes in (8, 10, 12, 13, 15, 16):
        shape = HostShape(f"{nodes} nodes", nodes, 24, 2, 1)
        rows.append(
            [f"{nodes} x 24c x 2t", str(2 * nodes), *run("a", shape, fleet_spec(shape, 2 * nodes, True), True, budget)]
        )
    print(table(["host", "VMs", "time", "CPU", "search steps", "outcome"], rows, "lrrrrl"))


def over_capacity(budget: float, nics: bool) -> None:
    mark = "'" if nics else ""
    nic_text = "; node k has NIC ensk, passed through by VM k < n (no two nodes interchangeable)" if nics else ""
    print(
        f"\nb{mark}. One VM too many: 7n+1 VMs of 4 vCPUs + dedicated emulator core (3 cores each) on n nodes\n"
        f"   of 23 free cores (7 fit per node){nic_text}.\n"
        "   Infeasible: the right answer is a refusal that explains the shortfall."
    )
    rows = []
    for nodes in (2, 4, 6, 8, 12, 16):
        shape = HostShape(f"{nodes} nodes", nodes, 24, 2, 1)
        vms: list[dict[str, Any]] = []
        for i in range(7 * nodes + 1):
            vm: dict[str, Any] = {"name": f"vm{i:03d}", "vcpus": 4, "memory": "4GiB", "emulator": "dedicated"}
            if nics and i < nodes:
                vm["nics"] = [{"passthrough": f"ens{i}"}]
            vms.append(vm)
        rows.append([f"{nodes} x 24c x 2t", str(len(vms)), *run(f"b{mark}", shape, {"vms": vms}, nics, budget)])
    print(table(["host", "VMs", "time", "CPU", "search steps", "outcome"], rows, "lrrrrl"))


def exact_fit(budget: float, seeds: int, nodes: int, nics: bool) -> None:
    mark = "'" if nics else ""
    nic_text = "; the first VM cut from node k has NIC ensk" if nics else ""
    print(
        f"\nc{mark}. Exact fit: {nodes} nodes of 23 free cores, each node's cores cut at random into VMs of\n"
        f"   3-8 cores (2 vCPUs per core, emulator on host CPUs), shuffled{nic_text}.\n"
        f"   Feasible by construction (with 0 cross-NUMA NICs); {seeds} seeds."
    )
    shape = HostShape(f"{nodes} nodes", nodes, 24, 2, 1)
    rows = []
    for seed in range(seeds):
        rng = random.Random(seed)
        vms: list[dict[str, Any]] = []
        for node in range(shape.nodes):
            left = 23
            first = True
            while left > 0:
                cores = rng.choice([3, 4, 5, 6, 7, 8]) if left > 8 else left
                left -= cores
                vm: dict[str, Any] = {
                    "name": f"vm{len(vms):03d}",
                    "vcpus": 2 * cores,
                    "memory": "4GiB",
                    "emulator": "host",
                }
                if nics and first:
                    vm["nics"] = [{"passthrough": f"ens{node}"}]
                first = False
                vms.append(vm)
        rng.shuffle(vms)
        rows.append([str(seed), str(len(vms)), *run(f"c{mark}, {nodes} nodes", shape, {"vms": vms}, nics, budget)])
    print(table(["seed", "VMs", "time", "CPU", "search steps", "outcome"], rows, "rrrrrl"))
    planned = sum(1 for r in rows if r[-1].startswith("planned"))
    print(f"   planned {planned} of {seeds} feasible specs within {budget:.0f} s each")


def epyc_fleet(budget: float) -> None:
    print(
        "\nd. EPYC-like: 2 sockets x 64 cores x 2 threads, 2-4 NUMA nodes a socket, an L3 cache per 4 or 8 cores;\n"
        "   a fleet of mixed VMs (as in a), VM k < nodes with the NIC of node 7k mod nodes. Feasible; 0 cross-NUMA."
    )
    rows = []
    for per_socket, per_l3, vms in ((2, 4, 40), (4, 4, 32), (4, 8, 40), (4, 8, 42)):
        shape = HostShape(f"{2 * per_socket} nodes", 2, 64, 2, per_socket, cores_per_l3=per_l3)
        spec = fleet_spec(shape, vms, True)
        rows.append([f"{2 * per_socket} nodes, L3 per {per_l3} cores", str(vms), *run("d", shape, spec, True, budget)])
    print(table(["host", "VMs", "time", "CPU", "search steps", "outcome"], rows, "lrrrrl"))


def write_case(out: Path) -> None:
    from treebuilder import HostSpec, NodeMemory, PciSpec, cpu_layout, write_tree

    shape = HostShape("8 nodes", 8, 24, 2, 1)
    host = HostSpec(
        cpus=cpu_layout(shape.sockets, shape.cores_per_socket, shape.threads),
        node_memory={n: NodeMemory(shape.memory_mib_per_node) for n in range(shape.nodes)},
        pci=tuple(
            PciSpec(
                f"0000:{0x10 + n:02x}:00.0", numa_node=n, iommu_group=100 + n, driver="ixgbe", interfaces=(f"ens{n}",)
            )
            for n in range(shape.nodes)
        ),
        cmdline="BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro intel_iommu=on",
    )
    write_tree(host, out / "host")
    vms: list[dict[str, Any]] = []
    for i in range(7 * shape.nodes + 1):
        vm: dict[str, Any] = {"name": f"vm{i:03d}", "vcpus": 4, "memory": "4GiB", "emulator": "dedicated"}
        if i < shape.nodes:
            vm["nics"] = [{"passthrough": f"ens{i}"}]
        vms.append(vm)
    (out / "spec.yaml").write_text(yaml.safe_dump({"vms": vms}, sort_keys=False))
    print(f"wrote {out}/host and {out}/spec.yaml; run: .venv/bin/bmslice plan {out}/spec.yaml --host-root {out}/host")


GOAL_S = 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=10.0, help="seconds per case (default 10)")
    parser.add_argument("--seeds", type=int, default=5, help="exact-fit seeds on 8 nodes (default 5)")
    parser.add_argument("--seeds16", type=int, default=20, help="exact-fit seeds on 16 nodes (default 20)")
    parser.add_argument("--write", type=Path, metavar="DIR", help="write case b' on 8 nodes for the CLI and exit")
    args = parser.parse_args()
    if args.write:
        write_case(args.write)
        return 0
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    print(
        f"placement search stress (STEP_LIMIT {placement.STEP_LIMIT:,}, COST_STEP_LIMIT "
        f"{placement.COST_STEP_LIMIT:,}, SAT_TIME_LIMIT {placement.SAT_TIME_LIMIT:g}; budget {args.budget:.0f} s per case)"
    )
    nic_fleet(args.budget)
    over_capacity(args.budget, nics=False)
    over_capacity(args.budget, nics=True)
    epyc_fleet(args.budget)
    for nodes, seeds in ((8, args.seeds), (16, args.seeds16)):
        exact_fit(args.budget, seeds, nodes, nics=False)
        exact_fit(args.budget, seeds, nodes, nics=True)
    print(f'\nWorst case per family (goal: planned or refused within {GOAL_S:.0f} s a case, never "gave up"):')
    rows = [
        [
            family,
            "no answer" if seconds == float("inf") else f"{seconds:.3f} s",
            f"{cpu:.3f} s",
            outcome,
            "meets goal" if seconds < GOAL_S and "gave up" not in outcome else "MISSES goal",
        ]
        for family, (seconds, cpu, outcome) in WORST.items()
    ]
    print(table(["family", "worst time", "its CPU time", "its outcome", "goal"], rows, "lrrll"))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min; other work on this machine slows every case)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
