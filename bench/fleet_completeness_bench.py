"""Fleet placement completeness: place() against independent references on generated fleets.

Run: .venv/bin/python bench/fleet_completeness_bench.py [--small 300] [--issue 100] [--growth 30]
     [--limit 10] [--seed 0]

Not a test: nothing timed is asserted. The references share no code with
bmslice.fleet.placement; both count capacity with tests/fleet_oracle.py's host model (whole
cores with the SMT rule, memory, eligible PFs and VFs, from the topology alone), and every
placement either of them finds is checked against the hard rules by tests/fleet_oracle.py's
`violations`, which also runs the host planner on each host's spec (H8).

- Small fleets (tests/fleetgen.py `small_fleet`: 2-4 servers, at most ten VMs) against the
  exhaustive oracle (tests/fleet_oracle.py `solve`); the CP-SAT reference below is run on
  them too, and must agree with the oracle.
- The issue's fleets (`issue_fleet`: 3-12 servers of 2-4 shapes, Red and Blue with 3
  control planes and 2-40 workers each, 50-100 % load) against the CP-SAT reference: one
  boolean per VM and option (host, its NUMA nodes, its PFs), exactly one option per VM,
  per node the SMT capacity rule as linear constraints, per PF passthrough to one VM or VFs
  within sriov_totalvfs, max_per_host, control planes apart (hosts; racks when the control
  hosts span enough), kept VMs fixed; minimising O2 * (most O3 + 1) + O3, one worker
  thread, a time limit per fleet. Fleets it cannot decide in the limit count as unknown.
- Growth: an issue fleet with half its workers, placed by the reference (so the kept
  placement breaks no rule), then one worker added at a time (Red and Blue in turn) by
  place() with the earlier placement kept and nothing moved; a refusal is checked against
  the reference with the placed VMs fixed. A fleet's run ends at its first refusal, at the
  first placement breaking a hard rule, or after 30 workers.

Printed per load band (worker demand over worker capacity, tests/fleetgen.py `fleet_load`):
fleets, feasible per the reference (or shown by a placement of place() breaking no rule where
the reference could not tell), refused although feasible, accepted although infeasible,
accepted placements breaking a hard rule (control planes stacked: H3; the host planner
refusing a host's spec: H8), the optimality gaps in O2 and O3 where both place() and the
reference prove their optimum (and, below the table, of every accepted placement against
the reference's proven optimum), and place()'s time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import common  # puts src/ and tests/ on sys.path
from ortools.sat.python import cp_model

from bmslice.model.fleet import Fleet, NicKind, Placement, RackSpread, Role
from bmslice.model.topology import HostTopology
from fleet_oracle import (
    Choice,
    Cost,
    control_planes_apart,
    cross_numa,
    hosts_of,
    kept_choices,
    objective,
    options,
    racks_apart,
    solve,
    to_placement,
    violations,
    vms_of,
)
from fleet_place import Outcome, run_place
from fleetgen import fleet_load, grown, issue_fleet, small_fleet

BANDS = ((0.0, 0.5, "<50 %"), (0.5, 0.6, "50-60 %"), (0.6, 0.7, "60-70 %"), (0.7, 0.8, "70-80 %"))
BANDS += ((0.8, 0.9, "80-90 %"), (0.9, 1.0001, "90-100 %"), (1.0001, 99.0, ">100 %"))


# --- the CP-SAT reference ------------------------------------------------------------------------


@dataclass
class Reference:
    status: str  # "optimal", "feasible" (not proven optimal), "infeasible", "unknown" (no answer in time)
    cost: Cost | None = None
    assignment: dict[str, Choice] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def feasible(self) -> bool | None:
        return {"optimal": True, "feasible": True, "infeasible": False}.get(self.status)


def reference(
    fleet: Fleet, topologies: Mapping[str, HostTopology], existing: Placement | None = None, limit: float = 10.0
) -> Reference:
    """The contract as a plain CP-SAT model (see the module docstring)."""
    start = time.perf_counter()
    hosts = hosts_of(fleet, topologies)
    vms = vms_of(fleet)
    old = {vm.name: vm for vm in existing.vms} if existing is not None else {}
    model = cp_model.CpModel()
    x: dict[tuple[str, Choice], cp_model.IntVar] = {}
    for vm in vms:
        choices = [c for host in hosts.values() for c in options(host, vm, old.get(vm.name))]
        if vm.name in old:
            choices = kept_choices(old[vm.name], choices)
        for c in choices:
            x[(vm.name, c)] = model.new_bool_var(f"{vm.name}@{c}")
        model.add_exactly_one(x[(vm.name, c)] for c in choices)
    by_vm = {vm.name: vm for vm in vms}
    # H4: per node, singles on ones (a) and pairs on pairs of ones (q) as integers
    load: dict[tuple[str, int], list[tuple[cp_model.IntVar, int, int, int]]] = defaultdict(list)
    for (name, c), var in x.items():
        for node, share in zip(c.nodes, by_vm[name].shares, strict=True):
            load[(c.host, node)].append((var, *share))
    for host in hosts.values():
        for room in host.nodes:
            terms = load[(host.name, room.node)]
            singles = sum(v * s for v, s, _, _ in terms)
            pairs = sum(v * p for v, _, p, _ in terms)
            model.add(sum(v * m for v, _, _, m in terms) <= room.memory_mib)
            on_ones = model.new_int_var(0, room.ones, "")
            pairs_on_ones = model.new_int_var(0, room.ones // 2, "")
            model.add(on_ones <= singles)
            model.add(singles - on_ones <= room.twos)
            model.add(on_ones + 2 * pairs_on_ones <= room.ones)
            model.add(pairs <= room.twos - (singles - on_ones) + pairs_on_ones)
    # H6: a PF passed through to one VM at most, and then serving no VFs
    whole: dict[tuple[str, str], list[cp_model.IntVar]] = defaultdict(list)
    vfs: dict[tuple[str, str], list[tuple[cp_model.IntVar, int]]] = defaultdict(list)
    group_users: dict[tuple[str, int], dict[str, list[cp_model.IntVar]]] = defaultdict(lambda: defaultdict(list))
    for (name, c), var in x.items():
        nic = by_vm[name].nic
        for address in c.pfs:
            assert nic is not None
            if nic.kind is NicKind.SRIOV:
                vfs[(c.host, address)].append((var, nic.count))
                continue
            whole[(c.host, address)].append(var)
            pf = hosts[c.host].pf(address)
            if pf is not None and pf.group is not None:
                group_users[(c.host, pf.group)][name].append(var)
    for host in hosts.values():
        for pf in host.pfs:
            passed = sum(whole[(host.name, pf.address)])
            model.add(passed <= 1)
            model.add(sum(v * n for v, n in vfs[(host.name, pf.address)]) <= pf.totalvfs * (1 - passed))
    for users in group_users.values():  # one VM per IOMMU group passed through
        if len(users) > 1:
            model.add(sum(_any(model, vs) for vs in users.values()) <= 1)
    # H2, H3
    on: dict[tuple[str, Role, str], list[cp_model.IntVar]] = defaultdict(list)
    for (name, c), var in x.items():
        on[(by_vm[name].cluster, by_vm[name].role, c.host)].append(var)
    for (cluster, role, _), vs in on.items():
        model.add(sum(vs) <= fleet.cluster(cluster).spread.max_per_host)
        if role is Role.CONTROL and control_planes_apart(fleet, cluster):
            model.add(sum(vs) <= 1)
    racks = sorted({h.rack for h in hosts.values()})
    for cluster in fleet.clusters:
        if control_planes_apart(fleet, cluster.name) and racks_apart(fleet, cluster.name):
            for rack in racks:
                model.add(
                    sum(v for h in hosts.values() if h.rack == rack for v in on[(cluster.name, Role.CONTROL, h.name)])
                    <= 1
                )
    # O2, O3
    squares = []
    for cluster in fleet.clusters:
        if cluster.spread.racks is not RackSpread.SPREAD:
            continue
        for role in Role:
            for rack in racks:
                n_vms = sum(1 for vm in vms if vm.cluster == cluster.name and vm.role is role)
                count = model.new_int_var(0, n_vms, "")
                model.add(
                    count == sum(v for h in hosts.values() if h.rack == rack for v in on[(cluster.name, role, h.name)])
                )
                square = model.new_int_var(0, n_vms * n_vms, "")
                model.add_multiplication_equality(square, [count, count])
                squares.append(square)
    cross = {key: cross_numa(hosts[key[1].host], key[1].nodes, key[1].pfs) for key in x}
    most_o3 = sum(max((cross[k] for k in x if k[0] == vm.name), default=0) for vm in vms)
    o2 = sum(squares)
    o3 = sum(var * cross[key] for key, var in x.items() if cross[key])
    model.minimize(o2 * (most_o3 + 1) + o3)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.max_time_in_seconds = limit
    status = solver.solve(model)
    seconds = time.perf_counter() - start
    if status == cp_model.INFEASIBLE:
        return Reference("infeasible", seconds=seconds)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return Reference("unknown", seconds=seconds)
    assignment = {name: c for (name, c), var in x.items() if solver.value(var)}
    placement = to_placement(fleet, topologies, assignment)
    found = objective(fleet, topologies, placement, existing)
    return Reference("optimal" if status == cp_model.OPTIMAL else "feasible", found, assignment, seconds)


def _any(model: cp_model.CpModel, literals: Sequence[cp_model.IntVar]) -> cp_model.IntVar:
    """A boolean that is 1 when any of `literals` is."""
    flag = model.new_bool_var("")
    for lit in literals:
        model.add_implication(lit, flag)
    return flag


# --- place() against a reference, per fleet --------------------------------------------------------


@dataclass
class Row:
    """One fleet: its load, what the reference says, what place() did and what it broke."""

    load: float
    feasible: bool | None  # per the reference; None: unknown
    optimum: Cost | None  # the reference's proven optimum
    outcome: Outcome
    broken: list[str]  # hard rules the accepted placement breaks
    found: Cost | None  # the accepted placement's objective


def judge(fleet: Fleet, topologies: Mapping[str, HostTopology], truth: bool | None, optimum: Cost | None) -> Row:
    try:
        outcome = run_place(fleet, topologies)
    except Exception as exc:  # a crash is a finding, not the end of the run
        outcome = Outcome(None, f"CRASH {type(exc).__name__}: {exc}", 0.0, False, None)
    broken: list[str] = []
    found = None
    if outcome.placement is not None:
        broken = violations(fleet, topologies, outcome.placement)
        found = objective(fleet, topologies, outcome.placement)
        if truth is None and not broken:
            truth = True  # the reference could not tell in time; this placement shows it
    return Row(fleet_load(fleet, topologies), truth, optimum, outcome, broken, found)


def _band(load: float) -> str:
    return next(label for low, high, label in BANDS if low <= load < high)


def _gap(rows: Sequence[Row], index: int) -> str:
    """How many accepted placements miss the reference's proven optimum in O2 (index 1), or in
    O3 with O2 met (index 2), of how many compared, and by how much on average."""
    both = [r for r in rows if r.found is not None and r.optimum is not None]
    if index == 2:
        both = [r for r in both if r.found is not None and r.optimum is not None and r.found[1] == r.optimum[1]]
    gaps = [r.found[index] - r.optimum[index] for r in both if r.found is not None and r.optimum is not None]
    worse = [g for g in gaps if g > 0]
    if not both:
        return "-"
    return f"{len(worse)}/{len(both)}" + (f" +{statistics.mean(worse):.1f}" if worse else "")


def report(title: str, rows: Sequence[Row]) -> None:
    print(f"\n{title}")
    bands: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        bands[_band(row.load)].append(row)
    table_rows = []
    for _, _, label in BANDS:
        if label in bands:
            table_rows.append(_summary(label, bands[label]))
    table_rows.append(_summary("all", list(rows)))
    headers = ["load", "fleets", "feasible", "unknown", "refused feasible", "accepted infeasible"]
    headers += [
        "rule broken",
        "CP stacked",
        "H8 refused",
        "crashed",
        "proven",
        "O2 gap",
        "O3 gap",
        "median ms",
        "max ms",
    ]
    print(common.table(headers, table_rows))
    print(
        "O2/O3 gap: placements above the reference's proven optimum / both proven (place() says proven_optimal); "
        f"every accepted placement against it: O2 {_gap(rows, 1)}, O3 {_gap(rows, 2)}"
    )


def _summary(label: str, rows: Sequence[Row]) -> list[object]:
    times = [r.outcome.seconds for r in rows if r.outcome.seconds]
    return [
        label,
        len(rows),
        sum(r.feasible is True for r in rows),
        sum(r.feasible is None for r in rows),
        sum(r.feasible is True and r.outcome.placement is None for r in rows),
        sum(r.feasible is False and r.outcome.placement is not None for r in rows),
        sum(bool(r.broken) for r in rows),
        sum(any(v.startswith("H3") for v in r.broken) for r in rows),
        sum(any(v.startswith("H8") for v in r.broken) for r in rows),
        sum((r.outcome.refusal or "").startswith("CRASH") for r in rows),
        sum(r.outcome.proven_optimal for r in rows),
        _gap([r for r in rows if r.outcome.proven_optimal], 1),
        _gap([r for r in rows if r.outcome.proven_optimal], 2),
        f"{1000 * statistics.median(times):.1f}" if times else "-",
        f"{1000 * max(times):.1f}" if times else "-",
    ]


def _check_reference(fleet: Fleet, topologies: Mapping[str, HostTopology], ref: Reference) -> list[str]:
    if not ref.assignment:
        return []
    return violations(fleet, topologies, to_placement(fleet, topologies, ref.assignment))


def small_fleets(count: int, seed: int, limit: float) -> None:
    rows = []
    disagree: list[str] = []
    bad_references = 0
    start = time.perf_counter()
    for s in range(seed, seed + count):
        fleet, topologies = small_fleet(s)
        oracle = solve(fleet, topologies)
        ref = reference(fleet, topologies, limit=limit)
        if ref.feasible is not None and ref.feasible != oracle.feasible:
            disagree.append(f"small_fleet({s}): oracle {oracle.cost}, CP-SAT {ref.status}")
        elif ref.status == "optimal" and ref.cost != oracle.cost:
            disagree.append(f"small_fleet({s}): oracle {oracle.cost}, CP-SAT {ref.cost}")
        bad_references += bool(_check_reference(fleet, topologies, ref))
        rows.append(judge(fleet, topologies, oracle.feasible, oracle.cost))
    report(f"Small fleets against the exhaustive oracle ({count} fleets, {time.perf_counter() - start:.0f} s)", rows)
    print(
        f"oracle and CP-SAT reference disagree on {len(disagree)} fleet(s); "
        f"{bad_references} reference placement(s) break a hard rule"
    )
    for line in disagree[:10]:
        print(f"  {line}")
    _refusals(rows)


def _refusals(rows: Sequence[Row]) -> None:
    wrong = [r.outcome.refusal for r in rows if r.feasible is True and r.outcome.refusal]
    for text in wrong[:3]:
        print(f"  e.g. refused though feasible: {text[:150]}")


def issue_fleets(count: int, seed: int, limit: float) -> None:
    rows = []
    bad_references = 0
    reference_times = []
    start = time.perf_counter()
    for s in range(seed, seed + count):
        fleet, topologies = issue_fleet(s)
        ref = reference(fleet, topologies, limit=limit)
        reference_times.append(ref.seconds)
        bad_references += bool(_check_reference(fleet, topologies, ref))
        rows.append(judge(fleet, topologies, ref.feasible, ref.cost if ref.status == "optimal" else None))
    elapsed = time.perf_counter() - start
    report(f"The issue's fleets against the CP-SAT reference ({count} fleets, {elapsed:.0f} s)", rows)
    optimal = sum(r.optimum is not None for r in rows)
    print(
        f"reference: {optimal} proven optimal, median {statistics.median(reference_times):.2f} s, "
        f"max {max(reference_times):.2f} s (limit {limit:g} s); {bad_references} reference placement(s) break a "
        "hard rule"
    )
    _refusals(rows)


def growth(count: int, seed: int, limit: float) -> None:
    """Workers added one at a time to half-full issue fleets, nothing moved."""
    added = refused_fitting = refused_right = unknown = broken = fleets = 0
    start = time.perf_counter()
    for s in range(seed, seed + count):
        full, topologies = issue_fleet(s)
        half = full
        for cluster in full.clusters:
            half = grown(half, cluster.name, max(1, cluster.workers.count // 2) - cluster.workers.count)
        start_at = reference(half, topologies, limit=limit)
        if not start_at.assignment:
            continue
        fleets += 1
        fleet, placement = half, to_placement(half, topologies, start_at.assignment)
        for step in range(30):
            bigger = grown(fleet, fleet.clusters[step % len(fleet.clusters)].name)
            outcome = run_place(bigger, topologies, placement)
            if outcome.placement is None:
                truth = reference(bigger, topologies, placement, limit=limit).feasible
                refused_fitting += truth is True
                refused_right += truth is False
                unknown += truth is None
                break
            added += 1
            if violations(bigger, topologies, outcome.placement, placement):
                broken += 1  # and the run ends: later steps would keep what it broke
                break
            fleet, placement = bigger, outcome.placement
    print(f"\nGrowth, one worker at a time, nothing moved ({fleets} fleets with half their workers placed, ", end="")
    print(f"{time.perf_counter() - start:.0f} s)")
    headers = ["workers added", "refused, still fits", "refused, full", "refused, unknown", "accepted breaking a rule"]
    print(common.table(headers, [[added, refused_fitting, refused_right, unknown, broken]]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", type=int, default=300, help="small fleets against the exhaustive oracle")
    parser.add_argument("--issue", type=int, default=100, help="the issue's fleets against the CP-SAT reference")
    parser.add_argument("--growth", type=int, default=30, help="issue fleets grown one worker at a time")
    parser.add_argument("--limit", type=float, default=10.0, help="CP-SAT reference time limit per fleet (s)")
    parser.add_argument("--seed", type=int, default=0, help="first generator seed")
    args = parser.parse_args(argv)
    if args.small:
        small_fleets(args.small, args.seed, args.limit)
    if args.issue:
        issue_fleets(args.issue, args.seed, args.limit)
    if args.growth:
        growth(args.growth, args.seed, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
