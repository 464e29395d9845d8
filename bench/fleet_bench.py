"""Fleet placement speed and quality: a generated fleet of mixed servers, placed and rendered.

Run: .venv/bin/python bench/fleet_bench.py [--hosts N] [--fill F] [--seed S] [--budget S] [--check]
     .venv/bin/python bench/fleet_bench.py --example     (the design note's four servers)

The fleet comes from tests/fleetgen.py: four server shapes (the design note's server1,
2 x 12-core SMT with SR-IOV NICs on both sockets, 1-socket AMD with 4 NUMA nodes and no
SMT, 2 x 24-core SMT), ~3% control hosts, racks of 20, and clusters of mixed VM sizes
with SR-IOV or passthrough NICs; --fill says how full (the default 1,000 servers hold
3,500 VMs). Printed: the time to validate the fleet, to place every VM (and whether the
placement is proven optimal or feasible only, with its objective: VMs moved, rack spread,
cross-NUMA NICs), to add one worker to every cluster with the first placement kept (the
stable path), to render every per-host spec, user-data and the Junos config, and, with
--check, to run the per-host planner on every host. Not a test: nothing is asserted about
the times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "src", ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import yaml  # noqa: E402

from bmslice.errors import PlanError  # noqa: E402
from bmslice.fleet import DEFAULT_BUDGET_S  # noqa: E402
from bmslice.fleet.capacity import with_more_workers  # noqa: E402
from bmslice.fleet.check import check_host  # noqa: E402
from bmslice.fleet.hosts import read_hosts  # noqa: E402
from bmslice.fleet.placement import place  # noqa: E402
from bmslice.fleet.render import quality_text, render_fleet  # noqa: E402
from bmslice.model.fields import as_data  # noqa: E402
from bmslice.model.fleet import fleet_from_data, load_fleet  # noqa: E402
from fleetgen import mixed_fleet  # noqa: E402


def _timed(label: str, func, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    try:
        result = func(*args, **kwargs)
    except PlanError as exc:
        print(f"{label:<44} {time.perf_counter() - start:8.3f} s  refused: {str(exc)[:300]}")
        return None
    print(f"{label:<44} {time.perf_counter() - start:8.3f} s")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--fill", type=float, default=0.6, help="how full the generated fleet is (default 0.6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="the placement's time budget")
    parser.add_argument("--example", action="store_true", help="the design note's four servers instead")
    parser.add_argument("--check", action="store_true", help="also run the per-host planner on each host")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    if args.example:
        fleet = load_fleet(ROOT / "examples" / "fleet" / "fleet.yaml")
        topologies = read_hosts(fleet)
    else:
        fleet, topologies = mixed_fleet(args.hosts, args.seed, fill=args.fill)
    print(f"{'generate the fleet and topologies':<44} {time.perf_counter() - start:8.3f} s")
    data = as_data(fleet)
    _timed("validate the fleet file", fleet_from_data, data, "generated")
    requests = fleet.vm_requests()
    shapes = {len(t.cores) for t in topologies.values()}
    print(
        f"fleet: {len(fleet.inventory)} servers ({len(shapes)} shapes), {len(fleet.clusters)} clusters, "
        f"{len(requests)} VMs, {sum(len(t.online_cpus) for t in topologies.values())} host CPUs"
    )
    placement = _timed(f"place {len(requests)} VMs", place, fleet, topologies, budget_s=args.budget)
    if placement is None:
        return 0
    print(f"  {quality_text(placement)}")
    used = sum(u.cores_used for u in placement.usage)
    free = sum(u.cores_free_before for u in placement.usage)
    print(f"  {used} of {free} free whole cores now used ({100 * used / free:.0f}%)")

    grown = fleet
    for cluster in fleet.clusters:
        grown = with_more_workers(grown, cluster.name, 1)
    again = _timed(
        f"add {len(fleet.clusters)} workers, keep the placement",
        place,
        grown,
        topologies,
        placement,
        budget_s=args.budget,
    )
    if again is not None:
        moved = [vm.name for vm in placement.vms if again.vm(vm.name) != vm]
        print(f"  VMs moved: {len(moved)}; {quality_text(again)}")

    files = _timed("render specs, user-data, fabric, Junos", render_fleet, fleet, placement, [], "generated")
    print(f"  {len(files)} files, {sum(len(t) for t in files.values()) // 1024} KiB")

    if args.check:
        specs = {
            p.split("/")[1]: yaml.safe_load(t)
            for p, t in files.items()
            if p.startswith("hosts/") and p.endswith("spec.yaml")
        }

        def check_all() -> int:
            for host, spec in specs.items():
                check_host(host, spec, topologies[host], f"{host}/spec.yaml")
            return len(specs)

        checked = _timed("per-host planner check (make_plan per host)", check_all)
        print(f"  checked {checked} host(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
