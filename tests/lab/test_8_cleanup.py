"""The lab's own processes go on every exit path: a `lab up` stopped by SIGTERM while it boots
leaves no QEMU behind (and `lab down` of a lab that is not up is a no-op)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from lab import labctl

NAME = "labterm"
MARK = f"bmslice-lab-{NAME}".encode()


def _lab_processes() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if MARK in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_sigterm_while_booting_leaves_nothing() -> None:
    up = subprocess.Popen(
        [labctl.BMSLICE, "lab", "up", "--name", NAME, "--no-libvirtd"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _lab_processes() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _lab_processes(), "the lab's QEMU never started"
        time.sleep(5)  # well into the boot
        up.send_signal(signal.SIGTERM)
        out, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 2 and "error: interrupted" in err and "Traceback" not in err, (out, err)
    deadline = time.monotonic() + 30
    while _lab_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _lab_processes(), f"left behind: {_lab_processes()}"
    labctl.say("checked: SIGTERM while booting stopped the lab's QEMU; nothing of it runs")
    down = labctl.host("lab", "down", "--name", NAME).expect()
    assert f"lab {NAME} was not up" in down.out, down.report()
