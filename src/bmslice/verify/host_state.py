"""The running host's state that preflight and audit judge, read through FsRoot.

Like pyinfra's facts, each reader is a path plus a pure parser of its text; the parsers
are tested on recorded kernel output, the readers on host trees (or "/" itself).

>>> parse_status("Name:\\tkworker/1:0\\nKthread:\\t1\\nCpus_allowed_list:\\t1\\n")["Cpus_allowed_list"]
'1'
>>> stat_flags("20 (ksoftirqd/1) S 2 0 0 0 -1 69238848 0 0")
69238848
>>> stat_scheduling("7 (CPU 1/KVM) S" + " 0" * 36 + " 1 1 0 0 0")
(1, 1)
>>> qemu_guest("qemu-system-x86", ("/usr/bin/qemu-system-x86_64", "-name", "guest=red,debug-threads=on"))
'red'
>>> parse_cpu_file("(null)")
CpuSet('')
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass
from typing import Literal

from bmslice.cpuset import CpuListError, CpuSet
from bmslice.model.live import ThreadAffinity
from bmslice.numbers import decimal, hexadecimal, is_decimal
from bmslice.topology.fsroot import FsRoot

KTHREAD_FLAG = 0x00200000  # PF_KTHREAD in /proc/<pid>/stat field 9
NO_SETAFFINITY_FLAG = 0x04000000  # PF_NO_SETAFFINITY: the kernel bound it; sched_setaffinity is refused
KTHREADD_PID = 2
CAP_SYS_RESOURCE = 24  # capability bit: may raise hard resource limits (RLIMIT_MEMLOCK)
QEMU_MARKERS = ("qemu-system", "qemu-kvm")
VFIO_MODULE_NAMES = ("vfio-pci.ko", "vfio-pci.ko.xz", "vfio-pci.ko.zst", "vfio-pci.ko.gz")

Memlock = int | Literal["unlimited"]  # bytes


# --- pure parsers ---------------------------------------------------------------------


def parse_status(text: str) -> dict[str, str]:
    """/proc/<pid>/status as {key: value}, values stripped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


# What a thread's status is read for: the exporter reads every thread's at each scrape, so these
# fields are found by name rather than every line parsed (status has some 55 lines).
STATUS_KEYS = ("Name", "State", "PPid", "Kthread", "Cpus_allowed_list")


def status_fields(text: str, keys: tuple[str, ...] = STATUS_KEYS) -> dict[str, str]:
    """The `keys` of a /proc/<pid>/status text that it has, as parse_status gives them.

    >>> status_fields("Name:\\tbash\\nState:\\tS (sleeping)\\nCpus_allowed_list:\\t0-3\\n")
    {'Name': 'bash', 'State': 'S (sleeping)', 'Cpus_allowed_list': '0-3'}
    """
    out = {}
    for key in keys:
        start = 0 if text.startswith(f"{key}:") else text.find(f"\n{key}:") + 1
        if start == 0 and not text.startswith(f"{key}:"):
            continue
        start += len(key) + 1
        end = text.find("\n", start)
        out[key] = text[start : end if end >= 0 else len(text)].strip()
    return out


@functools.lru_cache(maxsize=4096)
def cpu_list(text: str) -> CpuSet:
    """CpuSet.parse, remembered: a host's threads share a handful of CPU lists."""
    return CpuSet.parse(text)


def stat_flags(text: str) -> int | None:
    """Field 9 (flags) of /proc/<pid>/stat; the comm in parentheses may itself hold spaces and ')'."""
    _, sep, rest = text.rpartition(")")
    fields = rest.split()
    if not sep or len(fields) < 7:
        return None
    return decimal(fields[6])


def stat_scheduling(text: str) -> tuple[int | None, int | None]:
    """(policy, rt_priority): fields 41 and 40 of /proc/<pid>/stat; None where the kernel leaves them out."""
    _, sep, rest = text.rpartition(")")
    fields = rest.split()  # fields[0] is field 3 (state)
    if not sep or len(fields) < 39:
        return None, None
    return decimal(fields[38]), decimal(fields[37])


def parse_cmdline(text: str) -> tuple[str, ...]:
    return tuple(arg for arg in text.split("\0") if arg)


def qemu_guest(comm: str, cmdline: tuple[str, ...]) -> str | None:
    """The libvirt domain name of a QEMU process (`-name guest=NAME,...` or `-name NAME`), else None."""
    program = cmdline[0] if cmdline else ""
    if not any(marker in comm or marker in os.path.basename(program) for marker in QEMU_MARKERS):
        return None
    for flag, value in itertools.pairwise(cmdline):
        if flag not in ("-name", "--name"):
            continue
        # libvirt doubles commas inside values; VM names never contain one.
        parts = value.split(",")
        for part in parts:
            if part.startswith("guest="):
                return part.removeprefix("guest=")
        return parts[0] if parts[0] and "=" not in parts[0] else None
    return None


def parse_cpu_file(text: str) -> CpuSet:
    """sys/devices/system/cpu/{isolated,nohz_full}: a CPU list; old kernels print "(null)" for none."""
    text = text.strip()
    return CpuSet() if text in ("", "(null)") else CpuSet.parse(text)


def parse_memlock(limits: str) -> Memlock | None:
    """Soft "Max locked memory" from /proc/<pid>/limits, in bytes."""
    for line in limits.splitlines():
        if line.startswith("Max locked memory"):
            fields = line[len("Max locked memory") :].split()
            if not fields:
                return None
            if fields[0] == "unlimited":
                return "unlimited"
            return decimal(fields[0])
    return None


# --- IRQs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Irq:
    number: int
    actions: tuple[str, ...]  # handler names: the subdirectories of /proc/irq/N
    effective: CpuSet | None  # effective_affinity_list; None when the kernel has none for it
    affinity: CpuSet | None  # smp_affinity_list (or the hex mask)

    @property
    def label(self) -> str:
        return f"IRQ {self.number} ({','.join(self.actions)})" if self.actions else f"IRQ {self.number}"


def _cpus_or_none(fs: FsRoot, rel: str) -> CpuSet | None:
    text = fs.read_line(rel)
    if text is None:
        return None
    try:
        return CpuSet.parse(text)
    except CpuListError:
        return None


def read_irq(fs: FsRoot, number: int) -> Irq:
    rel = f"proc/irq/{number}"
    actions = tuple(name for name in fs.listdir(rel) if fs.is_dir(f"{rel}/{name}"))
    effective = _cpus_or_none(fs, f"{rel}/effective_affinity_list")
    affinity = _cpus_or_none(fs, f"{rel}/smp_affinity_list")
    if affinity is None:
        mask = fs.read_line(f"{rel}/smp_affinity")
        try:
            affinity = CpuSet.parse_mask(mask) if mask is not None else None
        except CpuListError:
            affinity = None
    # An IRQ that is shut down reports an empty effective mask: judge it by what it may use.
    return Irq(number, actions, effective or None, affinity)


def read_irqs(fs: FsRoot) -> tuple[Irq, ...]:
    numbers = sorted(int(name) for name in fs.listdir("proc/irq") if is_decimal(name))
    return tuple(read_irq(fs, n) for n in numbers)


def parse_interrupts(text: str, cpus: CpuSet) -> dict[int, int]:
    """Device interrupts (numbered IRQ lines) each of `cpus` has serviced, from /proc/interrupts.

    The header names the columns (online CPUs only: "CPU0 CPU2" when CPU 1 is offline);
    per-CPU event lines (LOC, RES, CAL, TLB, NMI ...) are not device interrupts and are left out.

    >>> parse_interrupts("           CPU0       CPU1\\n  24:   5   7  PCI-MSI eth0\\nLOC:   9   9  Local timer\\n",
    ...                  CpuSet.of(1))
    {1: 7}
    """
    lines = text.splitlines()
    if not lines:
        return {}
    columns = [int(name[3:]) for name in lines[0].split() if name.startswith("CPU") and is_decimal(name[3:])]
    wanted = [(i, cpu) for i, cpu in enumerate(columns) if cpu in cpus]
    counts = dict.fromkeys((cpu for _, cpu in wanted), 0)
    for line in lines[1:]:
        label, sep, rest = line.partition(":")
        if not sep or not is_decimal(label.strip()):
            continue
        fields = rest.split(None, len(columns))
        for i, cpu in wanted:
            if i < len(fields) and is_decimal(fields[i]):
                counts[cpu] += int(fields[i])
    return counts


def read_interrupts(fs: FsRoot, cpus: CpuSet) -> dict[int, int] | None:
    """parse_interrupts of proc/interrupts; None when there is no such file."""
    text = fs.read("proc/interrupts")
    return parse_interrupts(text, cpus) if text is not None else None


# --- processes and threads ------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    pid: int
    comm: str
    cmdline: tuple[str, ...]
    kthread: bool
    kthread_evidence: str  # how we know: "Kthread: 1", "PF_KTHREAD", "child of kthreadd without exe"
    tasks: tuple[ThreadAffinity, ...]
    # The kernel bound its affinity (workqueue rescuers and the like): nobody can move it.
    kernel_bound: bool = False

    @property
    def guest(self) -> str | None:
        return None if self.kthread else qemu_guest(self.comm, self.cmdline)


def _has_exe(fs: FsRoot, pid: int) -> bool:
    try:
        os.readlink(fs.resolve(f"proc/{pid}") / "exe")
    except OSError:
        return False
    return True


def kthread_evidence(
    pid: int, status: dict[str, str], stat: str | None, has_exe: bool, cmdline: tuple[str, ...]
) -> str:
    """Why this process is a kernel thread, or "" when it is not."""
    if "Kthread" in status:  # Linux 6.x
        return "Kthread: 1" if status["Kthread"] == "1" else ""
    flags = stat_flags(stat) if stat is not None else None
    if flags is not None:
        return "PF_KTHREAD" if flags & KTHREAD_FLAG else ""
    if pid == KTHREADD_PID:
        return "kthreadd"
    if status.get("PPid") == str(KTHREADD_PID) and not (has_exe and cmdline):
        return "child of kthreadd without exe"
    return ""


def _task(fs: FsRoot, rel: str, tid: int, scheduling: bool, text: str | None = None) -> ThreadAffinity | None:
    """One thread from its status (`text`: already read) and, with `scheduling`, its stat. A thread's
    own status is read even for the main thread: a zombie main thread is one, whatever the process says."""
    text = text if text is not None else fs.read(f"{rel}/status")
    if text is None:
        return None  # the thread ended while we looked
    status = status_fields(text)
    if status.get("State", "").startswith(("Z", "X")):
        return None  # a zombie cannot run anywhere
    try:
        cpus = cpu_list(status["Cpus_allowed_list"])
    except (KeyError, CpuListError):
        return None
    policy, rt_priority = None, None
    if scheduling:
        stat = fs.read(f"{rel}/stat")
        policy, rt_priority = stat_scheduling(stat) if stat is not None else (None, None)
    return ThreadAffinity(tid, status.get("Name", ""), cpus, policy, rt_priority)


def read_process(fs: FsRoot, pid: int, watch: CpuSet | None = None, scheduling: bool = True) -> Process | None:
    """One process and its threads; None when it is gone.

    `watch`: only a process with a thread allowed on one of these CPUs is read whole (cmdline,
    stat, exe: what tells a kernel thread, a bound one or a slice's QEMU apart); any other is its
    status and its threads' alone, which is all an audit of those CPUs looks at. `scheduling`:
    each thread's policy and priority from its stat (verify's realtime check).
    """
    rel = f"proc/{pid}"
    text = fs.read(f"{rel}/status")
    if text is None:
        return None
    status = status_fields(text)
    tids = sorted(int(t) for t in fs.listdir(f"{rel}/task") if is_decimal(t))
    # Without a task/ directory (a minimal capture) the process's own status stands for its one thread.
    found = (
        [_task(fs, f"{rel}/task/{tid}", tid, scheduling) for tid in tids]
        if tids
        else [_task(fs, rel, pid, scheduling, text)]
    )
    tasks = tuple(t for t in found if t is not None)
    name = status.get("Name", "")
    if watch is not None and all(t.cpus.isdisjoint(watch) for t in tasks):
        evidence = "Kthread: 1" if status.get("Kthread") == "1" else ""
        return Process(pid, name, (), bool(evidence), evidence, tasks)
    cmdline = parse_cmdline(fs.read(f"{rel}/cmdline", keep_nul=True) or "")
    stat = fs.read(f"{rel}/stat")
    flags = stat_flags(stat) if stat is not None else None
    has_exe = "Kthread" not in status and flags is None and _has_exe(fs, pid)  # the last evidence, looked up last
    evidence = kthread_evidence(pid, status, stat, has_exe, cmdline)
    bound = bool(evidence) and flags is not None and bool(flags & NO_SETAFFINITY_FLAG)
    return Process(pid, name, cmdline, bool(evidence), evidence, tasks, bound)


def read_processes(fs: FsRoot, watch: CpuSet | None = None, scheduling: bool = True) -> tuple[Process, ...]:
    pids = sorted(int(name) for name in fs.listdir("proc") if is_decimal(name))
    return tuple(p for p in (read_process(fs, pid, watch, scheduling) for pid in pids) if p is not None)


# --- everything audit needs -----------------------------------------------------------


@dataclass(frozen=True)
class RuntimeState:
    isolated: CpuSet | None  # sys/devices/system/cpu/isolated; None: no such file
    nohz_full: CpuSet | None  # sys/devices/system/cpu/nohz_full; None: kernel without NO_HZ_FULL
    irqs: tuple[Irq, ...]
    processes: tuple[Process, ...]


def _cpu_file(fs: FsRoot, rel: str) -> CpuSet | None:
    text = fs.read(rel)
    if text is None:
        return None
    try:
        return parse_cpu_file(text)
    except CpuListError:
        return None


def read_runtime(fs: FsRoot, watch: CpuSet | None = None) -> RuntimeState:
    """What audit judges; `watch` (the isolated CPUs): read whole only the processes that may run
    there, and no thread's scheduling (the exporter's scrape, read_process says what is left out)."""
    return RuntimeState(
        isolated=_cpu_file(fs, "sys/devices/system/cpu/isolated"),
        nohz_full=_cpu_file(fs, "sys/devices/system/cpu/nohz_full"),
        irqs=read_irqs(fs),
        processes=read_processes(fs, watch, scheduling=watch is None),
    )


# --- what preflight needs beyond the topology -----------------------------------------


@dataclass(frozen=True)
class ModuleFacts:
    kernel_release: str | None
    vfio: tuple[str, ...]  # where vfio-pci was found; empty: nowhere
    kvm_module: str | None  # "kvm_intel" | "kvm_amd" when loaded
    nested: str | None  # raw parameters/nested value of that module
    memlock: Memlock | None  # this process's RLIMIT_MEMLOCK; None: unknown
    # CAP_SYS_RESOURCE in this process's bounding set: without it no process here (libvirtd
    # included, in a container that drops it) can raise a memory-lock limit; None: unknown
    cap_sys_resource: bool | None = None


def _vfio_sources(fs: FsRoot, release: str | None) -> tuple[str, ...]:
    found = []
    if fs.is_dir("sys/module/vfio_pci"):
        found.append("loaded (/sys/module/vfio_pci)")
    if fs.is_dir("sys/bus/pci/drivers/vfio-pci"):
        found.append("driver registered (/sys/bus/pci/drivers/vfio-pci)")
    if release:
        base = f"lib/modules/{release}"
        for name in VFIO_MODULE_NAMES:
            if fs.resolve(f"{base}/kernel/drivers/vfio/pci/{name}").is_file():
                found.append(f"module /{base}/kernel/drivers/vfio/pci/{name}")
        if "vfio-pci.ko" in (fs.read(f"{base}/modules.builtin") or ""):
            found.append(f"built into the kernel (/{base}/modules.builtin)")
    return tuple(found)


def _meminfo_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        label, _, value = line.partition(":")
        if label.split()[-1:] == [key]:
            fields = value.split()
            if fields and (kib := decimal(fields[0])) is not None:
                return kib
    return 0


def read_reclaimable_mib(fs: FsRoot, nodes: tuple[int, ...]) -> dict[int, int]:
    """Page cache per node (Active(file) + Inactive(file)): the kernel frees it when memory is asked for."""
    out = {}
    for node in nodes:
        text = fs.read(f"sys/devices/system/node/node{node}/meminfo")
        if text is None and node == 0:  # a kernel without NUMA: one node, /proc/meminfo
            text = fs.read("proc/meminfo")
        text = text or ""
        out[node] = (_meminfo_kib(text, "Active(file)") + _meminfo_kib(text, "Inactive(file)")) // 1024
    return out


def has_capability(status: dict[str, str], key: str, bit: int) -> bool | None:
    """Whether capability `bit` is in the hex mask `key` (CapBnd, CapEff) of /proc/<pid>/status."""
    mask = hexadecimal(status.get(key, ""))
    return None if mask is None else bool(mask >> bit & 1)


def read_module_facts(fs: FsRoot) -> ModuleFacts:
    release = fs.read_line("proc/sys/kernel/osrelease")
    kvm = next((m for m in ("kvm_intel", "kvm_amd") if fs.is_dir(f"sys/module/{m}")), None)
    nested = fs.read_line(f"sys/module/{kvm}/parameters/nested") if kvm else None
    limits = fs.read("proc/self/limits")
    status = parse_status(fs.read("proc/self/status") or "")
    return ModuleFacts(
        kernel_release=release,
        vfio=_vfio_sources(fs, release),
        kvm_module=kvm,
        nested=nested,
        memlock=parse_memlock(limits) if limits is not None else None,
        cap_sys_resource=has_capability(status, "CapBnd", CAP_SYS_RESOURCE),
    )


# --- what a realtime slice needs of the host ------------------------------------------

TUNED_HOST_PROFILE = "realtime-virtual-host"
TUNED_PROFILE_DIRS = ("usr/lib/tuned", "usr/lib/tuned/profiles", "etc/tuned", "etc/tuned/profiles")
# cgroup v1 cpu controller mounts; a cpu.rt_runtime_us there means RT group scheduling is on
CGROUP_V1_CPU = ("sys/fs/cgroup/cpu", "sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpuacct,cpu")


@dataclass(frozen=True)
class RealtimeFacts:
    kernel_realtime: str | None = None  # sys/kernel/realtime: "1" on a PREEMPT_RT kernel; None: no such file
    tuned_profile: str | None = None  # where realtime-virtual-host's tuned.conf is; None: nowhere
    rt_group_v1: str | None = None  # a cgroup v1 cpu controller's cpu.rt_runtime_us (RT group scheduling)
    sched_rt_runtime_us: str | None = None  # proc/sys/kernel/sched_rt_runtime_us; "-1": no RT throttling


def read_realtime_facts(fs: FsRoot) -> RealtimeFacts:
    profiles = (f"{d}/{TUNED_HOST_PROFILE}/tuned.conf" for d in TUNED_PROFILE_DIRS)
    rt_files = (f"{d}/cpu.rt_runtime_us" for d in CGROUP_V1_CPU)
    return RealtimeFacts(
        kernel_realtime=fs.read_line("sys/kernel/realtime"),
        tuned_profile=next((f"/{p}" for p in profiles if fs.resolve(p).is_file()), None),
        rt_group_v1=next((f"/{p}" for p in rt_files if fs.resolve(p).is_file()), None),
        sched_rt_runtime_us=fs.read_line("proc/sys/kernel/sched_rt_runtime_us"),
    )
