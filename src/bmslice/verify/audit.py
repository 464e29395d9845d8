"""bmslice audit: proof that the plan's isolation holds on the running host (pure).

`audit(plan, topo, state)` judges what `read_runtime` read: kernel args active (CPU lists
as sets), the kernel's isolated and nohz_full CPUs, every IRQ's effective affinity,
every thread's Cpus_allowed_list, and hugepages per node. Per-CPU kernel threads cannot
leave their CPU and are listed as excepted; the planned VMs' QEMU threads may use their
own slice's CPUs and nothing else that is isolated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bmslice.cpuset import CpuSet
from bmslice.model.live import ThreadAffinity
from bmslice.model.plan import Plan
from bmslice.model.topology import HostTopology
from bmslice.verify.findings import Finding, Level, fail, ok, warn
from bmslice.verify.host_state import Irq, Process, RuntimeState

REBOOT_REMEDY = "bmslice host-apply, update the bootloader as it says, reboot"


@dataclass(frozen=True)
class Excepted:
    """A thread allowed on an isolated CPU that is not a violation, and why."""

    pid: int
    tid: int
    comm: str
    cpus: CpuSet
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "tid": self.tid, "comm": self.comm, "cpus": self.cpus.format(), "reason": self.reason}


@dataclass(frozen=True)
class Intruder:
    """Threads of one process that may run on isolated CPUs outside every slice: a violation."""

    pid: int
    comm: str
    cpus: CpuSet  # the isolated CPUs they may run on
    threads: int


@dataclass(frozen=True)
class IrqHit:
    """An IRQ with a handler that can fire on isolated CPUs: a violation."""

    number: int
    label: str
    cpus: CpuSet  # the isolated CPUs it may fire on


@dataclass(frozen=True)
class AuditReport:
    findings: tuple[Finding, ...]
    excepted: tuple[Excepted, ...]
    intruders: tuple[Intruder, ...] = ()  # the thread violations, one per process and CPU list
    irq_hits: tuple[IrqHit, ...] = ()  # the IRQ violations

    @property
    def violations(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.level is Level.FAIL)

    @property
    def passed(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.level is Level.OK)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.level is Level.WARN)

    @property
    def unread(self) -> tuple[Finding, ...]:
        """The violations that are "nothing could be read" (no /proc threads or IRQs), not a breach seen."""
        return tuple(f for f in self.violations if f.message.endswith(NOTHING_CHECKED))

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": [f.to_dict() for f in self.violations],
            "warnings": [f.to_dict() for f in self.warnings],
            "excepted": [e.to_dict() for e in self.excepted],
            "passed": [f.to_dict() for f in self.passed],
        }


def audit(plan: Plan, topo: HostTopology, state: RuntimeState) -> AuditReport:
    irq_findings, irq_hits = _irqs(plan, topo, state.irqs)
    findings = [*_kernel_args(plan, topo), *_cpu_files(plan, state), *irq_findings]
    thread_findings, excepted, intruders = _threads(plan, state.processes)
    findings += thread_findings
    findings += _hugepages(plan, topo)
    return AuditReport(tuple(findings), tuple(excepted), tuple(intruders), tuple(irq_hits))


NOTHING_CHECKED = "nothing checked, not a pass"
PROC_REMEDY = "run audit where the host's /proc is mounted and readable (not in a container, not hidepid)"


# --- kernel args and the kernel's own CPU lists -----------------------------------------


def _kernel_args(plan: Plan, topo: HostTopology) -> list[Finding]:
    missing = plan.host.missing_kernel_args
    if not missing:
        return [ok("kernel args", f"all {len(plan.host.kernel_args)} planned args are active (CPU lists as sets)")]
    running = {token.partition("=")[0]: token for token in topo.kernel_cmdline.split()}
    out = []
    for arg in missing:
        key = arg.partition("=")[0]
        have = f"has {running[key]}" if key in running else f"has no {key}"
        out.append(fail("kernel args", f"{arg} is not active: /proc/cmdline {have}", REBOOT_REMEDY))
    return out


def _cpu_list_check(name: str, want: CpuSet, have: CpuSet | None, arg: str) -> Finding:
    path = f"/sys/devices/system/cpu/{name}"
    if have is None:
        remedy = "use a kernel built with CONFIG_NO_HZ_FULL=y" if name == "nohz_full" else REBOOT_REMEDY
        return fail(name, f"{path} does not exist: the running kernel cannot report {arg}", remedy)
    if have != want:
        return fail(name, f"{path} is {have.format() or 'empty'}, the plan isolates {want}", REBOOT_REMEDY)
    return ok(name, f"{path} is {want}, as planned")


def _cpu_files(plan: Plan, state: RuntimeState) -> list[Finding]:
    want = plan.host.isolated_cpus
    keys = {arg.partition("=")[0] for arg in plan.host.kernel_args}
    out = []
    if "isolcpus" in keys:
        out.append(_cpu_list_check("isolated", want, state.isolated, "isolcpus"))
    if "nohz_full" in keys:
        out.append(_cpu_list_check("nohz_full", want, state.nohz_full, "nohz_full"))
    return out


# --- IRQs -----------------------------------------------------------------------------


def irq_hit(irq: Irq, isolated: CpuSet) -> CpuSet:
    """The isolated CPUs `irq` may fire on: its effective affinity, else the affinity asked for."""
    cpus = irq.effective if irq.effective is not None else irq.affinity
    return cpus & isolated if cpus is not None else CpuSet()


def _irq_finding(irq: Irq, isolated: CpuSet, online: CpuSet, reserved: CpuSet) -> Finding | None:
    hit = irq_hit(irq, isolated)
    if not hit:
        return None
    if irq.effective is not None:
        where = f"effective affinity {irq.effective} (smp_affinity_list {irq.affinity or '?'})"
    elif irq.affinity is not None and online.issubset(irq.affinity):
        where = f"default affinity (all CPUs, {irq.affinity}) and no effective_affinity_list"
    else:
        where = f"smp_affinity_list {irq.affinity} and no effective_affinity_list"
    return fail(
        f"irq {irq.number}",
        f"{irq.label} can fire on isolated CPU(s) {hit}: {where}; counted even if the kernel will not move it "
        "(per-CPU or managed IRQ)",
        f"echo {reserved} > /proc/irq/{irq.number}/smp_affinity_list; if refused, move the device or its queues "
        "off the isolated CPUs (isolcpus=managed_irq,...)",
    )


def _irqs(plan: Plan, topo: HostTopology, irqs: tuple[Irq, ...]) -> tuple[list[Finding], list[IrqHit]]:
    isolated = plan.host.isolated_cpus
    handled = [irq for irq in irqs if irq.actions]
    out: list[Finding] = []
    hits: list[IrqHit] = []
    for irq in handled:
        finding = _irq_finding(irq, isolated, topo.online_cpus, plan.host.reserved_cpus)
        if finding is not None:
            out.append(finding)
            hits.append(IrqHit(irq.number, irq.label, irq_hit(irq, isolated)))
    if not handled:  # every Linux host has handled IRQs (the timer at least): none read is nothing checked
        what = f"all {len(irqs)} without a handler" if irqs else "none listed"
        return [fail("irqs", f"no IRQ with a handler read from /proc ({what}): {NOTHING_CHECKED}", PROC_REMEDY)], []
    if not out:
        skipped = len(irqs) - len(handled)
        note = f"; {skipped} without a handler skipped" if skipped else ""
        out.append(ok("irqs", f"none of {len(handled)} IRQs can fire on isolated CPUs {isolated or 'none'}{note}"))
    return out, hits


# --- processes and threads ------------------------------------------------------------


def _slice_cpus(plan: Plan) -> dict[str, CpuSet]:
    """What each planned VM's QEMU threads may use: its cores, emulator and IOThread CPUs."""
    return {vm.name: vm.owned_cpus | vm.emulator_cpus | vm.iothread_cpus for vm in plan.vms}


def _group(tasks: list[ThreadAffinity]) -> Iterator[tuple[CpuSet, list[ThreadAffinity]]]:
    by_cpus: dict[CpuSet, list[ThreadAffinity]] = defaultdict(list)
    for task in tasks:
        by_cpus[task.cpus].append(task)
    yield from sorted(by_cpus.items(), key=lambda item: item[1][0].tid)


def _who(proc: Process, tasks: list[ThreadAffinity]) -> str:
    if len(tasks) == 1 and tasks[0].tid == proc.pid:
        return f"pid {proc.pid} ({proc.comm})"
    if len(tasks) == 1:
        return f"pid {proc.pid} ({proc.comm}) thread {tasks[0].tid} ({tasks[0].comm})"
    tids = ", ".join(str(t.tid) for t in tasks[:5]) + (", ..." if len(tasks) > 5 else "")
    return f"pid {proc.pid} ({proc.comm}), {len(tasks)} threads ({tids})"


def _thread_finding(
    proc: Process, cpus: CpuSet, tasks: list[ThreadAffinity], plan: Plan, slices: dict[str, CpuSet]
) -> Finding:
    """One line for the threads of `proc` that share the Cpus_allowed_list `cpus`."""
    reserved = plan.host.reserved_cpus
    hit = cpus & plan.host.isolated_cpus
    check, who = f"thread {proc.pid}", _who(proc, tasks)
    if proc.kthread:
        message = f"kernel thread {who} is not per-CPU and may run on isolated CPU(s) {hit} (Cpus_allowed_list {cpus})"
        if proc.comm.startswith("kworker/u"):
            return fail(check, message, f"echo {reserved} > /sys/devices/virtual/workqueue/cpumask")
        # The kernel gives some threads their node's or every CPU when it starts them (kswapd,
        # kcompactd): seen on a real kernel booted with the plan's args (the lab). isolcpus keeps
        # the scheduler from placing them on isolated CPUs; only an explicit move would.
        return warn(
            check,
            message + "; the kernel set this affinity at its start, and isolcpus keeps the scheduler from moving "
            "it onto isolated CPUs",
            f"taskset -pc {reserved} {proc.pid} pins it to the host's CPUs",
        )
    if proc.guest in slices:
        own = slices[proc.guest]
        return fail(
            check,
            f"QEMU of {proc.guest}: {who} may run on isolated CPU(s) {hit - own} outside its slice "
            f"({own}; Cpus_allowed_list {cpus})",
            "bmslice apply re-pins the slice (vcpupin / emulatorpin / iothreadpin)",
        )
    what = f"QEMU of unplanned guest {proc.guest}: " if proc.guest else ""
    return fail(
        check,
        f"{what}{who} may run on isolated CPU(s) {hit} (Cpus_allowed_list {cpus})",
        f"taskset -a -pc {reserved} {proc.pid}, and find what widened its affinity",
    )


def _threads(plan: Plan, processes: tuple[Process, ...]) -> tuple[list[Finding], list[Excepted], list[Intruder]]:
    isolated = plan.host.isolated_cpus
    slices = _slice_cpus(plan)
    findings: list[Finding] = []
    excepted: list[Excepted] = []
    intruders: list[Intruder] = []
    threads = 0
    for proc in processes:
        bad: list[ThreadAffinity] = []
        for task in proc.tasks:
            threads += 1
            hit = task.cpus & isolated
            if not hit:
                continue
            if proc.kthread and len(task.cpus) == 1:
                reason = f"per-CPU kernel thread ({proc.kthread_evidence})"
                excepted.append(Excepted(proc.pid, task.tid, task.comm, task.cpus, reason))
            elif proc.kthread and proc.kernel_bound:
                reason = "bound by the kernel (PF_NO_SETAFFINITY: a workqueue rescuer or the like; it cannot be moved)"
                excepted.append(Excepted(proc.pid, task.tid, task.comm, task.cpus, reason))
            elif not proc.kthread and proc.guest in slices and hit.issubset(slices[proc.guest]):
                continue
            else:
                bad.append(task)
        for cpus, tasks in _group(bad):
            finding = _thread_finding(proc, cpus, tasks, plan, slices)
            findings.append(finding)
            if finding.level is Level.FAIL:
                intruders.append(Intruder(proc.pid, proc.comm, cpus & isolated, len(tasks)))
    if not threads:  # the audit's own process runs: none read means /proc could not be read
        findings.append(fail("threads", f"no thread read from /proc: {NOTHING_CHECKED}", PROC_REMEDY))
    elif not any(f.level is Level.FAIL for f in findings):
        findings.append(
            ok("threads", f"none of {threads} threads outside the slices may run on isolated CPUs {isolated or 'none'}")
        )
    return findings, excepted, intruders


# --- hugepages ------------------------------------------------------------------------


def _hugepages(plan: Plan, topo: HostTopology) -> list[Finding]:
    out = []
    for want in plan.host.hugepages:
        size = f"{want.size_kib // 1024} MiB" if want.size_kib < 1048576 else f"{want.size_kib // 1048576} GiB"
        try:
            have = topo.node(want.node).hugepages_of(want.size_kib).total
        except KeyError:
            have = 0
        check = f"hugepages node{want.node}"
        if have >= want.pages:
            out.append(ok(check, f"{have} {size} pages reserved, the plan needs {want.pages}"))
        else:
            remedy = "bmslice host-apply" if want.size_kib == 2048 else REBOOT_REMEDY
            out.append(fail(check, f"{have} {size} pages reserved, the plan needs {want.pages}", remedy))
    return out
