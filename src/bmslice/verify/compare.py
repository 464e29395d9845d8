"""Live state vs plan, one line per difference (pure: no libvirt, no /proc).

The live XML is read back through the same Domain model that rendered it, so every
field the renderer wrote is a field verify checks.
"""

from __future__ import annotations

from collections.abc import Sequence

from bmslice.cpuset import CpuSet
from bmslice.model.live import LiveDomain, ThreadAffinity
from bmslice.model.plan import VmPlan
from bmslice.model.topology import VfState
from bmslice.render.domain_model import Domain
from bmslice.render.domain_xml import from_xml

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
    "cachetunes": "cachetune (L3 cache id, KiB)",
    "memorytunes": "memorytune (node, bandwidth %)",
}


def _fmt(value: object) -> str:
    if isinstance(value, CpuSet):
        return value.format() or "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def compare_definition(name: str, desired: Domain, live_xml: str) -> list[str]:
    current = from_xml(live_xml)
    out = []
    for field, words in _XML_FIELDS.items():
        want, have = getattr(desired, field), getattr(current, field)
        if want != have:
            out.append(f"{name} {words} is {_fmt(have)}, plan says {_fmt(want)}")
    return out


def compare_pins(name: str, desired: Domain, live: LiveDomain) -> list[str]:
    out = []
    for vcpu, want in desired.vcpupins:
        have = live.vcpu_pins[vcpu] if vcpu < len(live.vcpu_pins) else None
        if have != want:
            out.append(f"{name} vCPU {vcpu} pinned to {_fmt(have)}, plan says {want}")
    if desired.emulatorpin is not None and live.emulator_pin != desired.emulatorpin:
        out.append(f"{name} emulator pinned to {_fmt(live.emulator_pin)}, plan says {desired.emulatorpin}")
    current = dict(live.iothread_pins)
    for iothread, want in desired.iothreadpins:
        if current.get(iothread) != want:
            out.append(f"{name} IOThread {iothread} pinned to {_fmt(current.get(iothread))}, plan says {want}")
    return out


def thread_role(comm: str) -> tuple[str, int] | None:
    """("vcpu", n), ("iothread", n), ("emulator", 0), or None for kernel helpers (kvm-nx-lpage-re)."""
    if comm.startswith("CPU ") and "/" in comm:
        index = comm[4:].split("/", 1)[0]
        if index.isdigit():
            return ("vcpu", int(index))
    if comm.startswith("IO iothread") and comm[11:].isdigit():
        return ("iothread", int(comm[11:]))
    if comm.startswith("kvm"):
        return None  # kernel threads attached to the VM follow their vCPU's cgroup
    return ("emulator", 0)


def compare_threads(vm: VmPlan, threads: Sequence[ThreadAffinity]) -> list[str]:
    """The kernel's own view (Cpus_allowed_list of every QEMU thread) against the plan."""
    out = []
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
        if want != thread.cpus:
            out.append(
                f"{vm.name} thread {thread.tid} ({thread.comm}) allowed on CPUs {thread.cpus}, plan says {_fmt(want)}"
            )
    return out


def _setting(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if key == "vlan" and value is None:
        return "untagged"
    return "unset" if value is None else str(value)


def compare_vfs(vm: VmPlan, states: Sequence[VfState]) -> list[str]:
    """Each VF's MAC, VLAN, trust and spoofchk as the PF's driver reports them (netlink) against the plan."""
    by_key = {(s.pf_interface, s.index): s for s in states}
    out = []
    for dev in vm.devices:
        if dev.type != "vf" or dev.interface is None or dev.vf_index is None:
            continue
        label = f"{vm.name} VF {dev.vf_index} of {dev.interface}"
        state = by_key.get((dev.interface, dev.vf_index))
        if state is None:
            out.append(f"{label}: the PF's driver does not report it")
            continue
        wanted = {"mac": dev.mac, "vlan": dev.vlan, "trust": dev.trust, "spoofchk": dev.spoofchk}
        for key, want in wanted.items():
            have = getattr(state, key)
            if key in ("trust", "spoofchk") and have is None:
                continue  # the driver cannot report it
            if have != want:
                out.append(f"{label}: {key} is {_setting(key, have)}, plan says {_setting(key, want)}")
    return out
