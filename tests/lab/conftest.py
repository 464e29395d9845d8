"""The lab-test lane (`make lab-test`): bmslice on a real kernel with an IOMMU, NUMA and SR-IOV NICs.

The lane boots several labs, each for the scenarios that need it:

- the main lab (the design note's twin, memory root, no systemd): scenarios 1-8;
- the boot lab (the twin with 2 GiB per node, systemd as PID 1 on a root disk): the reboot;
- the L3 lab (`--like` an EPYC-like tree: four NUMA nodes, two L3 caches each): modern shapes;
- the fabric: a switch lab and two server labs wired to its ports.

Each lab's QEMU is single-threaded TCG: the next lab boots in the background while the
scenarios of the last one run, so the machine's two CPUs both work. Every lab is powered off
at the end whatever happens, and each QEMU runs under a TTL besides. Nothing here skips: a
download or boot that fails fails the lane with the reason.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import labctl

BOOT = f"{labctl.LAB}-boot"
L3 = f"{labctl.LAB}-l3"
SWITCH = f"{labctl.LAB}-sw"
FAB1 = f"{labctl.LAB}-f1"
FAB2 = f"{labctl.LAB}-f2"
ORDER = (labctl.LAB, BOOT, L3, SWITCH, FAB1, FAB2)  # the order the lane uses them in
SSH_PORTS = {FAB1: 22201, FAB2: 22202}  # 127.0.0.1 ports forwarded to the fabric labs' sshd


class Lab:
    """The running main lab: what it was booted with, and a reboot with other kernel args."""

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


class Lane:
    """The labs of the lane beyond the main one: each booted in the background ahead of its use."""

    def __init__(self, trees: Path) -> None:
        self.trees = trees
        self.booting: dict[str, labctl.Booting] = {}
        self.up: dict[str, dict[str, Any]] = {}

    def _args(self, name: str) -> list[str]:
        from lab import shapes

        if name == BOOT:
            return labctl.up_args(name, (), None, "--systemd", "--memory-per-node", "2048MiB")
        if name == L3:
            tree = shapes.write_epyc_nosmt(self.trees / "epyc-nosmt")
            return labctl.up_args(name, (), str(tree), "--memory-per-node", "768MiB")
        if name == SWITCH:
            tree = shapes.write_small(self.trees / "switch", cores=1, threads=1, sriov_nics=0)
            return labctl.up_args(
                name, (), str(tree), "--no-libvirtd", "--switch-ports", "2", "--memory-per-node", "768MiB"
            )
        port = {FAB1: 0, FAB2: 1}[name]
        tree = shapes.write_small(self.trees / name, cores=3, threads=2, sriov_nics=1)
        wire = f"{SWITCH}:{port}"
        ssh = str(SSH_PORTS[name])
        # every igb register write traced to the lab's qemu.log: the VFs' anti-spoofing bits (DTXSWC)
        trace = ("--trace", "e1000e_core_write")
        return labctl.up_args(
            name, (), str(tree), "--wire", wire, "--ssh-port", ssh, *trace, "--memory-per-node", "1024MiB"
        )

    def prestart(self, *names: str) -> None:
        for name in names:
            if name not in self.booting and name not in self.up:
                self.booting[name] = labctl.Booting(name, *self._args(name))

    def need(self, name: str) -> dict[str, Any]:
        """The lab up (booted now unless it was started ahead)."""
        if name not in self.up:
            self.prestart(name)
            self.up[name] = self.booting.pop(name).wait()
        return self.up[name]

    def down(self, *names: str) -> None:
        for name in names:
            self.up.pop(name, None)
            booting = self.booting.pop(name, None)
            if booting is not None:
                booting.stop()
            done = labctl.host("lab", "down", "--name", name, timeout=300)
            labctl.say(f"lab {name} down: exit {done.rc}")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lane]:
    handle = Lane(tmp_path_factory.mktemp("lab-trees"))
    try:
        yield handle
    finally:
        handle.down(*(name for name in ORDER[1:] if name in handle.up or name in handle.booting))


@pytest.fixture(scope="session")
def lab(lane: Lane) -> Iterator[Lab]:
    # CI may stop the lane with SIGTERM: turn it into an interrupt so the labs still go down.
    signal.signal(signal.SIGTERM, _interrupt)
    handle = Lab()
    try:
        handle.ensure()
        lane.prestart(BOOT)  # boots while the main lab's scenarios run
        yield handle
    finally:
        down = labctl.host("lab", "down", "--name", labctl.LAB, timeout=180)
        labctl.say(f"lab down: exit {down.rc}")


def use(lane: Lane, name: str, then: tuple[str, ...] = (), done: tuple[str, ...] = ()) -> dict[str, Any]:
    """Lab `name` up; the labs of `done` powered off; those of `then` booting ahead, in the background."""
    info = lane.need(name)
    lane.down(*done)
    lane.prestart(*then)
    return info
