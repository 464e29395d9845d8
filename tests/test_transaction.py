"""run_steps: rollback on failure and on SIGINT/SIGTERM, and what its message may claim.

Signals here are real: the process sends them to itself (os.kill) from inside a step or an
undo, so they arrive exactly where the test says, with the handlers run_steps installs.
"""

from __future__ import annotations

import os
import signal

import pytest

from bmslice.apply.transaction import Step, checkpoint, run_steps
from bmslice.errors import ApplyError


class Host:
    """A record of what the steps did to a pretend host, so a test can see what is left."""

    def __init__(self) -> None:
        self.state: list[str] = []
        self.lines: list[str] = []

    def step(self, name: str, do: object = None, undo: object = None) -> Step:
        def done() -> None:
            self.state.append(name)
            if callable(do):
                do()

        def undone() -> None:
            if callable(undo):
                undo()
            self.state.remove(name)

        return Step(f"make {name}", done, undone, f"remove {name}")


def kill_self(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_step_rolls_back_everything_and_handlers_come_back(sig: signal.Signals) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    host = Host()
    steps = [host.step("a"), host.step("b", lambda: kill_self(sig)), host.step("c")]
    with pytest.raises(ApplyError) as err:
        run_steps(steps, host.lines.append)
    assert host.state == []  # b, which completed when the signal came, is undone too
    assert str(err.value) == f"interrupted by {sig.name} before make c; rolled back 2 step(s)"
    assert host.lines == ["make a", "make b", "remove b", "remove a"]
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_long_step_stops_at_its_checkpoint() -> None:
    host = Host()
    pieces: list[int] = []

    def upload() -> None:
        for piece in range(10):
            checkpoint()
            pieces.append(piece)
            if piece == 2:
                kill_self(signal.SIGINT)

    with pytest.raises(ApplyError, match=r"^make upload: interrupted by SIGINT; rolled back 1 step\(s\)$"):
        run_steps([host.step("a"), Step("make upload", upload)], host.lines.append)
    assert pieces == [0, 1, 2] and host.state == []


def test_a_second_signal_during_the_rollback_does_not_cut_it_short() -> None:
    host = Host()

    def undo_interrupted() -> None:
        kill_self(signal.SIGINT)
        kill_self(signal.SIGTERM)
        checkpoint()  # a long undo's checkpoint passes during a rollback

    steps = [host.step("a"), host.step("b", undo=undo_interrupted), host.step("c", lambda: kill_self(signal.SIGINT))]
    with pytest.raises(ApplyError, match=r"rolled back 3 step\(s\)$"):
        run_steps(steps, host.lines.append)
    assert host.state == []


def test_a_signal_during_the_last_step_still_undoes_the_run() -> None:
    host = Host()
    with pytest.raises(ApplyError, match=r"^interrupted by SIGTERM after the last step; rolled back 2 step\(s\)$"):
        run_steps([host.step("a"), host.step("b", lambda: kill_self(signal.SIGTERM))], host.lines.append)
    assert host.state == []


def test_an_undo_that_fails_is_reported_and_never_called_rolled_back() -> None:
    host = Host()

    def gone() -> None:
        raise ConnectionError("End of file while reading data: Input/output error")

    steps = [host.step("a"), host.step("b", undo=gone), host.step("c"), Step("make d", lambda: 1 / 0)]
    with pytest.raises(ApplyError) as err:
        run_steps(steps, host.lines.append)
    message = str(err.value)
    assert message.startswith("make d: division by zero; ROLLBACK INCOMPLETE: could not remove b: End of file")
    assert "(undid 2 of 3 step(s);" in message and "rolled back" not in message
    assert host.state == ["b"]  # what the message says is left, is left


def test_a_lost_host_makes_the_failed_step_itself_uncertain() -> None:
    host = Host()

    def lost() -> None:
        raise ConnectionError("connection reset")

    steps = [host.step("a", undo=lost), host.step("b"), Step("define x", lost)]
    with pytest.raises(ApplyError) as err:
        run_steps(steps, host.lines.append, alive=lambda: False)
    message = str(err.value)
    assert message == (
        "define x: connection reset; ROLLBACK INCOMPLETE: libvirt can no longer be reached, so 'define x' may "
        "have taken effect | not undone: remove a (undid 1 of 2 step(s); the next apply or `bmslice destroy` "
        "finds what bmslice made)"
    )
    assert host.state == ["a"]


def test_nothing_stays_pending_after_an_interrupted_run() -> None:
    host = Host()
    with pytest.raises(ApplyError, match="interrupted by SIGINT"):
        run_steps([host.step("a", lambda: kill_self(signal.SIGINT))])
    checkpoint()  # outside a run, and the old signal is forgotten: no Interrupted
    assert run_steps([host.step("b")]).done == ["make b"]
