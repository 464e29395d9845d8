"""Where the NUMA-placement search runs away: reproducers for the planner issues this benchmark found.

Run: .venv/bin/python bench/placement_stress.py [--budget SECONDS] [--write DIR]

plan/placement.py searches VM -> node assignments depth first, memoised on the tuple of
per-node load sums, and stops at STEP_LIMIT (2,000,000) steps with "placement search gave
up". The number of distinct load tuples grows exponentially with the number of NUMA nodes,
so three kinds of spec take seconds to minutes on many-node hosts, and the last two end in
a refusal of a spec that has a valid layout:

  a. a fleet where some VMs have a passthrough NIC and the first-fit path fills a NIC's
     node before that NIC's VM is placed (a zero-cross-NUMA layout exists; the search
     keeps looking for it through every load tuple);
  b. a spec one VM over what the nodes can hold (must be refused; the search has to
     exhaust the tree to prove it, and past ~7 nodes it gives up instead of explaining);
  c. exact-fit packings (every free core used, feasible by construction).

Every case runs in a child process with a time budget, so the whole script is bounded.
`--write DIR` writes case (a) on 16 nodes as a host tree + spec for the CLI:
    bmslice plan DIR/spec.yaml --host-root DIR/host
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from common import HostShape, fleet_spec, run_limited, table

from bmslice.errors import PlanError
from bmslice.model.spec import spec_from_data
from bmslice.plan import placement
from bmslice.plan.planner import make_plan


def plan_once(shape: HostShape, data: dict[str, Any], with_nics: bool) -> tuple[float, int, str, int]:
    """(seconds, search steps, outcome, cross-NUMA NICs) of one make_plan call."""
    steps: list[int] = []
    original = placement._Search.assignment

    def counting(self: Any) -> Any:
        try:
            return original(self)
        finally:
            steps.append(self.steps)

    placement._Search.assignment = counting  # type: ignore[method-assign]
    topo = shape.topology(with_nics)
    spec = spec_from_data(data, "stress")
    start = time.perf_counter()
    try:
        plan = make_plan(topo, spec, "stress")
        outcome = "planned"
        cross = sum(1 for vm in plan.vms for d in vm.devices if d.numa_node not in vm.numa_nodes)
    except PlanError as exc:
        outcome = "gave up" if "gave up" in str(exc) else "refused (explained)"
        cross = -1
    return time.perf_counter() - start, steps[-1] if steps else 0, outcome, cross


def run(shape: HostShape, data: dict[str, Any], with_nics: bool, budget: float) -> list[str]:
    status, value = run_limited(plan_once, (shape, data, with_nics), budget)
    if status == "timeout":
        return [f"> {budget:.0f} s", "?", "no answer within budget"]
    if status == "error":
        return ["-", "-", str(value)[:60]]
    seconds, steps, outcome, cross = value
    extra = f", {cross} cross-NUMA" if cross >= 0 and with_nics else ""
    return [f"{seconds:.3f} s", f"{steps:,}", outcome + extra]


def nic_fleet(budget: float) -> None:
    print(
        "\na. Fleet with NICs: 2 VMs per 24-core node (a quarter full), VM k < nodes has the NIC of node 7k mod nodes.\n"
        "   Feasible with 0 cross-NUMA NICs in every row."
    )
    rows = []
    for nodes in (8, 10, 12, 13, 15, 16):
        shape = HostShape(f"{nodes} nodes", nodes, 24, 2, 1)
        rows.append(
            [f"{nodes} x 24c x 2t", str(2 * nodes), *run(shape, fleet_spec(shape, 2 * nodes, True), True, budget)]
        )
    print(table(["host", "VMs", "time", "search steps", "outcome"], rows, "lrrrl"))


def over_capacity(budget: float) -> None:
    print(
        "\nb. One VM too many: 7n+1 VMs of 4 vCPUs + dedicated emulator core (3 cores each) on n nodes of 23 free\n"
        "   cores (7 fit per node). Infeasible: the right answer is a refusal that explains the shortfall."
    )
    rows = []
    for nodes in (2, 3, 4, 5, 6, 7, 8):
        shape = HostShape(f"{nodes} nodes", nodes, 24, 2, 1)
        vms = [
            {"name": f"vm{i:03d}", "vcpus": 4, "memory": "4GiB", "emulator": "dedicated"} for i in range(7 * nodes + 1)
        ]
        rows.append([f"{nodes} x 24c x 2t", str(7 * nodes + 1), *run(shape, {"vms": vms}, False, budget)])
    print(table(["host", "VMs", "time", "search steps", "outcome"], rows, "lrrrl"))


def exact_fit(budget: float, seeds: int) -> None:
    print(
        f"\nc. Exact fit: 8 nodes of 23 free cores, each node's cores cut at random into VMs of 3-8 cores\n"
        f"   (2 vCPUs per core, emulator on host CPUs), shuffled. Feasible by construction; {seeds} seeds."
    )
    shape = HostShape("8 nodes", 8, 24, 2, 1)
    rows = []
    for seed in range(seeds):
        rng = random.Random(seed)
        vms: list[dict[str, Any]] = []
        for _node in range(shape.nodes):
            left = 23
            while left > 0:
                cores = rng.choice([3, 4, 5, 6, 7, 8]) if left > 8 else left
                left -= cores
                vms.append({"name": f"vm{len(vms):03d}", "vcpus": 2 * cores, "memory": "4GiB", "emulator": "host"})
        rng.shuffle(vms)
        rows.append([str(seed), str(len(vms)), *run(shape, {"vms": vms}, False, budget)])
    print(table(["seed", "VMs", "time", "search steps", "outcome"], rows, "rrrrl"))
    planned = sum(1 for r in rows if r[-1].startswith("planned"))
    print(f"   planned {planned} of {seeds} feasible specs within {budget:.0f} s each")


def write_case(out: Path) -> None:
    from treebuilder import HostSpec, NodeMemory, PciSpec, cpu_layout, write_tree

    shape = HostShape("16 nodes", 16, 24, 2, 1)
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
    (out / "spec.yaml").write_text(yaml.safe_dump(fleet_spec(shape, 32, True), sort_keys=False))
    print(f"wrote {out}/host and {out}/spec.yaml; run: .venv/bin/bmslice plan {out}/spec.yaml --host-root {out}/host")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=15.0, help="seconds per case (default 15)")
    parser.add_argument("--seeds", type=int, default=8, help="exact-fit seeds (default 8)")
    parser.add_argument("--write", type=Path, metavar="DIR", help="write the 16-node NIC case for the CLI and exit")
    args = parser.parse_args()
    if args.write:
        write_case(args.write)
        return 0
    print(f"placement search stress (STEP_LIMIT {placement.STEP_LIMIT:,}; budget {args.budget:.0f} s per case)")
    nic_fleet(args.budget)
    over_capacity(args.budget)
    exact_fit(args.budget, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
