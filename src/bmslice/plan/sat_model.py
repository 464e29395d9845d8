"""A CP-SAT model written in the solver's text format, and solved: the one way bmslice talks to
OR-Tools CP-SAT - the planner's exact searches when their own steps run out
(`placement_sat.py`, `l3_sat.py`) and the fleet's placement (`fleet/placement/cpsat_model.py`).

ortools is imported only when a model is solved, and only its `cp_model_helper`: ortools'
own modelling layer (`cp_model`) pulls in numpy and pandas (0.3-0.5 s), while the helper
alone takes about 0.06 s. Deterministic: one worker, and by default a deterministic time
limit, so the answer is the same on any machine and under any load (a wall-clock limit,
for a budget the user gives in seconds, is the same unless the limit stops the search).

Variables are indices; a literal is a boolean variable's index, or `negated(index)` for its
negation (the format's own convention). A linear expression is a list of (variable,
coefficient) terms; constants go into the bounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from bmslice.errors import PlanError

Status = Literal["optimal", "feasible", "infeasible", "unknown"]
Terms = Sequence[tuple[int, int]]  # (variable, coefficient) pairs of a linear expression


class SatModel:
    """The model in CP-SAT's text format, built up one variable and constraint at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0

    def var(self, low: int, high: int, name: str = "") -> int:
        """A variable in [low, high]; `name` shows in the solver's log and in a dumped model."""
        named = f'name: "{_quoted(name)}" ' if name else ""
        self.lines.append(f"variables {{ {named}domain: [{low}, {high}] }}")
        self.count += 1
        return self.count - 1

    def linear(self, terms: Terms, low: int, high: int, enforce: Sequence[int] = ()) -> None:
        """low <= sum(coeff * var) <= high, terms as (var, coeff); only when every literal of
        `enforce` is true, if any."""
        if not terms:
            if not low <= 0 <= high:  # an empty sum is 0: a bound it breaks makes the model infeasible
                self.linear([(self.var(0, 0), 1)], low, high, enforce)
            return
        names = ", ".join(str(v) for v, _ in terms)
        coeffs = ", ".join(str(c) for _, c in terms)
        self.lines.append(
            f"constraints {{ {_enforced(enforce)}linear {{ vars: [{names}] coeffs: [{coeffs}] "
            f"domain: [{low}, {high}] }} }}"
        )

    def at_most(self, terms: Terms, high: int, enforce: Sequence[int] = ()) -> None:
        self.linear(terms, -_BIG, high, enforce)

    def equal(self, terms: Terms, value: int, enforce: Sequence[int] = ()) -> None:
        self.linear(terms, value, value, enforce)

    def literals(self, kind: str, variables: Sequence[int], enforce: Sequence[int] = ()) -> None:
        """kind: exactly_one, at_most_one or bool_or over literals (bool_or: only when every
        literal of `enforce` is true, if any)."""
        self.lines.append(
            f"constraints {{ {_enforced(enforce)}{kind} {{ literals: [{', '.join(map(str, variables))}] }} }}"
        )

    def objective(self, terms: Sequence[tuple[int, int]]) -> None:
        """Minimise sum(coeff * var)."""
        if terms:
            names = ", ".join(str(v) for v, _ in terms)
            coeffs = ", ".join(str(c) for _, c in terms)
            self.lines.append(f"objective {{ vars: [{names}] coeffs: [{coeffs}] }}")

    def hint(self, values: Mapping[int, int]) -> None:
        if values:
            names = ", ".join(str(v) for v in values)
            given = ", ".join(str(x) for x in values.values())
            self.lines.append(f"solution_hint {{ vars: [{names}] values: [{given}] }}")

    def minimum(self, target: int, first: Terms, first_offset: int, second: Terms, second_offset: int) -> None:
        """target == min(first + first_offset, second + second_offset)."""

        def negated(terms: Terms, offset: int) -> str:
            names = ", ".join(str(v) for v, _ in terms)
            coeffs = ", ".join(str(-c) for _, c in terms)
            return f"exprs {{ vars: [{names}] coeffs: [{coeffs}] offset: {-offset} }}"

        self.lines.append(
            f"constraints {{ lin_max {{ target {{ vars: [{target}] coeffs: [-1] }} "
            f"{negated(first, first_offset)} {negated(second, second_offset)} }} }}"
        )

    def fits(self, singles: Terms, pairs: Terms, twos: Terms, twos_const: int, ones: Terms, ones_const: int) -> None:
        """Singles and pairs fit on two- and one-thread cores (counts given as linear expressions):
        some singles on ones, some pairs on two ones, the rest on twos. The same test as
        `NodeFree.split`, which gives ones to singles first. The free cores are `twos` plus
        `twos_const` and `ones` plus `ones_const`, never more than the constants."""
        most = max(twos_const + ones_const, 0)
        on_ones = self.var(0, max(ones_const, 0))
        pairs_on_ones = self.var(0, max(ones_const, 0) // 2)
        self.linear([*singles, (on_ones, -1)], 0, most + sum(abs(c) for _, c in singles))
        self.linear([*pairs, (pairs_on_ones, -1)], 0, most + sum(abs(c) for _, c in pairs))
        self.linear([(on_ones, 1), (pairs_on_ones, 2), *[(v, -c) for v, c in ones]], -_BIG, ones_const)
        self.linear(
            [*singles, *pairs, (on_ones, -1), (pairs_on_ones, -1), *[(v, -c) for v, c in twos]], -_BIG, twos_const
        )

    def solve(self, time_limit: float, *, wall_clock: bool = False, tuning: str = "") -> tuple[Status, list[int]]:
        """CP-SAT's verdict and, when it found a solution, every variable's value. `time_limit`
        in deterministic seconds, or with `wall_clock` in seconds; `tuning`: more parameters,
        in the same text format."""
        from ortools.sat.python import cp_model_helper as sat

        limit = "max_time_in_seconds" if wall_clock else "max_deterministic_time"
        proto = sat.CpModelProto()
        params = sat.SatParameters()
        if not proto.parse_text_format("\n".join(self.lines)) or not params.parse_text_format(
            f"num_workers: 1 random_seed: 1 {limit}: {time_limit} {tuning}"
        ):
            raise PlanError("internal: CP-SAT did not parse a placement model")
        solver = sat.SolveWrapper()
        solver.set_parameters(params)
        response: sat.CpSolverResponse = solver.solve(proto)  # type: ignore[no-untyped-call]  # stub lacks types
        status = response.status
        if status == sat.CpSolverStatus.OPTIMAL:
            return "optimal", list(response.solution)
        if status == sat.CpSolverStatus.FEASIBLE:
            return "feasible", list(response.solution)
        if status == sat.CpSolverStatus.INFEASIBLE:
            return "infeasible", []
        return "unknown", []


def negated(literal: int) -> int:
    """The negation of a literal, as the format writes it (and back)."""
    return -literal - 1


def _enforced(enforce: Sequence[int]) -> str:
    return f"enforcement_literal: [{', '.join(map(str, enforce))}] " if enforce else ""


def _quoted(name: str) -> str:
    return name.replace("\\", "\\\\").replace('"', '\\"')


_BIG = 1 << 40  # an unbounded side of a linear constraint (CP-SAT wants finite bounds)
