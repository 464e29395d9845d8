"""Run host-changing steps so that any failure undoes what this run did, in reverse.

Each step says what it will do (for --dry-run and the report) and knows how to undo
itself. A failed undo is reported, never hidden, and the remaining undos still run; the
message then says ROLLBACK INCOMPLETE and never that the run was rolled back.

Ctrl-C (SIGINT), SIGTERM and SIGHUP (the operator's ssh session dropped) are failures like
any other. While steps run, the signals are only *noted*; the run stops at the next
checkpoint — between steps, and between the pieces of a long step such as a seed upload
(`checkpoint()`) — and rolls back. Acting at
checkpoints rather than raising from the signal handler means a signal can never land
between a change and the record that it was made, where its undo would be lost. During
the rollback further signals are noted and ignored, so a second Ctrl-C cannot cut it
short. SIGKILL cannot be caught: what it leaves, the next apply or `destroy` finds (see
ownership.py). The handlers are restored when the run ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

from bmslice.errors import ApplyError

# SIGHUP: the terminal (an ssh session) went away mid-run; by default it would kill the run where it stands
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    not_undone: list[str] = field(default_factory=list)  # the labels of the failed undos


class Interrupted(Exception):
    """A SIGINT or SIGTERM arrived while steps were running."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


@dataclass
class _Signals:
    pending: list[str] = field(default_factory=list)
    deferring: bool = False

    def note(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signal.Signals(signum).name)


_signals = _Signals()


def checkpoint() -> None:
    """Stop here if a signal arrived (no-op during a rollback, which must run to its end)."""
    if _signals.pending and not _signals.deferring:
        raise Interrupted(_signals.pending[0])


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Work that must finish once begun (putting something back): checkpoints pass."""
    before = _signals.deferring
    _signals.deferring = True
    try:
        yield
    finally:
        _signals.deferring = before


@contextmanager
def _signals_noted() -> Iterator[None]:
    # Python delivers signals to the main thread only; elsewhere the defaults stay.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _signals.pending.clear()
    _signals.deferring = False
    for sig in SIGNALS:
        signal.signal(sig, _signals.note)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _signals.pending.clear()
        _signals.deferring = False


LIBVIRT_LEFT = "the next apply or `bmslice destroy` finds what bmslice made"


def run_steps(
    steps: Sequence[Step],
    report: Callable[[str], None] = lambda _line: None,
    alive: Callable[[], bool] = lambda: True,
    left: str = LIBVIRT_LEFT,
) -> Outcome:
    """Run `steps` in order; on the first failure undo the completed ones and raise ApplyError.

    `alive` says whether the host can still be reached after a failure; when it cannot,
    the failed step may have taken effect unseen, and the message says so. `left` ends a
    ROLLBACK INCOMPLETE message: what finds or finishes what is left.
    """
    outcome = Outcome()
    completed: list[Step] = []
    with _signals_noted():
        for step in [*steps, None]:
            started = False
            try:
                checkpoint()
                if step is None:  # a signal during the last step still undoes the run
                    break
                report(step.description)
                started = True
                step.do()
            except BaseException as exc:  # any failure, signals included, must trigger the rollback
                _signals.deferring = True
                _rollback(completed, outcome, report)
                undoable = sum(1 for done in completed if done.undo is not None)
                raise ApplyError(_failure(step, started, exc, outcome, undoable, alive, left)) from exc
            completed.append(step)
            outcome.done.append(step.description)
    return outcome


def _failure(
    step: Step | None,
    started: bool,
    exc: BaseException,
    outcome: Outcome,
    undoable: int,
    alive: Callable[[], bool],
    left: str,
) -> str:
    if isinstance(exc, Interrupted) and not started:
        failed = f"{exc} " + (f"before {step.description}" if step is not None else "after the last step")
    else:
        assert step is not None
        failed = f"{step.description}: {_one_line(exc)}"
    problems = list(outcome.rollback_failures)
    if not _alive(alive):  # every undo failed for the same reason: name them, not the reason again
        lost = "libvirt can no longer be reached"
        problems = [f"{lost}, so '{step.description}' may have taken effect" if step and started else lost]
        if outcome.not_undone:
            problems.append(f"not undone: {', '.join(outcome.not_undone)}")
    if problems:
        return (
            f"{failed}; ROLLBACK INCOMPLETE: {' | '.join(problems)} (undid {len(outcome.rolled_back)} of "
            f"{undoable} step(s); {left})"
        )
    if outcome.rolled_back:
        return f"{failed}; rolled back {len(outcome.rolled_back)} step(s)"
    return failed


def _alive(alive: Callable[[], bool]) -> bool:
    try:
        return alive()
    except Exception:  # asking whether the host answers must not raise instead of answering
        return False


def _rollback(completed: list[Step], outcome: Outcome, report: Callable[[str], None]) -> None:
    for step in reversed(completed):
        if step.undo is None:
            continue
        label = step.undo_description or f"undo: {step.description}"
        with contextlib.suppress(Exception):  # a closed stdout (`| head`) must not cut the rollback short
            report(label)
        try:
            step.undo()
            outcome.rolled_back.append(label)
        except Exception as exc:  # keep undoing the rest; report what could not be undone
            outcome.rollback_failures.append(f"could not {label}: {_one_line(exc)}")
            outcome.not_undone.append(label)


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "get_error_message", lambda: None)() or str(exc) or type(exc).__name__
    return " ".join(str(text).split())
