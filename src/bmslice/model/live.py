"""What a running host says about a slice, as read back through libvirt and /proc."""

from __future__ import annotations

from dataclasses import dataclass

from bmslice.cpuset import CpuSet

SCHED_OTHER, SCHED_FIFO, SCHED_RR, SCHED_BATCH, SCHED_IDLE, SCHED_DEADLINE = 0, 1, 2, 3, 5, 6
REALTIME_POLICIES = frozenset({SCHED_FIFO, SCHED_RR, SCHED_DEADLINE})
POLICY_NAMES = {
    SCHED_OTHER: "SCHED_OTHER",
    SCHED_FIFO: "SCHED_FIFO",
    SCHED_RR: "SCHED_RR",
    SCHED_BATCH: "SCHED_BATCH",
    SCHED_IDLE: "SCHED_IDLE",
    SCHED_DEADLINE: "SCHED_DEADLINE",
}


@dataclass(frozen=True)
class ThreadAffinity:
    """One thread as the kernel reports it: where it may run and how it is scheduled.

    `policy` and `rt_priority` are fields 41 and 40 of /proc/<pid>/task/<tid>/stat (what
    sched_getscheduler / sched_getparam return); None when the kernel did not say.
    """

    tid: int
    comm: str
    cpus: CpuSet
    policy: int | None = None
    rt_priority: int | None = None

    @property
    def scheduling(self) -> str:
        """As the kernel's names say it: "SCHED_FIFO priority 1", "SCHED_OTHER"."""
        name = POLICY_NAMES.get(self.policy, f"policy {self.policy}") if self.policy is not None else "unknown"
        return f"{name} priority {self.rt_priority}" if self.policy in REALTIME_POLICIES else name


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


@dataclass(frozen=True)
class HeldSlice:
    """A domain with bmslice metadata that cannot be read back as a plan, and what libvirt says it holds.

    Its record is hand-edited, truncated, of the wrong types or from another bmslice version;
    the slice still runs (or will, at the next boot) on these CPUs and devices, so planning
    keeps clear of them until `destroy` removes it. `cpus`: every CPU its vCPU, emulator and
    IOThread pins allow (all CPUs when libvirt says it is not pinned); `devices`: PCI addresses
    of its hostdevs and VF interfaces; `memory_mib`: (host node, MiB) where its memory is bound.
    """

    name: str
    why: str
    cpus: CpuSet
    devices: tuple[str, ...] = ()
    memory_mib: tuple[tuple[int, int], ...] = ()

    @property
    def holds(self) -> str:
        devices = ", ".join(self.devices) or "none"
        return f"CPUs {self.cpus or 'none'}, PCI devices {devices}"
