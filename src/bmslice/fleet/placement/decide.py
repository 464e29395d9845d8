"""`place`: the first pass where it can prove its layout best, CP-SAT where it cannot.

1. The problem (inputs.py): hosts, VM classes, the kept VMs that stay where they are.
2. Each rule's `check`: refusals that need no search.
3. The first pass (first_pass.py); every host's share judged by the host planner (judge.py),
   its refusals learned as no-goods and the first pass run again (a few rounds).
4. If the layout's objective meets the rules' lower bounds it is proven optimal: done,
   without importing the solver.
5. Otherwise CP-SAT (cpsat_model.py), hinted with the first pass's layout, within the time
   budget; its layout judged the same way, no-goods learned, solved again. Infeasible: the
   refusal says why (explain.py). Out of time: the best layout found, "feasible only".
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
SOLVER_ROUNDS = 50  # solves with what the host planner taught, before giving up on a host's share


def place(
    fleet: Fleet,
    topologies: Mapping[str, HostTopology],
    existing: Placement | None = None,
    *,
    allow_move: bool = False,
    budget_s: float = DEFAULT_BUDGET_S,
) -> Placement:
    """Place every VM of `fleet`; VMs of `existing` stay where they are (or, with `allow_move`,
    the fewest of them move). Raises PlanError when no placement exists, saying why."""
    deadline = time.monotonic() + budget_s
    hosts = read_hosts(fleet, topologies)
    rules = Rules()
    try:
        problem: Problem | None = build_problem(fleet, topologies, existing, False, hosts)
    except PlanError:
        if not allow_move:
            raise
        problem = None  # a kept VM cannot stay: some must move
    hint: dict[str, Spot] | None = None
    if problem is not None:
        _check(problem, rules)
        decided = _first(problem, rules)
        if isinstance(decided, Placement):
            return decided
        hint = decided
        if hint is not None or not allow_move:
            return _solve(problem, rules, hint, deadline, budget_s)
    movable = build_problem(fleet, topologies, existing, True, hosts)
    _check(movable, rules)
    return _solve(movable, rules, None, deadline, budget_s)


def _check(problem: Problem, rules: Rules) -> None:
    base = Tally.of(problem, problem.fixed)
    for rule in rules.all:
        refusal = rule.check(problem, base)
        if refusal is not None:
            raise PlanError(refusal)


def _first(problem: Problem, rules: Rules) -> Placement | dict[str, Spot] | None:
    """The first pass's placement when proven optimal; else its layout as a hint (None: it
    found none the host planner accepts)."""
    base = Tally.of(problem, problem.fixed)
    for _ in range(FIRST_PASS_ROUNDS):
        layout, stuck = first_pass(problem, base, rules)
        if stuck is not None:
            return None
        full = {**problem.fixed, **layout}
        verdict = judge(problem, full)
        if verdict.refused:
            _learn(problem, full, verdict, rules)
            continue
        placement = _finish(problem, rules, full, set(layout), verdict, proven=None)
        return placement if placement.proven_optimal else layout
    return None


def _learn(problem: Problem, layout: Mapping[str, Spot], verdict: Verdict, rules: Rules) -> None:
    for host, reason in sorted(verdict.refused.items()):
        learn(problem, layout, host, reason, rules.host_planner)


def _solve(
    problem: Problem, rules: Rules, hint: dict[str, Spot] | None, deadline: float, budget_s: float
) -> Placement:
    from bmslice.fleet.placement.cpsat_model import build, solve
    from bmslice.fleet.placement.explain import refusal

    base = Tally.of(problem, problem.fixed)
    for _ in range(SOLVER_ROUNDS):
        model = build(problem, base, rules.all, hint=hint)
        solved = solve(model, deadline - time.monotonic())
        if solved.status == "infeasible":
            raise PlanError(refusal(problem, base, rules, deadline))
        if not solved.found:
            if hint is not None:
                return _accept(problem, rules, hint, proven=False)
            raise PlanError(
                f"no placement found within the time budget ({budget_s:g} s) and none proven impossible; "
                "give the solver more time (--time-budget)"
            )
        full = {**problem.fixed, **solved.layout}
        verdict = judge(problem, full)
        if verdict.refused:
            _learn(problem, full, verdict, rules)
            hint = None
            continue
        placed_now = {name for name in solved.layout if not _staying(problem, name, solved.layout[name])}
        return _finish(problem, rules, full, placed_now, verdict, proven=solved.status == "optimal")
    raise PlanError("the host planner keeps refusing the fleet's placements; see `bmslice plan` on each host")


def _accept(problem: Problem, rules: Rules, layout: dict[str, Spot], proven: bool) -> Placement:
    full = {**problem.fixed, **layout}
    verdict = judge(problem, full)
    placed_now = {name for name in layout if not _staying(problem, name, layout[name])}
    return _finish(problem, rules, full, placed_now, verdict, proven=proven)


def _staying(problem: Problem, name: str, spot: Spot) -> bool:
    cls = problem.class_of[name]
    return cls.moving and stays(cls, spot)


def _finish(
    problem: Problem,
    rules: Rules,
    layout: dict[str, Spot],
    placed_now: set[str],
    verdict: Verdict,
    proven: bool | None,
) -> Placement:
    """The placement of an accepted layout: nodes of VMs over several settled, the objective
    computed; `proven` None: proven when it meets the lower bounds."""
    notes = list(problem.notes)
    before = [rule.cost(problem, layout) for rule in rules.objectives]
    settle(problem, layout, verdict.plans, placed_now, notes)
    values = [rule.cost(problem, layout) for rule in rules.objectives]
    objective = Objective(*values)
    if proven and values > before:
        proven = False  # the host planner's nodes for a VM over several are worse than the model's
    if proven is None:
        base = Tally.of(problem, problem.fixed)
        proven = all(value <= rule.lower_bound(problem, base) for rule, value in zip(rules.objectives, values))
    return to_placement(problem, layout, notes, objective, proven, moved(problem, layout))
