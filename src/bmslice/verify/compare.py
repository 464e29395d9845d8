"""Live state vs plan, one line per difference (pure: no libvirt, no /proc).

The live XML is read back through the same Domain model that rendered it, so every
field the renderer wrote is a field verify checks. Each line is a `Drift`: the text verify
prints, which also says what kind of difference it is (the exporter counts them by kind).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from bmslice.cpuset import CpuSet
from bmslice.model.live import POLICY_NAMES, REALTIME_POLICIES, SCHED_FIFO, LiveDomain, ThreadAffinity
from bmslice.model.plan import VmPlan
from bmslice.model.topology import VfState
from bmslice.numbers import is_decimal
from bmslice.render.domain_model import Domain, VcpuSched
from bmslice.render.domain_xml import from_xml


class DriftKind(StrEnum):
    """What a difference is about: the `kind` label of bmslice_slice_drift."""

    STATE = "state"  # the slice is not defined, or not running
    VCPU_PINS = "vcpu_pins"  # a vCPU's pin, in libvirt or in the kernel's view of its thread
    EMULATOR = "emulator"  # emulator and IOThread pins, and those threads' CPUs in the kernel
    MEMORY_BINDING = "memory_binding"  # memory size and pages, numatune, guest cells, locking
    DEVICES = "devices"  # PCI hostdevs, VF interfaces and their guest cells
    VF_SETTINGS = "vf_settings"  # a VF's MAC, VLAN, trust, spoofchk as its PF's driver reports them
    SCHEDULING = "scheduling"  # realtime vCPUs and every other thread's scheduling policy
    CACHE = "cache"  # L3 ways and memory bandwidth (resctrl)
    DEFINITION = "definition"  # the rest of the definition: vCPU count, CPU model and topology


class Drift(str):
    """One difference, as the line verify prints; `kind` says what it is about."""

    kind: DriftKind

    def __new__(cls, text: str, kind: DriftKind) -> Drift:
        line = super().__new__(cls, text)
        line.kind = kind
        return line


# Fields of the live definition that must equal the plan, with the words used to report them.
_XML_FIELDS = {
    "memory_kib": "memory (KiB)",
    "vcpus": "vCPU count",
    "iothreads": "IOThread count",
    "numa_mode": "numatune mode",
    "numa_nodeset": "numatune nodeset",
    "cpu_mode": "CPU mode",
    "topology": "guest CPU topology",
    "hostdevs": "PCI hostdevs",
    "vf_interfaces": "SR-IOV VF interfaces",
    "hugepage_kib": "hugepage size (KiB)",
    "vcpusched": "vCPU scheduling",
    "memory_locked": "locked memory",
    "nosharepages": "nosharepages (no KSM)",
    "hard_limit_kib": "memory hard_limit (KiB)",
    "pmu": "PMU",
    "kvm_hint_dedicated": "KVM dedicated-vCPU hint",
    "required_features": "required CPU features",
    "cachetunes": "cachetune (L3 cache id, KiB)",
    "cells": "guest NUMA cells",
    "device_cells": "devices' guest NUMA cells",
    "memorytunes": "memorytune (node, bandwidth %)",
}
_FIELD_KINDS = {
    **dict.fromkeys(
        ("memory_kib", "numa_mode", "numa_nodeset", "hugepage_kib", "memory_locked", "nosharepages", "hard_limit_kib"),
        DriftKind.MEMORY_BINDING,
    ),
    "cells": DriftKind.MEMORY_BINDING,
    **dict.fromkeys(("hostdevs", "vf_interfaces", "device_cells"), DriftKind.DEVICES),
    "vcpusched": DriftKind.SCHEDULING,
    **dict.fromkeys(("cachetunes", "memorytunes"), DriftKind.CACHE),
}


def _fmt(value: object) -> str:
    if isinstance(value, CpuSet):
        return value.format() or "none"
    if isinstance(value, VcpuSched):
        return f"{value.scheduler} priority {value.priority} on vCPUs {value.vcpus}"
    if isinstance(value, tuple):
        return ",".join(_fmt(v) for v in value) or "none"
    return str(value)


def compare_definition(name: str, desired: Domain, live_xml: str) -> list[Drift]:
    current = from_xml(live_xml)
    out = []
    for field, words in _XML_FIELDS.items():
        want, have = getattr(desired, field), getattr(current, field)
        if want != have:
            kind = _FIELD_KINDS.get(field, DriftKind.DEFINITION)
            out.append(Drift(f"{name} {words} is {_fmt(have)}, plan says {_fmt(want)}", kind))
    return out


def compare_pins(name: str, desired: Domain, live: LiveDomain) -> list[Drift]:
    out = []
    for vcpu, want in desired.vcpupins:
        have = live.vcpu_pins[vcpu] if vcpu < len(live.vcpu_pins) else None
        if have != want:
            out.append(Drift(f"{name} vCPU {vcpu} pinned to {_fmt(have)}, plan says {want}", DriftKind.VCPU_PINS))
    if desired.emulatorpin is not None and live.emulator_pin != desired.emulatorpin:
        text = f"{name} emulator pinned to {_fmt(live.emulator_pin)}, plan says {desired.emulatorpin}"
        out.append(Drift(text, DriftKind.EMULATOR))
    current = dict(live.iothread_pins)
    for iothread, want in desired.iothreadpins:
        if current.get(iothread) != want:
            text = f"{name} IOThread {iothread} pinned to {_fmt(current.get(iothread))}, plan says {want}"
            out.append(Drift(text, DriftKind.EMULATOR))
    return out


def thread_role(comm: str) -> tuple[str, int] | None:
    """("vcpu", n), ("iothread", n), ("thread-context", 0), ("emulator", 0), or None for kernel
    helpers (kvm-nx-lpage-re)."""
    if comm.startswith("CPU ") and "/" in comm:
        index = comm[4:].split("/", 1)[0]
        if is_decimal(index):
            return ("vcpu", int(index))
    if comm.startswith("IO iothread") and is_decimal(comm[11:]):
        return ("iothread", int(comm[11:]))
    if comm.startswith("kvm"):
        return None  # kernel threads attached to the VM follow their vCPU's cgroup
    if comm.startswith("TC "):
        # QEMU's thread-context ("TC tc-pc.ram") that preallocates hugepage-backed RAM on its
        # NUMA node: libvirt gives it the node's CPUs on purpose (node-affinity); libvirt 9.0
        # leaves it, idle, after start (later libvirt deletes it). Seen in the lab.
        return ("thread-context", 0)
    return ("emulator", 0)


def compare_threads(vm: VmPlan, threads: Sequence[ThreadAffinity]) -> list[Drift]:
    """The kernel's own view of every QEMU thread against the plan: Cpus_allowed_list, and the
    scheduling policy (realtime vCPUs SCHED_FIFO at the planned priority; every other thread,
    housekeeping vCPUs, emulator and IOThreads included, not realtime)."""
    out: list[Drift] = []
    for thread in threads:
        role = thread_role(thread.comm)
        if role is None:
            continue
        kind, index = role
        if kind == "vcpu":
            want = CpuSet.of(vm.vcpu_pins[index]) if index < len(vm.vcpu_pins) else None
        elif kind == "iothread":
            want = vm.iothread_cpus
        else:
            want = vm.emulator_cpus
        if kind != "thread-context" and want != thread.cpus:  # its CPUs are QEMU's choice, not the plan's
            text = (
                f"{vm.name} thread {thread.tid} ({thread.comm}) allowed on CPUs {thread.cpus}, plan says {_fmt(want)}"
            )
            out.append(Drift(text, DriftKind.VCPU_PINS if kind == "vcpu" else DriftKind.EMULATOR))
        sched = _scheduling_drift(vm, kind, index, thread)
        if sched:
            out.append(Drift(sched, DriftKind.SCHEDULING))
    return out


def _scheduling_drift(vm: VmPlan, kind: str, index: int, thread: ThreadAffinity) -> str | None:
    if thread.policy is None:
        return None  # the kernel did not say (a capture without stat)
    who = {"vcpu": f"vCPU {index}", "iothread": f"IOThread {index}"}.get(kind, kind)
    label = f"{vm.name} {who} thread {thread.tid} ({thread.comm}) runs {thread.scheduling}"
    if kind == "vcpu" and index in vm.realtime_vcpus:
        assert vm.realtime is not None
        if thread.policy != SCHED_FIFO or thread.rt_priority != vm.realtime.priority:
            return f"{label}, plan says {POLICY_NAMES[SCHED_FIFO]} priority {vm.realtime.priority}"
        return None
    if thread.policy in REALTIME_POLICIES:
        why = "a housekeeping vCPU" if kind == "vcpu" and vm.realtime is not None else "not realtime"
        return f"{label}, plan says {why} (not SCHED_FIFO, SCHED_RR or SCHED_DEADLINE)"
    return None


def _setting(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if key == "vlan" and value is None:
        return "untagged"
    return "unset" if value is None else str(value)


def compare_vfs(vm: VmPlan, states: Sequence[VfState]) -> list[Drift]:
    """Each VF's MAC, VLAN, trust and spoofchk as the PF's driver reports them (netlink) against the plan."""
    by_key = {(s.pf_interface, s.index): s for s in states}
    out = []
    for dev in vm.devices:
        if dev.type != "vf" or dev.interface is None or dev.vf_index is None:
            continue
        label = f"{vm.name} VF {dev.vf_index} of {dev.interface}"
        state = by_key.get((dev.interface, dev.vf_index))
        if state is None:
            out.append(Drift(f"{label}: the PF's driver does not report it", DriftKind.VF_SETTINGS))
            continue
        wanted = {"mac": dev.mac, "vlan": dev.vlan, "trust": dev.trust, "spoofchk": dev.spoofchk}
        for key, want in wanted.items():
            have = getattr(state, key)
            if key in ("trust", "spoofchk") and have is None:
                continue  # the driver cannot report it
            if have != want:
                text = f"{label}: {key} is {_setting(key, have)}, plan says {_setting(key, want)}"
                out.append(Drift(text, DriftKind.VF_SETTINGS))
    return out
