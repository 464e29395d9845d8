"""Fleet placement against an independent exhaustive oracle (tests/fleet_oracle.py), on small
generated fleets (tests/fleetgen.py `small_fleet`: 2-4 servers, at most ten VMs).

What the placement contract promises and these tests hold `place()` to:
- it refuses a fleet if and only if no assignment satisfies the hard rules;
- what it accepts satisfies every hard rule H1-H8 (control planes never stacked unless the
  cluster opts out; the host planner accepts every host's spec);
- a placement that says it is proven optimal has the oracle's optimum (O1, O2, O3), and no
  placement beats it;
- a refusal that names VMs names a set that cannot be placed together, and no smaller one;
- grown by a worker or two with the earlier placement kept: it refuses iff the oracle with
  the kept VMs fixed finds nothing, and moves nothing; with allow_move it moves as few VMs
  as the oracle's minimum.

Calls go through the one adapter (tests/fleet_place.py), so they run against a `place()`
that lacks `allow_move`, `proven_optimal` or `moved` too (and fail where it falls short).
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmslice.model.fleet import Fleet, Placement, Role, fleet_from_data
from bmslice.model.topology import HostTopology
from fleet_oracle import (
    Solution,
    hosts_of,
    moved_vms,
    named_vms,
    objective,
    options,
    solve,
    to_placement,
    violations,
    vms_of,
)
from fleet_place import Outcome, run_place
from fleetgen import grown, small_fleet
from topologies import synthetic

SMALL = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**32 - 1)
IRREDUCIBLE_UP_TO = 6  # refusals naming at most this many VMs are also checked to be irreducible


@dataclass(frozen=True)
class Case:
    seed: int
    fleet: Fleet
    topologies: dict[str, HostTopology]
    oracle: Solution
    outcome: Outcome

    def __str__(self) -> str:
        said = self.outcome.refusal or f"a placement, objective {self.objective()}"
        return f"small_fleet({self.seed}): oracle {self.oracle.cost}, place() {said}"

    __repr__ = __str__  # failures show this, not the whole fleet

    def objective(self) -> tuple[int, int, int] | None:
        placement = self.outcome.placement
        return None if placement is None else objective(self.fleet, self.topologies, placement)


@functools.lru_cache(maxsize=128)
def case(seed: int) -> Case:
    fleet, topologies = small_fleet(seed)
    return Case(seed, fleet, topologies, solve(fleet, topologies), run_place(fleet, topologies))


@dataclass(frozen=True)
class Growth:
    seed: int
    fleet: Fleet  # the grown fleet
    topologies: dict[str, HostTopology]
    existing: Placement  # the oracle's optimum of the fleet before it grew

    def __str__(self) -> str:
        return f"small_fleet({self.seed}) grown to {[(c.name, c.workers.count) for c in self.fleet.clusters]}"

    __repr__ = __str__


@functools.lru_cache(maxsize=128)
def growth(seed: int) -> Growth | None:
    """A small fleet that fits, placed by the oracle, then grown by one or two workers or (every
    other seed) by workers one at a time until the placed VMs must move to make room (or 4 more)."""
    base = case(seed)
    if not base.oracle.feasible or not base.fleet.clusters:
        return None
    rng = random.Random(seed)
    existing = to_placement(base.fleet, base.topologies, base.oracle.assignment)
    cluster = rng.choice(base.fleet.clusters).name
    if rng.random() < 0.5:
        return Growth(seed, grown(base.fleet, cluster, rng.choice([1, 2])), base.topologies, existing)
    for more in range(1, 5):
        fleet = grown(base.fleet, cluster, more)
        if not solve(fleet, base.topologies, existing).feasible:
            break
    return Growth(seed, fleet, base.topologies, existing)


# --- the oracle itself --------------------------------------------------------------------------


@SMALL
@given(SEEDS)
def test_the_oracles_optimum_holds_every_rule_and_the_host_planner_takes_it(seed: int) -> None:
    c = case(seed)
    if not c.oracle.feasible:
        return
    placement = to_placement(c.fleet, c.topologies, c.oracle.assignment)
    assert violations(c.fleet, c.topologies, placement) == [], str(c)
    assert objective(c.fleet, c.topologies, placement) == c.oracle.cost, str(c)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEEDS)
def test_the_oracles_search_finds_what_trying_every_assignment_finds(seed: int) -> None:
    """On fleets small enough to list every assignment of every VM to every option: the least
    objective among those the rule checks pass is the oracle's (None when none passes)."""
    c = case(seed)
    hosts = hosts_of(c.fleet, c.topologies)
    vms = vms_of(c.fleet)
    every = [[o for host in hosts.values() for o in options(host, vm)] for vm in vms]
    if sum(len(o) for o in every) > 24 or len(vms) > 5:
        return  # too many to list
    best = None
    for combo in itertools.product(*every):
        placement = to_placement(c.fleet, c.topologies, {vm.name: o for vm, o in zip(vms, combo, strict=True)})
        if not violations(c.fleet, c.topologies, placement, planner=False):
            cost = objective(c.fleet, c.topologies, placement)
            best = cost if best is None or cost < best else best
    assert c.oracle.cost == best, str(c)


# --- place() on fresh fleets --------------------------------------------------------------------


@SMALL
@given(SEEDS)
def test_place_refuses_exactly_the_fleets_nothing_can_place(seed: int) -> None:
    c = case(seed)
    assert (c.outcome.refusal is None) == c.oracle.feasible, str(c)


@SMALL
@given(SEEDS)
def test_what_place_accepts_holds_every_hard_rule(seed: int) -> None:
    c = case(seed)
    if c.outcome.placement is not None:
        assert violations(c.fleet, c.topologies, c.outcome.placement) == [], str(c)


@SMALL
@given(SEEDS)
def test_no_placement_beats_the_optimum_and_a_proven_one_reaches_it(seed: int) -> None:
    c = case(seed)
    found = c.objective()
    if found is None or c.oracle.cost is None:
        return
    assert found >= c.oracle.cost, str(c)
    if c.outcome.proven_optimal:
        assert found == c.oracle.cost, str(c)


@SMALL
@given(SEEDS)
def test_a_refusal_names_vms_that_cannot_be_placed_together_and_no_fewer(seed: int) -> None:
    c = case(seed)
    if c.outcome.refusal is None:
        return
    assert "\n" not in c.outcome.refusal
    named = named_vms(c.outcome.refusal, c.fleet)
    if not named:
        return  # it names the rule or resource that binds
    assert not solve(c.fleet, c.topologies, only=named).feasible, f"{c}: {sorted(named)} fit together"
    if len(named) <= IRREDUCIBLE_UP_TO:
        for vm in sorted(named):
            rest = named - {vm}
            assert solve(c.fleet, c.topologies, only=rest).feasible, f"{c}: {sorted(rest)} already do not fit"


# --- place() on a grown fleet, the earlier placement kept -------------------------------------


@SMALL
@given(SEEDS)
def test_growth_moves_nothing_and_is_refused_only_when_the_kept_vms_leave_no_room(seed: int) -> None:
    g = growth(seed)
    if g is None:
        return
    oracle = solve(g.fleet, g.topologies, g.existing)
    outcome = run_place(g.fleet, g.topologies, g.existing)
    assert (outcome.refusal is None) == oracle.feasible, f"{g}: oracle {oracle.cost}, place() {outcome.refusal}"
    if outcome.placement is not None:
        assert violations(g.fleet, g.topologies, outcome.placement, g.existing) == [], str(g)
        assert not outcome.moved, str(g)
        if outcome.proven_optimal:
            assert objective(g.fleet, g.topologies, outcome.placement, g.existing) == oracle.cost, str(g)


@SMALL
@given(SEEDS)
def test_growth_with_allow_move_moves_as_few_vms_as_the_oracle(seed: int) -> None:
    g = growth(seed)
    if g is None:
        return
    oracle = solve(g.fleet, g.topologies, g.existing, allow_move=True)
    outcome = run_place(g.fleet, g.topologies, g.existing, allow_move=True)
    assert (outcome.refusal is None) == oracle.feasible, f"{g}: oracle {oracle.cost}, place() {outcome.refusal}"
    if outcome.placement is None or oracle.cost is None:
        return
    assert violations(g.fleet, g.topologies, outcome.placement, g.existing, allow_move=True) == [], str(g)
    moved = moved_vms(outcome.placement, g.existing)
    assert len(moved) == oracle.cost[0], f"{g}: moved {sorted(moved)}, the oracle moves {oracle.cost[0]}"
    if outcome.moved is not None:
        assert set(outcome.moved) == moved, str(g)
    if outcome.proven_optimal:
        assert objective(g.fleet, g.topologies, outcome.placement, g.existing) == oracle.cost, str(g)


# --- control planes apart, and the opt-out ------------------------------------------------------


def _control_fleet(racks: list[str], spread: dict[str, Any]) -> tuple[Fleet, dict[str, HostTopology]]:
    """Control hosts in `racks` (one each) and a worker host; one cluster of 3 control planes
    that all fit on any one control host."""
    names = [f"c{i}" for i in range(len(racks))]
    inventory = [
        {"name": n, "uri": f"qemu+ssh://{n}/system", "role": "control", "rack": r}
        for n, r in zip(names, racks, strict=True)
    ]
    inventory.append({"name": "w0", "uri": "qemu+ssh://w0/system", "role": "worker", "rack": "r9"})
    cluster = {
        "name": "red",
        "vlan": 100,
        "control_plane": [{"vcpus": 2, "memory": "2GiB"}] * 3,
        "workers": {"count": 1, "vcpus": 2, "memory": "2GiB"},
        "spread": spread,
    }
    topology = synthetic(2, 8, 2)
    fleet = fleet_from_data({"inventory": inventory, "clusters": [cluster]}, "control.yaml")
    return fleet, {h.name: topology for h in fleet.inventory}


def _control_hosts(placement: Placement) -> list[str]:
    return sorted(vm.host for vm in placement.vms if vm.role is Role.CONTROL)


def test_control_planes_go_to_distinct_hosts_even_when_max_per_host_allows_more() -> None:
    fleet, topologies = _control_fleet(["r0", "r0", "r0", "r0"], {"max_per_host": 3, "racks": "any"})
    outcome = run_place(fleet, topologies)
    assert outcome.placement is not None, outcome.refusal
    assert len(set(_control_hosts(outcome.placement))) == 3
    assert violations(fleet, topologies, outcome.placement) == []


def test_control_planes_go_to_distinct_racks_when_the_control_hosts_span_enough() -> None:
    # four control hosts, two of them in r0: the three control planes need r0, r1 and r2
    fleet, topologies = _control_fleet(["r0", "r0", "r1", "r2"], {"max_per_host": 3, "racks": "any"})
    outcome = run_place(fleet, topologies)
    assert outcome.placement is not None, outcome.refusal
    racks = {fleet.host(h).rack for h in _control_hosts(outcome.placement)}
    assert racks == {"r0", "r1", "r2"}


def test_fewer_racks_than_control_planes_asks_only_for_distinct_hosts() -> None:
    fleet, topologies = _control_fleet(["r0", "r0", "r1"], {"max_per_host": 3, "racks": "any"})
    outcome = run_place(fleet, topologies)
    assert outcome.placement is not None, outcome.refusal
    assert _control_hosts(outcome.placement) == ["c0", "c1", "c2"]


def test_three_control_planes_on_two_control_hosts_are_refused() -> None:
    fleet, topologies = _control_fleet(["r0", "r1"], {"max_per_host": 3, "racks": "any"})
    assert not solve(fleet, topologies).feasible
    outcome = run_place(fleet, topologies)
    assert outcome.placement is None, _control_hosts(outcome.placement)
    assert outcome.refusal is not None and "control" in outcome.refusal


def test_control_planes_any_lets_them_share_a_host() -> None:
    spread = {"max_per_host": 3, "racks": "any", "control_planes": "any"}
    fleet, topologies = _control_fleet(["r0"], spread)
    assert solve(fleet, topologies).feasible
    outcome = run_place(fleet, topologies)
    assert outcome.placement is not None, outcome.refusal
    assert _control_hosts(outcome.placement) == ["c0", "c0", "c0"]
    assert violations(fleet, topologies, outcome.placement) == []


def test_a_refusal_is_read_for_whole_vm_names_and_ranges() -> None:
    fleet = grown(small_fleet(135)[0], "red", 8)
    said = "red: 4 worker VM(s) (red-worker-2 .. red-worker-4), red-worker-10 and not red-worker-1x"
    assert named_vms(said, fleet) == {"red-worker-2", "red-worker-3", "red-worker-4", "red-worker-10"}
