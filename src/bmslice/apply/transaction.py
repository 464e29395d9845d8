"""Run host-changing steps so that any failure undoes what this run did, in reverse.

Each step says what it will do (for --dry-run and the report) and knows how to undo
itself. A failed undo is reported, never hidden, and the remaining undos still run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bmslice.errors import ApplyError


@dataclass
class Step:
    description: str
    do: Callable[[], object]
    undo: Callable[[], object] | None = None
    undo_description: str = ""


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    rollback_failures: list[str] = field(default_factory=list)


def run_steps(steps: Sequence[Step], report: Callable[[str], None] = lambda _line: None) -> Outcome:
    """Run `steps` in order; on the first failure undo the completed ones and raise ApplyError."""
    outcome = Outcome()
    completed: list[Step] = []
    for step in steps:
        report(step.description)
        try:
            step.do()
        except Exception as exc:  # any failure must trigger the rollback, whatever its type
            _rollback(completed, outcome, report)
            failed = f"{step.description}: {_one_line(exc)}"
            rolled = f"; rolled back {len(outcome.rolled_back)} step(s)" if outcome.rolled_back else ""
            broken = (
                f"; ROLLBACK INCOMPLETE: {' | '.join(outcome.rollback_failures)}" if outcome.rollback_failures else ""
            )
            raise ApplyError(f"{failed}{rolled}{broken}") from exc
        completed.append(step)
        outcome.done.append(step.description)
    return outcome


def _rollback(completed: list[Step], outcome: Outcome, report: Callable[[str], None]) -> None:
    for step in reversed(completed):
        if step.undo is None:
            continue
        label = step.undo_description or f"undo: {step.description}"
        report(label)
        try:
            step.undo()
            outcome.rolled_back.append(label)
        except Exception as exc:  # keep undoing the rest; report what could not be undone
            outcome.rollback_failures.append(f"{label}: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "get_error_message", lambda: None)() or str(exc) or type(exc).__name__
    return " ".join(str(text).split())
