"""How long `bmslice capacity` takes to answer: the design note's server, a 256-CPU host, a fleet.

Run: .venv/bin/python bench/capacity_bench.py [--runs N]

1. In-process: free_room() (the count search, what runs out first, and each node's room) for the
   spec's own shapes and for --vm shapes, median of --runs.
2. The whole CLI, `bmslice capacity SPEC --host-root TREE` (Python start-up included), median of 5.
3. `bmslice fleet capacity`'s fleet_room() on generated fleets (tests/fleetgen.py).

The target: an answer on a 256-CPU host in well under a second.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import ROOT, table
from exporter_bench import big_host

from bmslice.fleet.capacity import fleet_room
from bmslice.model.shapes import parse_vm_shape
from bmslice.model.spec import load_spec
from bmslice.plan.planner import make_plan
from bmslice.plan.room import Room, asked_shapes, free_room, spec_shapes
from bmslice.topology.sysfs import read_host_tree
from fleetgen import mixed_fleet
from treebuilder import write_tree

GOAL_S = 1.0
ASKED = ("8:16GiB:vf", "4:8GiB", "16:32GiB:pt")


def _timed(runs: int, call: Any) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, result


def _summary(room: Room) -> str:
    return ", ".join(f"{r.shape} {r.more}" for r in room.shapes)


def host_rows(name: str, root: Path, spec_path: Path, runs: int) -> list[list[str]]:
    topo = read_host_tree(root)
    spec = load_spec(spec_path)
    base = make_plan(topo, spec, "bench")
    rows = []
    for what, shapes in (
        ("spec's VMs", spec_shapes(spec)),
        (" ".join(ASKED), asked_shapes([parse_vm_shape(s) for s in ASKED])),
    ):
        ms, room = _timed(runs, lambda shapes=shapes: free_room(topo, spec, base, shapes, "bench", per_node=True))
        rows.append([name, str(len(topo.online_cpus)), what, f"{ms:.0f}", _summary(room)])
    cli = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).parent / "bmslice"), "capacity", str(spec_path), "--host-root", str(root)],
            check=True,
            capture_output=True,
        )
        cli.append(time.perf_counter() - start)
    rows.append(
        [name, str(len(topo.online_cpus)), "the whole CLI (spec's VMs)", f"{statistics.median(cli) * 1000:.0f}", ""]
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bmslice-capacity-bench-") as tmp:
        rows += host_rows("server1", ROOT / "examples/server1/host", ROOT / "examples/server1/spec.yaml", args.runs)
        host, spec = big_host()
        spec["vms"] = spec["vms"][:5]  # three of the eight nodes free
        spec_path = Path(tmp) / "big.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        rows += host_rows("256 CPUs", write_tree(host, Path(tmp) / "big"), spec_path, args.runs)
    print(f"bmslice capacity: time to answer (ms, median of {args.runs}; CLI of 5); goal < {GOAL_S:.0f} s on 256 CPUs")
    print(table(["host", "CPUs", "shapes", "ms", "more that fit"], rows, align="lrlrl"))
    fleet_rows = []
    for hosts in (4, 12, 40):
        fleet, topologies = mixed_fleet(hosts, seed=hosts, clusters=2, fill=0.5)
        ms, room = _timed(1, lambda fleet=fleet, topologies=topologies: fleet_room(fleet, topologies))
        more = ", ".join(f"{c.cluster} {c.more}" for c in room.clusters)
        fleet_rows.append([str(hosts), str(len(room.placement.vms)), f"{ms:.0f}", more])
    print()
    print("bmslice fleet capacity: fleet_room() on generated fleets (one run each)")
    print(table(["servers", "VMs placed", "ms", "more workers that fit"], fleet_rows, align="rrrl"))


if __name__ == "__main__":
    main()
