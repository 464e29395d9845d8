"""`place`: the first pass where it can prove its layout best, CP-SAT where it cannot.

1. The problem (inputs.py): hosts, VM classes, the kept VMs that stay where they are.
2. Each rule's `check`: refusals that need no search.
3. The first pass (first_pass.py). When its layout's objective meets the rules' lower
   bounds it is proven optimal: every host's share is judged by the host planner
   (judge.py) and, accepted, that is the placement - without importing the solver.
4. Otherwise CP-SAT (cpsat_model.py) within the time budget: one model of the whole fleet
   when it is small enough (the first pass's layout kept should time run out), else the
   first pass's layout improved a few racks at a time (neighbourhood.py). Infeasible: the
   refusal says why (explain.py). Out of time: the best layout found, "feasible only".
5. Whatever the layout, the host planner judges every host's share; what it refuses is
   learned as a no-good (rules/host_planner.py) and the layout decided again.

With --allow-move the kept VMs first stay where they are (nothing moved is the best there
is, if the new VMs fit); only when no placement exists that way does every kept VM become
free to move, the fewest moves first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from bmslice.errors import PlanError
from bmslice.fleet import DEFAULT_BUDGET_S
from bmslice.fleet.placement.first_pass import first_pass
from bmslice.fleet.placement.inputs import build_problem
from bmslice.fleet.placement.judge import Verdict, judge, learn, settle
from bmslice.fleet.placement.problem import Problem, Spot, read_hosts
from bmslice.fleet.placement.result import to_placement
from bmslice.fleet.placement.rules import Rules
from bmslice.fleet.placement.rules.moves import moved, stays
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import Fleet, Objective, Placement
from bmslice.model.topology import HostTopology

FIRST_PASS_ROUNDS = 3  # first-pass runs with what the host planner taught; then the solver decides
JUDGE_ROUNDS = 50  # layouts the host planner may refuse before the fleet gives up
WHOLE_MODEL_VARIABLES = 40_000  # above this, a model of the whole fleet takes too long to build and solve


class _Infeasible(Exception):
    """The fixed problem has no placement (with --allow-move: let the kept VMs move)."""


def place(
    fleet: Fleet,
    topologies: Mapping[str, HostTopology],
    existing: Placement | None = None,
    *,
    allow_move: bool = False,
    budget_s: float = DEFAULT_BUDGET_S,
) -> Placement:
    """Place every VM of `fleet`; VMs of `existing` stay where they are (or, with `allow_move`,
    the fewest of them move). Raises PlanError when no placement exists, saying why; after
    `budget_s` seconds the best placement found is kept (`proven_optimal` False)."""
    clock = _Clock(budget_s)
    hosts = read_hosts(fleet, topologies)
    rules = Rules()
    try:
        problem = build_problem(fleet, topologies, existing, False, hosts)
        _check(problem, rules)
        return _decide(problem, rules, clock, explain=not allow_move or existing is None)
    except (PlanError, _Infeasible):
        if not allow_move or existing is None:
            raise
    movable = build_problem(fleet, topologies, existing, True, hosts)
    _check(movable, rules)
    return _decide(movable, rules, clock, explain=True)


JUDGE_S_PER_HOST = 0.004  # about what the host planner takes per host: kept for the last judgement


class _Clock:
    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.deadline = time.monotonic() + budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def search_deadline(self, hosts: int) -> float:
        """When a search must stop so that judging `hosts` hosts still ends within the budget."""
        return self.deadline - min(JUDGE_S_PER_HOST * hosts, self.budget_s / 2)


def _check(problem: Problem, rules: Rules) -> None:
    base = Tally.of(problem, problem.fixed)
    for rule in rules.all:
        refusal = rule.check(problem, base)
        if refusal is not None:
            raise PlanError(refusal)


def _decide(problem: Problem, rules: Rules, clock: _Clock, explain: bool) -> Placement:
    base = Tally.of(problem, problem.fixed)
    hint: dict[str, Spot] | None = None
    for _ in range(FIRST_PASS_ROUNDS):
        layout, stuck = first_pass(problem, base, rules)
        if stuck is not None:
            break
        if not _at_bounds(problem, rules, base, {**problem.fixed, **layout}):
            hint = layout
            break
        full = {**problem.fixed, **layout}
        verdict = judge(problem, full)
        if not verdict.refused:
            return _finish(problem, rules, full, verdict, proven=True)
        _learn(problem, full, verdict, rules)
    return _solve(problem, rules, hint, clock, explain)


def _at_bounds(problem: Problem, rules: Rules, base: Tally, layout: Mapping[str, Spot]) -> bool:
    return all(rule.cost(problem, layout) <= rule.lower_bound(problem, base) for rule in rules.objectives)


def _learn(problem: Problem, layout: Mapping[str, Spot], verdict: Verdict, rules: Rules) -> None:
    for host, reason in sorted(verdict.refused.items()):
        learn(problem, layout, host, reason, rules.host_planner)


def _variables(problem: Problem) -> int:
    """About how many placement variables a model of the whole problem has."""
    return sum(len(host.slots(cls.size.numa_nodes)) for cls in problem.classes for host in problem.role_hosts[cls.role])


def _solve(problem: Problem, rules: Rules, hint: dict[str, Spot] | None, clock: _Clock, explain: bool) -> Placement:
    from bmslice.fleet.placement.cpsat_model import build, solve
    from bmslice.fleet.placement.explain import refusal
    from bmslice.fleet.placement.neighbourhood import improve

    base = Tally.of(problem, problem.fixed)
    whole = _variables(problem) <= WHOLE_MODEL_VARIABLES
    for _ in range(JUDGE_ROUNDS):
        proven = False
        if whole or hint is None:
            # Not hinted: with one worker CP-SAT proves a fleet of 50 servers optimal about twice as
            # fast without the first pass's layout as with it. That layout is kept in case time runs out.
            model = build(problem, base, rules.all)
            solved = solve(model, clock.search_deadline(len(problem.hosts)) - time.monotonic())
            if solved.status == "infeasible":
                if not explain:
                    raise _Infeasible
                raise PlanError(refusal(problem, base, rules, clock.deadline))
            if solved.found:
                layout, proven = solved.layout, solved.status == "optimal"
            elif hint is not None:
                layout = hint  # out of time: the first pass's layout is the best there is
            else:
                raise PlanError(
                    f"no placement found within the time budget ({clock.budget_s:g} s) and none proven impossible; "
                    "give the solver more time (--time-budget)"
                )
        else:
            improved, proven = improve(
                problem, {**problem.fixed, **hint}, rules, clock.search_deadline(len(problem.hosts))
            )
            layout = {name: improved[name] for name in hint}
        full = {**problem.fixed, **layout}
        verdict = judge(problem, full)
        if not verdict.refused:
            return _finish(problem, rules, full, verdict, proven)
        _learn(problem, full, verdict, rules)
        hint = None if whole else _repair(problem, rules, layout, verdict, clock)
    raise PlanError("the host planner keeps refusing the fleet's placements; see `bmslice plan` on each host")


def _repair(
    problem: Problem, rules: Rules, layout: dict[str, Spot], verdict: Verdict, clock: _Clock
) -> dict[str, Spot]:
    """A large fleet's layout with the racks of the refused hosts solved again, what the host
    planner taught applied."""
    from bmslice.fleet.placement.cpsat_model import build, solve
    from bmslice.fleet.placement.neighbourhood import part

    refused = frozenset(problem.host(h).rack for h in verdict.refused)
    sub = part(problem, {**problem.fixed, **layout}, refused)  # every VM of those racks freed
    solved = solve(build(sub, Tally.of(sub, sub.fixed), rules.all), max(clock.left(), 1.0))
    if not solved.found:
        raise PlanError(
            f"the host planner refuses every layout of racks {', '.join(sorted(refused))} found: "
            f"{'; '.join(verdict.refused.values())}"
        )
    return {**layout, **solved.layout}


def _finish(problem: Problem, rules: Rules, layout: dict[str, Spot], verdict: Verdict, proven: bool) -> Placement:
    """The placement of an accepted layout: the nodes of VMs over several settled (the host
    planner's), the objective computed."""
    notes = list(problem.notes)
    notes += [
        f"the host planner refuses {no_good.text()}: {no_good.reason}; the fleet placed around it"
        for no_good in rules.host_planner.no_goods
    ]
    before = [rule.cost(problem, layout) for rule in rules.objectives]
    placed_now = {name for name in layout if name in problem.class_of and not _staying(problem, name, layout[name])}
    settle(problem, layout, verdict.plans, placed_now, notes)
    values = [rule.cost(problem, layout) for rule in rules.objectives]
    if values > before:
        proven = False  # the host planner's nodes for a VM over several are worse than the model's
    planned = tuple((host, plan.warnings) for host, plan in sorted(verdict.plans.items()))
    return to_placement(problem, layout, notes, Objective(*values), proven, moved(problem, layout), planned)


def _staying(problem: Problem, name: str, spot: Spot) -> bool:
    cls = problem.class_of[name]
    return cls.moving and stays(cls, spot)
