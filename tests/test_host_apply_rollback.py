"""host-apply interrupted by a real SIGINT/SIGTERM puts back every file and setting it changed.

The run is a real `bmslice host-apply` process on a host tree, stopped at a chosen step
without any hook in bmslice: its stdout is a pipe this test filled so that exactly the lines
before step k fit. host-apply prints each step's line just before it runs the step, so the
write of step k's line blocks, and the test sees the process blocked there
(`/proc/PID/wchan`). The signal lands then; once the pipe is drained, step k runs and the run
stops at its next checkpoint, before step k+1. So the test knows exactly what had been
changed when the signal came. (The lines before step k fill the pipe to the brim: the kernel
may write part of a line that does not fit whole, never a byte into a full pipe.)
"""

from __future__ import annotations

import array
import fcntl
import os
import shutil
import signal
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hosttrees import MACHINES, build
from libvirt_fixtures import Run, one_error

EXAMPLES = Path(__file__).parents[1] / "examples" / "server1"
F_SETPIPE_SZ = 1031  # Linux's fcntl command (fcntl.F_SETPIPE_SZ), spelled out for older type stubs
STUCK_S = 120.0  # how long to wait before calling a run stuck; nothing asserted is about time


def tree_state(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry below `root`: its kind and mode, and a file's content or a link's target."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            kind = f"{stat.S_IFMT(st.st_mode):o} {stat.S_IMODE(st.st_mode):o}"
            content: bytes | str = (
                os.readlink(path) if path.is_symlink() else path.read_bytes() if stat.S_ISREG(st.st_mode) else ""
            )
            out[str(path.relative_to(root))] = (kind, content)
    return out


@dataclass(frozen=True)
class HostApply:
    spec: Path
    root: Path
    lock_dir: Path

    def argv(self, *extra: str) -> list[str]:
        root = str(self.root)
        return [sys.executable, "-m", "bmslice.cli.main", "host-apply", str(self.spec), "--host-root", root, *extra]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "BMSLICE_LOCK_DIR": str(self.lock_dir)}

    def planned(self) -> tuple[str, list[str]]:
        """The header and the step lines the real run prints, from a dry run (which changes nothing)."""
        dry = subprocess.run(
            self.argv("--dry-run"), env=self.env, capture_output=True, text=True, check=True, timeout=STUCK_S
        )
        lines = dry.stdout.splitlines()
        steps = [line.replace("  would ", "  ", 1) for line in lines if line.startswith("  would ")]
        return lines[0].removeprefix("dry run: "), steps


def _queued(fd: int) -> int:
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def _in_pipe_write(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/wchan").read_text().endswith("pipe_write")  # anon_pipe_write on newer kernels
    except OSError:
        return False


def interrupt_at(
    run: HostApply, k: int, sig: signal.Signals | None, meanwhile: Callable[[], None] = lambda: None
) -> Run:
    """Run host-apply; send `sig` while it is held printing the line of step k (1-based), before step k
    runs. `meanwhile` runs while it is held there (`sig` None: only that, no signal)."""
    header, lines = run.planned()
    assert 1 <= k <= len(lines), lines
    before = "".join(f"{line}\n" for line in [header, *lines[: k - 1]]).encode()
    read_end, write_end = os.pipe()
    try:
        capacity = fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
        fill = capacity - len(before)  # what comes before step k's line fills the pipe to the brim
        assert fill >= 0, "the lines before step k do not fit in one page; choose an earlier step"
        os.write(write_end, b"#" * fill)
        stderr_path = run.lock_dir.parent / f"stderr-{k}-{sig.name if sig else 'none'}"
        with stderr_path.open("w+") as stderr:
            proc = subprocess.Popen(run.argv(), stdout=write_end, stderr=stderr, env=run.env)
            os.close(write_end)
            write_end = -1
            deadline = time.monotonic() + STUCK_S
            while not (_queued(read_end) == capacity and _in_pipe_write(proc.pid)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    stderr.seek(0)
                    pytest.fail(f"host-apply never stopped at step {k} ({lines[k - 1]!r}): {stderr.read()}")
                time.sleep(0.02)
            meanwhile()
            if sig is not None:
                proc.send_signal(sig)
            out = b""
            while chunk := os.read(read_end, 1 << 16):
                out += chunk
            proc.wait(timeout=STUCK_S)
            stderr.seek(0)
            return Run(tuple(run.argv()), proc.returncode, out[fill:].decode(), stderr.read())
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


@pytest.fixture
def server1(tmp_path: Path) -> HostApply:
    """The design note's server, Debian-style; one file there already, with other content and mode."""
    root = tmp_path / "server1"
    shutil.copytree(EXAMPLES / "host", root, symlinks=True)
    (root / "etc/bmslice").mkdir(parents=True)
    (root / "etc/debian_version").write_text("12.5\n")
    (root / "etc/bmslice/kernel-args").write_text("isolcpus=1\n")
    (root / "etc/bmslice/kernel-args").chmod(0o600)
    return HostApply(EXAMPLES / "spec.yaml", root, tmp_path / "locks")


def nps2(tmp_path: Path) -> HostApply:
    """An AMD machine in NPS2 whose 2 MiB pages are not reserved yet: host-apply sets them in sysfs."""
    built = build(tmp_path, MACHINES["amd-nps2"](), boot_args=False, hugepages=False)
    return HostApply(built.spec_path, built.root, tmp_path / "locks")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_an_interrupt_puts_back_every_file_it_wrote(server1: HostApply, sig: signal.Signals) -> None:
    before = tree_state(server1.root)
    _, lines = server1.planned()
    assert lines[1] == "  update /etc/bmslice/kernel-args"  # an old file to put back, content and mode
    done = interrupt_at(server1, 3, sig)
    assert one_error(done) == (
        f"error: host-apply interrupted by {sig.name} before {lines[3].strip()}; rolled back 3 step(s)"
    )
    assert tree_state(server1.root) == before  # content, modes, and no directory it made is left
    assert "  restore /etc/bmslice/kernel-args" in done.stdout.splitlines()
    assert "changed:" not in done.stdout


def test_an_interrupt_after_a_sysfs_setting_puts_the_old_value_back(tmp_path: Path) -> None:
    run = nps2(tmp_path)
    before = tree_state(run.root)
    _, lines = run.planned()
    k = next(i for i, line in enumerate(lines, 1) if line.startswith("  set /sys/"))
    done = interrupt_at(run, k, signal.SIGTERM)
    assert one_error(done) == (
        f"error: host-apply interrupted by SIGTERM before {lines[k].strip()}; rolled back {k} step(s)"
    )
    assert tree_state(run.root) == before


def test_an_interrupt_during_the_last_step_still_undoes_the_run(tmp_path: Path) -> None:
    run = nps2(tmp_path)
    before = tree_state(run.root)
    _, lines = run.planned()
    done = interrupt_at(run, len(lines), signal.SIGINT)
    assert one_error(done) == (
        f"error: host-apply interrupted by SIGINT after the last step; rolled back {len(lines)} step(s)"
    )
    assert tree_state(run.root) == before


def test_what_cannot_be_put_back_is_named(server1: HostApply, tmp_path: Path) -> None:
    """A link planted where a file was written: its undo is refused, not followed, and the message says so."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "bmslice.cfg").write_text("not bmslice's\n")
    grub_d = server1.root / "etc/default/grub.d"
    before = tree_state(server1.root)
    _, lines = server1.planned()
    assert lines[2] == "  create /etc/default/grub.d/bmslice.cfg"

    def plant() -> None:
        grub_d.rename(server1.root / "grub.d.moved")
        grub_d.symlink_to(victim)

    done = interrupt_at(server1, 4, signal.SIGINT, plant)
    assert one_error(done) == (
        f"error: host-apply interrupted by SIGINT before {lines[4].strip()}; ROLLBACK INCOMPLETE: could not "
        f"restore /etc/default/grub.d/bmslice.cfg: {grub_d} is a symbolic link; refused: bmslice writes through "
        "no link it did not make (undid 3 of 4 step(s); what is named was not put back; host-apply again "
        "finishes the plan)"
    )
    assert (victim / "bmslice.cfg").read_text() == "not bmslice's\n" and os.listdir(victim) == ["bmslice.cfg"]
    after = tree_state(server1.root)
    left = {"etc/default", "etc/default/grub.d", "grub.d.moved", "grub.d.moved/bmslice.cfg"}
    assert {rel: v for rel, v in after.items() if rel not in left} == before  # all else put back
    assert b"GRUB_CMDLINE_LINUX_DEFAULT" in after["grub.d.moved/bmslice.cfg"][1]  # the file named is what is left


def test_a_file_changed_between_plan_and_write_is_left_and_the_run_undone(server1: HostApply) -> None:
    """Someone writes /etc/default/grub.d/bmslice.cfg while host-apply is on the step before: the
    write is refused (their file is not overwritten), and what the run did so far is put back."""
    before = tree_state(server1.root)
    _, lines = server1.planned()
    assert lines[2] == "  create /etc/default/grub.d/bmslice.cfg"
    theirs = server1.root / "etc/default/grub.d/bmslice.cfg"

    def edit() -> None:
        theirs.parent.mkdir(parents=True, exist_ok=True)
        theirs.write_text('GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT quiet"\n')

    done = interrupt_at(server1, 3, None, edit)
    error = one_error(done)
    assert error.startswith(
        "error: host-apply failed: create /etc/default/grub.d/bmslice.cfg: /etc/default/grub.d/bmslice.cfg "
        "changed after bmslice read it"
    ), error
    assert "rolled back 2 step(s)" in error, error
    assert theirs.read_text() == 'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT quiet"\n'
    theirs_too = {"etc/default", "etc/default/grub.d", "etc/default/grub.d/bmslice.cfg"}  # what the edit made
    assert {rel: v for rel, v in tree_state(server1.root).items() if rel not in theirs_too} == before


def test_a_file_changed_after_its_write_is_not_rolled_back_over(server1: HostApply) -> None:
    """/etc/bmslice/kernel-args rewritten by someone after host-apply wrote it, then Ctrl-C: the undo
    would put back the old content over theirs; it leaves theirs and says so (ROLLBACK INCOMPLETE)."""
    _, lines = server1.planned()
    assert lines[1] == "  update /etc/bmslice/kernel-args"
    args = server1.root / "etc/bmslice/kernel-args"

    def edit() -> None:
        args.write_text("isolcpus=7\n")

    done = interrupt_at(server1, 4, signal.SIGINT, edit)
    error = one_error(done)
    assert error.startswith(f"error: host-apply interrupted by SIGINT before {lines[4].strip()}; ROLLBACK INCOMPLETE")
    assert (
        "could not restore /etc/bmslice/kernel-args: /etc/bmslice/kernel-args changed after bmslice wrote it" in error
    )
    assert "undid 3 of 4 step(s)" in error, error  # step 4 runs once the pipe drains, then the run stops
    assert args.read_text() == "isolcpus=7\n"
    assert not (server1.root / "etc/default/grub.d/bmslice.cfg").exists()  # the other steps were put back


def test_a_sysfs_value_changed_between_plan_and_set_is_left(tmp_path: Path) -> None:
    run = nps2(tmp_path)
    _, lines = run.planned()
    k = next(i for i, line in enumerate(lines, 1) if line.startswith("  set /sys/"))
    rel = lines[k - 1].split()[1].lstrip("/")
    target = run.root / rel

    def edit() -> None:
        target.write_text("3\n")

    done = interrupt_at(run, k, None, edit)
    error = one_error(done)
    assert f"/{rel} changed after bmslice read it (" in error and "-> 3); left as it is" in error, error
    assert f"rolled back {k - 1} step(s)" in error, error
    assert target.read_text() == "3\n"


@pytest.mark.parametrize("lines_read", [0, 2, 5])
def test_a_closed_stdout_mid_run_still_rolls_back(server1: HostApply, lines_read: int) -> None:
    """`bmslice host-apply SPEC | head -N`: the reader leaves, the next step's line cannot be
    written. That is a failure like any other: the run rolls back whole (the rollback's own lines
    going nowhere must not cut it short, as they did) and says so in one line on stderr."""
    before = tree_state(server1.root)
    proc = subprocess.Popen(server1.argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=server1.env)
    assert proc.stdout is not None and proc.stderr is not None
    for _ in range(lines_read):
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=STUCK_S) == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    # closed before the header was written, nothing had begun; else the step whose line failed is named
    closed_early = err == "error: standard output was closed before the command finished\n"
    assert (closed_early and not lines_read) or (
        err.startswith("error: host-apply failed: ") and "Broken pipe; rolled back" in err
    ), err
    assert tree_state(server1.root) == before
