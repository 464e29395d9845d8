"""The lab-test lane (`make lab-test`): bmslice on a real kernel with an IOMMU, NUMA and SR-IOV NICs.

One lab boots for the session (the design note's twin); a scenario that needs other
kernel args reboots it with them. The lab is powered off at the end whatever happens,
and its QEMU runs under a TTL besides. Nothing here skips: a download or boot that fails
fails the lane with the reason.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from lab import labctl


class Lab:
    """The running test lab: what it was booted with, and a reboot with other kernel args."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}

    def ensure(self, kernel_args: tuple[str, ...] | None = None, like: str | None = None) -> dict[str, Any]:
        """The lab up; booted with exactly `kernel_args` (None: whatever it runs with), shaped after `like`."""
        booted_with = tuple(self.info.get("extra_args", ()))
        if not self.info or self.info.get("like") != like or (kernel_args is not None and booted_with != kernel_args):
            self.info = labctl.boot(kernel_args or (), like)
            self.info["extra_args"] = kernel_args or ()
            self.info["like"] = like
        return self.info


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    # CI may stop the lane with SIGTERM: turn it into an interrupt so the lab still goes down.
    signal.signal(signal.SIGTERM, _interrupt)
    handle = Lab()
    try:
        handle.ensure()
        yield handle
    finally:
        down = labctl.host("lab", "down", "--name", labctl.LAB, timeout=180)
        labctl.say(f"lab down: exit {down.rc}")
