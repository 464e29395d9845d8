"""Realtime vCPUs: which vCPUs run SCHED_FIFO, how much memory may be locked, and the host's
boot args for them (pure). docs/realtime.md says which guide each setting comes from.

>>> memlock_mib(8192, "kvm"), memlock_mib(128, "qemu")
(9216, 2176)
>>> realtime_kernel_args("GenuineIntel")
('skew_tick=1', 'tsc=reliable', 'nosoftlockup', 'nmi_watchdog=0', 'intel_pstate=disable')
"""

from __future__ import annotations

from collections.abc import Sequence

from bmslice.errors import PlanError
from bmslice.model.plan import GuestTopology, RealtimePlan
from bmslice.model.spec import RealtimeSpec
from bmslice.model.topology import Core

# QEMU's own memory beyond guest RAM, locked with it: libvirt's allowance for a VFIO guest,
# whose RAM is locked too (qemuDomainGetMemLockLimitBytes: guest RAM + 1 GiB).
QEMU_OVERHEAD_MIB = 1024
# Under TCG, QEMU also maps its translation cache (1 GiB by default on 64-bit hosts for
# system emulation, less on small hosts), and mlockall() locks it along with the rest.
TCG_CACHE_MIB = 1024
# isolcpus flags of the realtime profiles (tuned's realtime with isolate_managed_irq=Y): keep
# managed IRQs off the isolated CPUs too; "domain" must then be named, it is what a bare list means.
ISOLCPUS_FLAGS = "managed_irq,domain"


def memlock_mib(memory_mib: int, domain_type: str) -> int:
    """The hard_limit of a realtime guest: RLIMIT_MEMLOCK of its QEMU, which mlockall()s everything.

    libvirt sets the QEMU process's memory-lock limit to <hard_limit> when memory is locked
    (without one, to unlimited: a runaway guest could then lock all host memory). The kernel
    counts the hugepage-backed guest RAM against that limit when QEMU maps it, so the cap is
    guest RAM plus QEMU's own memory.
    """
    return memory_mib + QEMU_OVERHEAD_MIB + (TCG_CACHE_MIB if domain_type == "qemu" else 0)


def realtime_kernel_args(vendor: str) -> tuple[str, ...]:
    """Boot args every realtime-host guide sets, beyond isolcpus/nohz_full/rcu_nocbs (plan/host.py).

    skew_tick=1 and tsc=reliable: tuned's network-latency (under realtime-virtual-host) and
    OpenShift's performance profile; nosoftlockup: tuned's realtime and OpenShift; NMI
    watchdog off: tuned (as a sysctl) and OpenShift (nmi_watchdog=0); intel_pstate=disable:
    both, and only meaningful on Intel.
    """
    args = ["skew_tick=1", "tsc=reliable", "nosoftlockup", "nmi_watchdog=0"]
    if vendor == "GenuineIntel":
        args.append("intel_pstate=disable")
    return tuple(args)


def _core_of(cpu: int, cores: Sequence[Core]) -> Core | None:
    return next((core for core in cores if cpu in core.cpus), None)


def realtime_plan(
    rt: RealtimeSpec,
    pins: Sequence[int],
    topology: GuestTopology,
    cores: Sequence[Core],
    memory_mib: int,
    domain_type: str,
    field: str,
) -> RealtimePlan:
    """The realtime settings of one VM whose vCPUs sit on `pins`; `field` names it in a refusal.

    Housekeeping vCPUs are the first N and must fill whole cores: a housekeeping vCPU and a
    realtime one on the two threads of a host core would be one guest core (threads=2) split
    between the guest's housekeeping and its realtime work, and share the core's execution
    units on the host.
    """
    n = rt.housekeeping_vcpus
    realtime_cpus = set(pins[n:])
    for vcpu in range(n):
        core = _core_of(pins[vcpu], cores)
        if core is None:
            continue
        shared = sorted(realtime_cpus & set(core.cpus))
        if shared:
            other = pins.index(shared[0])
            hint = "an even number: whole guest cores" if topology.threads == 2 else "one that fills whole host cores"
            raise PlanError(
                f"{field}: {n} splits host core {core.cpus}: housekeeping vCPU {vcpu} and realtime vCPU {other} "
                f"share it; give {hint}"
            )
    return RealtimePlan(n, rt.priority, memlock_mib(memory_mib, domain_type))
