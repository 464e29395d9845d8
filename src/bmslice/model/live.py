"""What a running host says about a slice, as read back through libvirt and /proc."""

from __future__ import annotations

from dataclasses import dataclass

from bmslice.cpuset import CpuSet


@dataclass(frozen=True)
class ThreadAffinity:
    tid: int
    comm: str
    cpus: CpuSet


@dataclass(frozen=True)
class LiveDomain:
    name: str
    active: bool
    autostart: bool
    xml: str  # live XML when running, else the persistent definition
    inactive_xml: str  # the persistent definition
    vcpu_pins: tuple[CpuSet, ...] = ()  # libvirt's pin info, vCPU 0, 1, ...
    emulator_pin: CpuSet | None = None
    iothread_pins: tuple[tuple[int, CpuSet], ...] = ()
    pid: int | None = None
