"""The plan as the terminal shows it: the host's part, one row per slice, the warnings.

Plain text (`render/text_table.py`, the fleet's tables too): a one-shot `bmslice plan`
imports no table library (rich alone costs about a fifth of that command's start-up).
"""

from __future__ import annotations

from bmslice.cpuset import CpuSet
from bmslice.model.plan import AT_APPLY, DeviceAssignment, Plan
from bmslice.model.sizes import format_mib
from bmslice.render.node_text import node_text
from bmslice.render.text_table import text_table
from bmslice.safe_text import one_line

SLICE_COLUMNS = (
    "VM",
    "node",
    "vCPU 0, 1, ... on host CPUs",
    "emulator + IOThreads",
    "guest topology",
    "memory",
    "NICs",
)


def plan_lines(plan: Plan) -> list[str]:
    host = plan.host
    head = [
        ("reserved CPUs (host OS, IRQs)", host.reserved_cpus.format()),
        ("isolated CPUs", host.isolated_cpus.format() or "-"),
        ("kernel args", " ".join(host.kernel_args)),
        ("reboot required", "yes: " + " ".join(host.missing_kernel_args) if host.reboot_required else "no"),
    ]
    head += [
        (f"SR-IOV {pf.interface or pf.address}", f"sriov_numvfs {pf.numvfs_before} -> {pf.numvfs}") for pf in host.sriov
    ]
    if host.l3_host_masks:
        masks = " ".join(f"{cache_id}={mask:x}" for cache_id, mask in host.l3_host_masks)
        head.append(("L3 ways the host keeps (resctrl default group)", masks))
    rows = []
    for vm in plan.vms:
        t = vm.guest_topology
        iothreads = f" ({vm.iothreads} IOThread{'s' if vm.iothreads != 1 else ''})" if vm.iothreads else ""
        realtime = ""
        if vm.realtime is not None:
            vcpus = CpuSet.from_iter(vm.realtime_vcpus)
            realtime = f"\nrealtime: vCPUs {vcpus} SCHED_FIFO {vm.realtime.priority}"
        rows.append(
            (
                vm.name,
                node_text(vm),
                " ".join(_pairs(vm.vcpu_pins, t.threads)) + realtime,
                f"{vm.emulator_cpus} {vm.emulator_policy}{iothreads}",
                f"{t.sockets}s x {t.cores}c x {t.threads}t",
                format_mib(vm.memory_mib),
                "\n".join(_device_text(d) for d in vm.devices) or "-",
            )
        )
    lines = ["Host", *(f"  {line}" for line in text_table(None, head)), "", "Slices"]
    lines += [f"  {line}" for line in text_table(SLICE_COLUMNS, rows)] if rows else ["  (none)"]
    return lines + [f"warning: {one_line(w)}" for w in plan.warnings]


def _pairs(pins: tuple[int, ...], threads: int) -> list[str]:
    """Guest sibling pairs grouped as they sit on host cores: 4,16 6,18 ..."""
    step = 2 if threads == 2 else 1
    return [",".join(map(str, pins[i : i + step])) for i in range(0, len(pins), step)]


def _device_text(d: DeviceAssignment) -> str:
    if d.type == "vf":
        vlan = f"VLAN {d.vlan}" if d.vlan else "untagged"
        where = d.address or AT_APPLY
        return f"{where} (VF {d.vf_index} of {d.interface or d.pf}, {vlan}, MAC {d.mac})"
    return f"{d.address} {d.interface or ''}".strip()
