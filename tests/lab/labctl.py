"""Driving the lab from the lab-test lane: `bmslice lab ...` on this machine, bmslice inside.

Everything goes through bmslice's own CLI, the way a user rehearses: `bmslice lab up`,
`bmslice lab run -- <repo>/.venv/bin/bmslice ...`, `bmslice lab down`. Each step prints
what runs and for how long; a failed check shows the command's output and the lab's
console tail.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv/bin"
BMSLICE = str(VENV_BIN / "bmslice")  # the same path inside the lab: it shares this machine's /
# BMSLICE_LAB_NAME: a lab of one's own (several people may run scenarios on one machine; `lab up`
# of a name first powers off the lab of that name)
LAB = os.environ.get("BMSLICE_LAB_NAME", "labtest")
STATE_ROOT = Path(os.environ.get("BMSLICE_LAB_STATE", "/run/bmslice/lab"))
STATE = STATE_ROOT / LAB
T0 = time.monotonic()


def say(line: str) -> None:
    print(f"[lab-test {time.monotonic() - T0:6.0f} s] {line}", flush=True)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    rc: int
    out: str
    err: str
    seconds: float
    lab: str = LAB

    def json(self) -> Any:
        return json.loads(self.out)

    def report(self) -> str:
        return (
            f"$ {shlex.join(self.argv)}\nexit {self.rc} after {self.seconds:.0f} s\n"
            f"--- stdout ---\n{self.out[-4000:]}\n--- stderr ---\n{self.err[-4000:]}\n"
            f"--- lab {self.lab} console (tail) ---\n{console_tail(lab=self.lab)}"
        )

    def expect(self, rc: int = 0) -> Result:
        assert self.rc == rc, f"expected exit {rc}\n{self.report()}"
        return self


def console_tail(lines: int = 30, lab: str = LAB) -> str:
    try:
        text = (STATE_ROOT / lab / "console.log").read_text(errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.replace("\r", "").splitlines()[-lines:])


def host(*args: str, timeout: int = 900) -> Result:
    """`bmslice ARGS` on this machine (lab up / down / status); its progress lines shown as they come."""
    argv = (BMSLICE, *args)
    say(f"host: bmslice {' '.join(args)}")
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err: list[str] = []
    for line in proc.stderr:  # ends when bmslice exits (a hang is bounded by its own timeouts)
        err.append(line)
        say(f"  {line.rstrip()}")
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
    return Result(argv, proc.returncode, out, "".join(err), time.monotonic() - start)


def run(*argv: str, files: Iterable[Path] = (), timeout: int = 600, cwd: str | None = None, lab: str = LAB) -> Result:
    """ARGV inside the lab, through `bmslice lab run` (files copied in; they run where the copies are)."""
    lab_argv: list[str] = [BMSLICE, "lab", "run", "--name", lab, "--timeout", str(timeout), "--heartbeat", "30"]
    for path in files:
        lab_argv += ["--file", str(path)]
    if cwd:
        lab_argv += ["--cwd", cwd]
    lab_argv += ["--", *argv]
    shown = " ".join(argv).replace(BMSLICE, "bmslice")
    if "\n" in shown:  # a script: its first line is enough for the log
        shown = next(line for line in shown.splitlines() if line.strip()) + " ..."
    say(f"lab{'' if lab == LAB else ' ' + lab}: {shown}")
    start = time.monotonic()
    proc = subprocess.Popen(lab_argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    seconds = time.monotonic() - start
    for line in err.splitlines():
        if line.startswith("  still running"):
            say(f"  {line.strip()}")
    result = Result(
        tuple(argv),
        proc.returncode,
        out,
        "\n".join(ln for ln in err.splitlines() if not ln.startswith("  still running")),
        seconds,
        lab,
    )
    say(f"  -> exit {result.rc} in {seconds:.0f} s")
    return result


def bmslice(*args: str, files: Iterable[Path] = (), timeout: int = 900, lab: str = LAB) -> Result:
    return run(BMSLICE, *args, files=files, timeout=timeout, lab=lab)


def sh(script: str, files: Iterable[Path] = (), timeout: int = 300, lab: str = LAB) -> Result:
    return run("/bin/sh", "-c", script, files=files, timeout=timeout, lab=lab)


def up_args(name: str, kernel_args: Sequence[str] = (), like: str | None = None, *extra: str) -> list[str]:
    args = ["lab", "up", "--name", name, "--ttl", "5400", "--boot-timeout", "900"]
    if kernel_args:
        args += ["--append", " ".join(kernel_args)]
    if like:
        args += ["--like", like]
    return args + list(extra)


def status_of(name: str) -> dict[str, Any]:
    status = host("lab", "status", "--json").expect().json()
    found = [lab for lab in status if lab["name"] == name and lab["running"]]
    assert found, f"bmslice lab status does not list {name} as running: {status}"
    return dict(found[0])


def boot(
    kernel_args: Sequence[str] = (), like: str | None = None, name: str = LAB, extra: Sequence[str] = ()
) -> dict[str, Any]:
    """(Re)boot a test lab with these extra kernel args (shaped after `like`); its status JSON."""
    host("lab", "down", "--name", name, timeout=120)
    up = host(*up_args(name, kernel_args, like, *extra), timeout=1800)
    assert up.rc == 0, f"lab {name} did not come up\n{up.report()}"
    info = status_of(name)
    info["up_stdout"] = up.out
    say(f"lab {name} up in {up.seconds:.0f} s; kernel args: {info['kernel_args']}")
    return info


class Booting:
    """`bmslice lab up` started now, in the background, while other scenarios run; `wait()` joins it.

    The lane runs on a machine of 2 CPUs and each lab's QEMU uses one (single-threaded TCG):
    booting the next lab while the last one's scenarios run keeps both busy.
    """

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        host("lab", "down", "--name", name, timeout=120)
        self.argv = (BMSLICE, *args)
        self.log = STATE_ROOT.parent / f"lab-up-{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        say(f"host (background): bmslice {' '.join(args)}")
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, text=True)

    def wait(self) -> dict[str, Any]:
        rc = self.proc.wait(timeout=1800)
        text = self.log.read_text(errors="replace")
        self.log.unlink(missing_ok=True)
        assert rc == 0, f"lab {self.name} did not come up (exit {rc}):\n{text[-4000:]}"
        info = status_of(self.name)
        info["up_stdout"] = text
        say(f"lab {self.name} up (in the background) after {time.monotonic() - self.start:.0f} s")
        return info

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # `lab up` stops its QEMU on SIGTERM
            self.proc.wait(timeout=120)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def fail_with(message: str, *results: Result) -> None:
    sys.stdout.flush()
    raise AssertionError(message + "\n" + "\n".join(r.report() for r in results))
