"""A lab signals only its own processes, and its state files are read strictly (issue 19, class 6).

No lab boots here: the lab's QEMU is stood in for, as a *process*, by a sleeping Python
whose argv carries what a lab's QEMU carries (`-name bmslice-lab-<name>,process=...` and
`-pidfile <state>/<name>/qemu.pid`). That is all `lab down` may go by in the process table.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bmslice.lab import machine, processes
from bmslice.lab.shape import DESIGN_NOTE_TWIN
from bmslice.lab.state import LabDir, LabInfo, LabStateError, read_info, write_info

NAP = "import time; time.sleep(300)"
# the wrapper (`timeout`) starts its QEMU in its own process group, both carrying the lab's argv
SLEEPER = (
    "import subprocess, sys, time\n"
    "if sys.argv[1] == 'wrapper':\n"
    f"    subprocess.Popen([sys.executable, '-c', {NAP!r}, 'qemu', *sys.argv[2:]])\n"
    "time.sleep(300)\n"
)


class Fakes:
    """Fake lab processes this test started, stopped at the end whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, root: Path, role: str = "qemu") -> subprocess.Popen[bytes]:
        """A process whose argv is a lab's: `role` wrapper also starts a child 'qemu' in its group."""
        argv = [sys.executable, "-c", SLEEPER, role, "-name", f"bmslice-lab-{name},process=bmslice-lab-{name}"]
        argv += ["-pidfile", str(root / name / "qemu.pid")]
        proc = subprocess.Popen(argv, start_new_session=True)
        self.procs.append(proc)
        return proc

    def group(self, pgid: int) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) == pgid and processes._argv(int(entry.name)) is not None:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    handle = Fakes()
    try:
        yield handle
    finally:
        handle.stop()


def _info(name: str, pid: int) -> LabInfo:
    return LabInfo(name, DESIGN_NOTE_TWIN, "console=ttyS0", pid, time.time(), 3600, {"qemu-system-x86": "1:10.0"})


def _state(root: Path, name: str, pid: int | None = None) -> LabDir:
    lab = LabDir.of(name, root)
    lab.share.mkdir(parents=True)
    if pid is not None:
        write_info(lab, _info(name, pid))
    return lab


def _wait_for_pid(proc: subprocess.Popen[bytes], lab: LabDir) -> None:
    deadline = time.monotonic() + 20
    while not processes.is_lab_process(proc.pid, lab) and time.monotonic() < deadline:
        time.sleep(0.05)  # the interpreter starting
    assert processes.is_lab_process(proc.pid, lab)


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BMSLICE_LAB_STATE": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "bmslice.cli.main", "lab", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


# --- whose process is it ---------------------------------------------------------------------


@pytest.mark.parametrize(("mine", "other"), [("x", "x2"), ("lab", "labtest"), ("lab", "la")])
def test_lab_down_never_signals_another_labs_process(tmp_path: Path, fakes: Fakes, mine: str, other: str) -> None:
    theirs = fakes.start(other, tmp_path)
    _wait_for_pid(theirs, LabDir.of(other, tmp_path))
    # my lab's state names their pid (a pid reused, or a hand-edited file), and their pid file too
    lab = _state(tmp_path, mine, theirs.pid)
    lab.pidfile.write_text(f"{theirs.pid}\n")
    assert not processes.is_lab_process(theirs.pid, lab)
    done = _cli(tmp_path, "down", "--name", mine)
    assert done.returncode == 0 and f"lab {mine} was not up" in done.stdout, done
    assert f"lab {mine}'s QEMU no longer runs (pid {theirs.pid}); removing its stale state" in done.stderr, done
    assert theirs.poll() is None, f"lab down --name {mine} stopped lab {other}'s process"
    assert not lab.path.exists() and (tmp_path / other).exists() is False  # the other lab had no state here


def test_the_same_name_under_another_state_root_is_not_this_lab(tmp_path: Path, fakes: Fakes) -> None:
    elsewhere = tmp_path / "elsewhere"
    theirs = fakes.start("x", elsewhere)
    _wait_for_pid(theirs, LabDir.of("x", elsewhere))
    lab = _state(tmp_path / "here", "x", theirs.pid)
    assert not processes.is_lab_process(theirs.pid, lab)
    assert machine.down("x", tmp_path / "here", grace_s=0.2) is False
    assert theirs.poll() is None


def test_lab_down_stops_its_own_wrapper_and_qemu(tmp_path: Path, fakes: Fakes) -> None:
    wrapper = fakes.start("x", tmp_path, role="wrapper")
    lab = _state(tmp_path, "x", wrapper.pid)
    _wait_for_pid(wrapper, lab)
    deadline = time.monotonic() + 20
    while len(fakes.group(wrapper.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = fakes.group(wrapper.pid)
    assert len(members) == 2 and all(processes.is_lab_process(pid, lab) for pid in members)
    said: list[str] = []
    assert machine.down("x", tmp_path, grace_s=0.2, say=said.append) is True
    assert wrapper.wait(timeout=10) == -signal.SIGTERM
    assert not any(processes.is_lab_process(pid, lab) for pid in members), members
    assert not lab.path.exists()
    assert "the lab did not power off within 0 s; stopping its QEMU" in said


@pytest.mark.parametrize("with_wrapper", [True, False])
def test_a_malformed_state_still_finds_the_labs_qemu_through_its_pid_file(
    tmp_path: Path, fakes: Fakes, with_wrapper: bool
) -> None:
    lab = _state(tmp_path, "x")
    lab.meta.write_text('{"name": "x", "shape": {"sock')  # cut short
    leader = fakes.start("x", tmp_path, role="wrapper" if with_wrapper else "qemu")
    _wait_for_pid(leader, lab)
    qemu = leader.pid
    if with_wrapper:  # QEMU is the wrapper's child; its pid file names the child
        deadline = time.monotonic() + 20
        while len(fakes.group(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        qemu = next(pid for pid in fakes.group(leader.pid) if pid != leader.pid)
    lab.pidfile.write_text(f"{qemu}\n")
    assert processes.find(lab, None) == processes.LabProcess(leader.pid, True)
    said: list[str] = []
    assert machine.down("x", tmp_path, grace_s=0.2, say=said.append) is True
    leader.wait(timeout=10)
    assert not processes.is_lab_process(qemu, lab)
    assert said[0].startswith(f"lab x: {lab.meta}: not JSON: Unterminated string") and said[0].endswith(
        "; clearing it"
    ), said
    assert not lab.path.exists()


def test_a_pid_file_that_names_someone_else_is_ignored(tmp_path: Path) -> None:
    lab = _state(tmp_path, "x")
    for text in (f"{os.getpid()}\n", "1\n", "0\n", "-1\n", "99999999999\n", "12 13\n", "\x00"):
        lab.pidfile.write_text(text)
        assert processes.find(lab, None) is None, text
    assert machine.down("x", tmp_path) is False
    assert not lab.path.exists()


def test_lab_up_refuses_while_a_qemu_of_that_name_runs(tmp_path: Path, fakes: Fakes) -> None:
    lab = _state(tmp_path, "x")
    qemu = fakes.start("x", tmp_path)
    _wait_for_pid(qemu, lab)
    lab.pidfile.write_text(f"{qemu.pid}\n")  # no lab.json: an `up` whose state was lost
    done = _cli(tmp_path, "up", "--name", "x")
    assert done.returncode == 2 and done.stderr == "error: lab x is already up; `bmslice lab down --name x` first\n"
    assert done.stdout == "" and qemu.poll() is None


# --- the state file ----------------------------------------------------------------------------


def _good(pid: int = 4242) -> dict[str, object]:
    return _info("x", pid).to_dict()


def _with(path: str, value: object) -> dict[str, object]:
    data = json.loads(json.dumps(_good()))
    *parents, last = path.split(".")
    where = data
    for key in parents:
        where = where[key]
    if value is _DROP:
        del where[last]
    else:
        where[last] = value
    return data


_DROP = object()

MALFORMED: list[tuple[str, bytes, str]] = [
    ("truncated", json.dumps(_good()).encode()[:40], "not JSON: Unterminated string"),
    ("empty", b"", "not JSON: Expecting value at line 1"),
    ("not utf-8", b'{"name": "\xff"}', "not UTF-8"),
    ("a list", b"[1, 2]", "Expected `object`, got `array`"),
    ("pid as text", json.dumps(_with("wrapper_pid", "4242")).encode(), "wrapper_pid: Expected `int"),
    ("pid as bool", json.dumps(_with("wrapper_pid", True)).encode(), "wrapper_pid: Expected `int"),
    ("pid 1", json.dumps(_with("wrapper_pid", 1)).encode(), "wrapper_pid 1 is not a process bmslice starts"),
    ("pid 0", json.dumps(_with("wrapper_pid", 0)).encode(), "wrapper_pid 0 is not a process bmslice starts"),
    ("sockets as text", json.dumps(_with("shape.sockets", "2")).encode(), "shape.sockets: Expected `int`, got `str`"),
    ("unknown key", json.dumps(_with("shape.l3_per_node", 2)).encode(), "shape.l3_per_node"),
    ("missing key", json.dumps(_with("kernel_args", _DROP)).encode(), "kernel_args: required field is missing"),
    ("impossible shape", json.dumps(_with("shape.sockets", 3)).encode(), "one must divide the other"),
    ("versions a list", json.dumps(_with("versions", [])).encode(), "versions: Expected `object`, got `array`"),
    ("another lab", json.dumps(_with("name", "y")).encode(), "name: it records lab 'y'"),
    ("bad name", json.dumps(_with("name", "Y\n")).encode(), "lab name"),
    ("infinite start", json.dumps(_with("started", float("inf"))).encode(), "Infinity is not a number bmslice accepts"),
]


@pytest.mark.parametrize(("case", "content", "words"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_state_is_one_error_line_and_down_clears_it(
    tmp_path: Path, case: str, content: bytes, words: str
) -> None:
    lab = _state(tmp_path, "x")
    lab.meta.write_bytes(content)
    with pytest.raises(LabStateError) as caught:
        read_info(lab)
    assert words in str(caught.value), (case, str(caught.value))
    for args in (("status",), ("run", "--name", "x", "--", "true"), ("up", "--name", "x")):
        done = _cli(tmp_path, *args)
        assert done.returncode == 2 and done.stdout == "", (args, done)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: lab x: {lab.meta}: "), (args, done)
        assert done.stderr.rstrip().endswith("`bmslice lab down --name x` clears it"), (args, done)
        assert words in done.stderr, (args, done)
    down = _cli(tmp_path, "down", "--name", "x")
    assert down.returncode == 0 and "lab x was not up" in down.stdout, down
    assert down.stderr.startswith(f"  lab x: {lab.meta}: ") and "; clearing it" in down.stderr, down
    assert "Traceback" not in down.stderr and not lab.path.exists()


def test_a_directory_or_link_in_place_of_the_state(tmp_path: Path) -> None:
    lab = _state(tmp_path, "x")
    lab.meta.mkdir()
    with pytest.raises(LabStateError, match="a directory, not a regular file"):
        read_info(lab)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("not the lab's\n")
    lab2 = LabDir.of("y", tmp_path)
    lab2.path.symlink_to(target)
    assert machine.down("y", tmp_path) is False
    assert not lab2.path.is_symlink() and (target / "keep").exists()  # the link went, not what it pointed at


def test_state_round_trips_and_is_written_whole(tmp_path: Path) -> None:
    lab = _state(tmp_path, "x")
    info = _info("x", 4242)
    write_info(lab, info)
    assert read_info(lab) == info
    assert sorted(p.name for p in lab.path.iterdir()) == ["lab.json", "share"]  # no temporary left


def test_stale_state_is_removed_with_a_message(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    lab = _state(tmp_path, "x", gone.pid)
    done = _cli(tmp_path, "down", "--name", "x")
    assert done.returncode == 0 and "lab x was not up" in done.stdout
    assert f"lab x's QEMU no longer runs (pid {gone.pid}); removing its stale state" in done.stderr
    assert not lab.path.exists()
    status = _cli(tmp_path, "status")
    assert status.returncode == 0 and status.stdout == "no lab is up\n"


def test_only_a_lab_on_a_root_disk_reboots(tmp_path: Path, fakes: Fakes) -> None:
    qemu = fakes.start("x", tmp_path)
    lab = _state(tmp_path, "x", qemu.pid)
    _wait_for_pid(qemu, lab)
    done = _cli(tmp_path, "reboot", "--name", "x")
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr == (
        "error: lab x keeps its changes in memory, so a reboot would lose them: boot it with --systemd "
        "(a root disk kept across reboots)\n"
    )
    assert qemu.poll() is None  # nothing was signalled


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge", "directory"])
def test_a_pid_file_or_console_that_is_no_regular_file_does_not_hang_down(
    tmp_path: Path, fakes: Fakes, kind: str
) -> None:
    """qemu.pid (and console.log) made a FIFO, a link to /dev/zero, a huge file or a directory:
    reading them used to block on the FIFO or fill memory from /dev/zero. They are read bounded,
    regular files only; a running QEMU of another lab is still left alone."""
    theirs = fakes.start("y", tmp_path)
    _wait_for_pid(theirs, LabDir.of("y", tmp_path))
    lab = _state(tmp_path, "x")
    for path in (lab.pidfile, lab.console):
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dev-zero":
            path.symlink_to("/dev/zero")
        elif kind == "huge":
            path.write_text(f"{theirs.pid}\n" + "0" * (1 << 20))
        else:
            path.mkdir()
    assert processes.qemu_pid(lab) is None and processes.find(lab, None) is None
    assert lab.console_tail() == "(no console output)" or kind == "huge"
    done = _cli(tmp_path, "down", "--name", "x")
    assert done.returncode == 0 and "lab x was not up" in done.stdout, done
    assert "left a state directory without lab.json; removing it" in done.stderr, done
    assert not lab.path.exists() and theirs.poll() is None


def test_the_console_tail_is_bounded(tmp_path: Path) -> None:
    lab = _state(tmp_path, "x")
    lab.console.write_bytes(b"early line\n" * 20000 + b"".join(b"line %d\n" % i for i in range(40)))
    tail = lab.console_tail()
    assert tail.splitlines() == [f"line {i}" for i in range(15, 40)]


def test_a_process_renamed_to_look_like_the_labs_qemu_is_not_signalled(tmp_path: Path) -> None:
    """`exec -a` gives `sleep` the lab's whole command line as one argv[0] (so `ps` shows a QEMU
    of lab x): the options are not whole arguments, so it is not the lab's; nor is a process whose
    -name is the lab's but whose -pidfile is another path, or that has the options in the wrong order."""
    lab = _state(tmp_path, "x")
    name = "bmslice-lab-x,process=bmslice-lab-x"
    disguises = [
        ([f"qemu-system-x86_64 -name {name} -pidfile {lab.pidfile}", "300"], "/bin/sleep"),
        (["qemu-system-x86_64", "-name", name, "-pidfile", f"{lab.pidfile}.old", "300"], None),
        (["qemu-system-x86_64", "-pidfile", "-name", name, str(lab.pidfile), "300"], None),
    ]
    started = []
    try:
        for argv, executable in disguises:
            if executable is None:  # a python that sleeps, carrying the argv after its script
                argv = [sys.executable, "-c", NAP, *argv]
            started.append(subprocess.Popen(argv, executable=executable, start_new_session=True))
        for proc in started:
            deadline = time.monotonic() + 20
            while (processes._argv(proc.pid) or [b""])[-2:-1] != [b"300"] and time.monotonic() < deadline:
                time.sleep(0.05)  # the interpreter starting: wait until the disguise is in its argv
            assert (processes._argv(proc.pid) or [])[-2:-1] == [b"300"]
            lab.pidfile.write_text(f"{proc.pid}\n")
            write_info(lab, _info("x", proc.pid))
            assert not processes.is_lab_process(proc.pid, lab)
            assert machine.down("x", tmp_path, grace_s=0.2) is False
            assert proc.poll() is None
            lab = _state(tmp_path, "x")
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("plant", ["link-to-host-file", "fifo", "dev-zero", "bad-rc"])
def test_what_the_guest_plants_in_a_jobs_share_is_not_followed(tmp_path: Path, fakes: Fakes, plant: str) -> None:
    """The lab's guest writes a job's out, err and rc in the 9p share; a guest that makes them a
    link to a host file, a FIFO or /dev/zero must not make `lab run` print the host's file, hang
    or fill memory; an exit code that is not one is refused."""
    import threading

    from bmslice.errors import LabError

    qemu = fakes.start("x", tmp_path)
    lab = _state(tmp_path, "x", qemu.pid)
    _wait_for_pid(qemu, lab)
    lab.jobs.mkdir()  # as `lab up` leaves it
    secret = tmp_path / "host-secret"
    secret.write_text("host only\n")

    def guest() -> None:  # what the lab's jobs.sh does, but hostile
        deadline = time.monotonic() + 30
        while not (jobs := [p for p in lab.jobs.iterdir() if (p / "go").exists()]) and time.monotonic() < deadline:
            time.sleep(0.02)
        job = jobs[0]
        if plant == "link-to-host-file":
            (job / "out").symlink_to(secret)
        elif plant == "fifo":
            os.mkfifo(job / "out")
        elif plant == "dev-zero":
            (job / "out").symlink_to("/dev/zero")
        (job / "err").write_bytes(b"a line on stderr\n")
        (job / "rc").write_text("0\n" if plant != "bad-rc" else "-7 or so\n")

    planter = threading.Thread(target=guest)
    planter.start()
    out: list[bytes] = []
    err: list[bytes] = []
    try:
        if plant == "bad-rc":
            with pytest.raises(LabError, match="the lab wrote an unreadable exit code"):
                machine.run("x", machine.Job(argv=("true",)), out.append, err.append, state_root=tmp_path)
        else:
            assert machine.run("x", machine.Job(argv=("true",)), out.append, err.append, state_root=tmp_path) == 0
    finally:
        planter.join()
    assert out == [] and b"".join(err) == b"a line on stderr\n"
    assert list(lab.jobs.iterdir()) == [] and secret.read_text() == "host only\n"


def test_links_the_guest_left_in_the_share_lead_no_host_write_out_of_it(tmp_path: Path, fakes: Fakes) -> None:
    """share/poweroff made a link to a host path that must not appear (/etc/nologin, say): lab down's
    power-off request replaces the link, never creates its target; share/jobs made a link to a host
    directory: lab run refuses before writing a job there."""
    from bmslice.errors import LabError

    qemu = fakes.start("x", tmp_path)
    lab = _state(tmp_path, "x", qemu.pid)
    _wait_for_pid(qemu, lab)
    elsewhere = tmp_path / "host-dir"
    elsewhere.mkdir()
    lab.jobs.symlink_to(elsewhere)
    with pytest.raises(LabError, match=r"share/jobs is not a directory \(a link or other file"):
        machine.run("x", machine.Job(argv=("true",)), print, print, state_root=tmp_path)
    assert list(elsewhere.iterdir()) == []
    nologin = tmp_path / "nologin"
    (lab.share / "poweroff").symlink_to(nologin)
    assert machine.down("x", tmp_path, grace_s=0.2) is True
    assert not nologin.exists() and not os.path.lexists(nologin)
    assert qemu.wait(timeout=10) == -signal.SIGTERM
