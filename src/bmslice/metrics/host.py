"""The host the exporter watches: each of its sources read on demand, one per collector.

What is read, and why none of it disturbs the isolated CPUs it watches (an exporter that
interrupts the cores it watches defeats itself):

- **At start only**: the host's topology (sysfs, and /proc/cpuinfo, which on kernels 4.13 to
  5.x asks every CPU for its frequency with an IPI) and the spec's plan. A reboot, the only
  thing that changes them, restarts the exporter.
- **slices** (libvirt, like `bmslice verify`): libvirtd's own state of each domain (XML, pin
  info, IOThread info); a running QEMU is asked only through its monitor, which its emulator
  thread serves on the slice's emulator core, never on a vCPU. The QEMU threads' CPUs from
  /proc/<pid>/task/<tid>/status and stat: fields of the task, no IPI. VF settings through
  netlink (RTM_GETLINK from the PF's driver).
- **isolation** (like `bmslice audit`): /proc/<pid>/task/<tid>/status of every thread, and of
  a process that may run on an isolated CPU its cmdline, stat and exe link;
  /proc/irq/<n>/effective_affinity_list and smp_affinity_list (the IRQ descriptors' masks),
  /proc/interrupts (per-CPU counters read from memory, no IPI), and the kernel's isolated and
  nohz_full lists in sysfs (static).
- **hugepages**: /sys/devices/system/node/node<n>/hugepages/*/{nr,free}_hugepages, counters
  of the hugetlb pools.
- **capacity**: the planner, pure; asked again only when the slices libvirt runs change.

Never read: /proc/cpuinfo (above), cpufreq's scaling_cur_freq (an IPI per CPU on many
kernels), MSRs through /dev/cpu/*/msr (an IPI each), perf counters on other CPUs. The process
itself runs on the host's reserved CPUs only (metrics/serve.py pins it before any thread
starts), so its own scheduling, page faults and TLB shootdowns stay there too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from bmslice.apply.context import discover
from bmslice.apply.uri import is_local
from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.plan import Plan
from bmslice.model.spec import Spec
from bmslice.model.topology import HostTopology, NumaNode
from bmslice.plan.planner import make_plan
from bmslice.plan.room import Room, free_room, spec_shapes
from bmslice.topology.fsroot import FsRoot
from bmslice.verify.audit import AuditReport, audit
from bmslice.verify.host_state import read_interrupts, read_runtime
from bmslice.verify.verifier import VerifyReport, verify

LIVE_ROOT = Path("/")


@dataclass(frozen=True)
class Isolation:
    report: AuditReport
    isolated: CpuSet  # the plan's isolated CPUs
    interrupts: dict[int, int]  # isolated CPU -> device interrupts it serviced since boot (empty: unknown)


class WatchedHost:
    """One spec on one host, read through `uri` (and `host_root`, a tree standing for it)."""

    def __init__(self, spec: Spec, origin: str, uri: str, host_root: Path | None = None) -> None:
        self.spec, self.origin, self.uri, self.host_root = spec, origin, uri, host_root
        self.topology = discover(uri, host_root)
        self.slices: VerifyReport | None = None  # the last slices check
        self._room: tuple[tuple[object, ...], Room] | None = None
        self.start_plan = self._start_plan()  # the host's share; refuses a spec that cannot fit

    def _start_plan(self) -> Plan:
        """The spec planned; when its slices run and hold what a plan made afresh needs (every VF
        of a PF: "1 in use; 2 are needed"), the plan with them kept where they are, as verify
        makes it. Found by the boot lab: after a reboot the exporter's unit failed at each start."""
        try:
            return make_plan(self.topology, self.spec, self.origin)
        except PlanError:
            return self.check_slices().plan  # refuses as verify would when the slices do not explain it

    @property
    def this_kernel(self) -> bool:
        """The host's own kernel answers here: its /proc and sysfs are this machine's."""
        return self.host_root is None and is_local(self.uri)

    @property
    def procfs(self) -> Path | None:
        """Where the host's /proc and /sys are read (None: not from here, through a remote URI)."""
        if self.host_root is not None:
            return self.host_root
        return LIVE_ROOT if is_local(self.uri) else None

    @property
    def plan(self) -> Plan:
        """The plan of the last slices check (the running slices kept); before one, the spec's own."""
        return self.slices.plan if self.slices is not None else self.start_plan

    def current_topology(self) -> HostTopology:
        """The topology read at start, with what changes while the host runs read again: free
        hugepages per node, and (on this kernel) VF settings. A remote host is read afresh."""
        if self.procfs is None:
            return discover(self.uri, None)
        topo = replace(self.topology, numa_nodes=self.numa_nodes())
        if self.this_kernel:
            from bmslice.topology.netlink import read_vf_states

            topo = replace(topo, vf_states=read_vf_states())
        return topo

    def numa_nodes(self) -> tuple[NumaNode, ...]:
        if self.procfs is None:
            return discover(self.uri, None).numa_nodes
        from bmslice.topology.sysfs import read_numa_nodes

        return read_numa_nodes(self.procfs, self.topology.cpus)

    # --- the sources, one per collector ----------------------------------------------------

    def check_slices(self) -> VerifyReport:
        self.slices = verify(self.spec, self.origin, self.uri, self.host_root, topology=self.current_topology())
        return self.slices

    def check_isolation(self) -> Isolation | None:
        """The audit of the running host; None through a remote URI (its /proc is not here)."""
        if self.procfs is None:
            return None
        plan = self.plan
        fs = FsRoot(self.procfs)  # a fresh one: the live /proc changes between scrapes
        report = audit(plan, self.topology, read_runtime(fs, watch=plan.host.isolated_cpus))
        return Isolation(report, plan.host.isolated_cpus, read_interrupts(fs, plan.host.isolated_cpus) or {})

    def room(self) -> Room:
        """Free room for the spec's shapes beside what runs; the planner is asked again only when
        the running slices' plan changed."""
        plan = self.plan
        key = plan.vms
        if self._room is None or self._room[0] != key:
            room = free_room(self.topology, self.spec, plan, spec_shapes(self.spec), self.origin, per_node=True)
            self._room = (key, room)
        return self._room[1]
