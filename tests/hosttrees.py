"""Host trees of several machines, prepared (or not) for a plan, for host-config/apply/preflight/audit tests.

`build(tmp, machine, runtime)` writes the machine once to plan on it, then again with
the planned kernel args on its command line, the planned hugepages reserved and the
live state `runtime(plan, topo)` returns: `clean_runtime` is a host that holds the plan's
isolation, `violating_runtime` adds one of each kind of breach audit must catch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from bmslice.cpuset import CpuSet
from bmslice.model.plan import Plan
from bmslice.model.spec import spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from bmslice.topology.sysfs import read_host_tree
from treebuilder import (
    HUGEPAGE_SIZES_KIB,
    HostSpec,
    IrqSpec,
    NodeMemory,
    PciSpec,
    ProcSpec,
    RuntimeSpec,
    TaskSpec,
    cpu_layout,
    server1_spec,
    write_tree,
)

EXAMPLE_SPEC = Path(__file__).parents[1] / "examples" / "server1" / "spec.yaml"


@dataclass(frozen=True)
class Machine:
    name: str
    host: HostSpec
    spec: dict[str, Any]


def server1() -> Machine:
    """The design note's server: Intel, SMT, 2 nodes, X540 NICs passed through."""
    return Machine("server1", server1_spec(), yaml.safe_load(EXAMPLE_SPEC.read_text()))


def amd_nps2() -> Machine:
    """AMD EPYC-like, 1 socket in NPS2 (2 nodes), SMT siblings adjacent; 2 MiB hugepages; a NIC on node 1."""
    nic = PciSpec(
        "0000:41:00.0", vendor="0x14e4", device="0x16d7", numa_node=1, iommu_group=40, driver="bnxt_en",
        interfaces=("enp65s0f0",), sriov_totalvfs=8,
    )  # fmt: skip
    mgmt = PciSpec("0000:01:00.0", vendor="0x14e4", device="0x165f", iommu_group=12, driver="tg3", interfaces=("eno1",))
    host = HostSpec(
        cpus=cpu_layout(1, 8, 2, siblings="adjacent", nodes_per_socket=2),
        vendor="AuthenticAMD",
        node_memory={0: NodeMemory(32768), 1: NodeMemory(32768)},
        default_route="eno1",
        pci=(mgmt, nic),
    )
    spec = {
        "vms": [
            {"name": "db", "vcpus": 4, "memory": "8GiB", "numa_node": 0, "hugepages": "2M", "emulator": "host"},
            {
                "name": "web",
                "vcpus": 4,
                "memory": "4GiB",
                "numa_node": 1,
                "hugepages": "2M",
                "nics": [{"passthrough": "enp65s0f0"}],
            },
        ]
    }
    return Machine("amd-nps2", host, spec)


def intel_nosmt() -> Machine:
    """Intel without SMT, 2 sockets / 2 nodes, one VM on boot-time 1 GiB pages."""
    host = HostSpec(
        cpus=cpu_layout(2, 4, 1),
        node_memory={0: NodeMemory(16384), 1: NodeMemory(16384)},
        default_route="eno1",
        pci=(PciSpec("0000:00:19.0", device="0x153a", iommu_group=5, driver="e1000e", interfaces=("eno1",)),),
    )
    spec = {"vms": [{"name": "rt", "vcpus": 2, "memory": "4GiB", "numa_node": 0, "hugepages": "1G"}]}
    return Machine("intel-nosmt", host, spec)


def amd_small() -> Machine:
    """AMD without SMT, one node: the smallest host that can hold a slice."""
    sata = PciSpec(
        "0000:00:11.0", class_code="0x010601", vendor="0x1022", device="0x7901", iommu_group=3, driver="ahci"
    )
    host = HostSpec(cpus=cpu_layout(1, 4, 1), vendor="AuthenticAMD", node_memory={0: NodeMemory(8192)}, pci=(sata,))
    spec = {"vms": [{"name": "tiny", "vcpus": 2, "memory": "2GiB", "emulator": "host"}]}
    return Machine("amd-small", host, spec)


MACHINES: dict[str, Callable[[], Machine]] = {
    "server1": server1,
    "amd-nps2": amd_nps2,
    "intel-nosmt": intel_nosmt,
    "amd-small": amd_small,
}


@dataclass(frozen=True)
class Built:
    root: Path
    spec_path: Path
    plan: Plan
    topo: HostTopology
    host: HostSpec


_PROBED: dict[tuple[str, str], tuple[Plan, HostTopology]] = {}


def plan_for(machine: Machine, tmp: Path) -> tuple[Plan, HostTopology]:
    """The plan on the machine as built (trees are slow to write: each machine and spec is probed once)."""
    key = (machine.name, yaml.safe_dump(machine.spec))
    if key not in _PROBED:
        root = write_tree(machine.host, tmp / f"{machine.name}-probe")
        topo = read_host_tree(root)
        _PROBED[key] = (make_plan(topo, spec_from_data(machine.spec, "spec.yaml")), topo)
    return _PROBED[key]


def _reserved_pools(host: HostSpec, plan: Plan, in_use: bool) -> dict[int, NodeMemory]:
    """Planned hugepages reserved; `in_use`: all taken, as on a host whose slices run."""
    pools = dict(host.node_memory)
    for node in {h.node for h in plan.host.hugepages}:
        memory = pools.get(node, NodeMemory())
        pages = {h.size_kib: h.pages for h in plan.host.hugepages if h.node == node}
        pools[node] = replace(
            memory,
            hugepages=tuple((s, pages.get(s, 0), 0 if in_use else pages.get(s, 0)) for s in HUGEPAGE_SIZES_KIB),
        )
    return pools


def build(
    tmp: Path,
    machine: Machine,
    runtime: Callable[[Plan, HostTopology], RuntimeSpec] | None = None,
    boot_args: bool = True,
    hugepages: bool = True,
    pages_in_use: bool = True,
    spec: dict[str, Any] | None = None,
    **host_changes: Any,
) -> Built:
    if spec is not None:
        machine = replace(machine, spec=spec)
    plan, topo = plan_for(machine, tmp)
    host = replace(machine.host, **host_changes)
    if boot_args:
        host = replace(host, cmdline=f"{host.cmdline} {' '.join(plan.host.kernel_args)}")
    if hugepages:
        host = replace(host, node_memory=_reserved_pools(host, plan, pages_in_use))
    if runtime is not None:
        host = replace(host, runtime=runtime(plan, topo))
    root = write_tree(host, tmp / machine.name)
    spec_path = tmp / f"{machine.name}.yaml"
    spec_path.write_text(yaml.safe_dump(machine.spec))
    final_topo = read_host_tree(root)
    return Built(root, spec_path, make_plan(final_topo, spec_from_data(machine.spec, "spec.yaml")), final_topo, host)


# --- live state ------------------------------------------------------------------------

QEMU = "/usr/bin/qemu-system-x86_64"


def qemu_process(pid: int, name: str, emulator: CpuSet, pins: tuple[int, ...], iothread: CpuSet) -> ProcSpec:
    threads = [TaskSpec(pid + 1 + i, f"CPU {i}/KVM", str(cpu)) for i, cpu in enumerate(pins)]
    if iothread:
        threads.append(TaskSpec(pid + 1 + len(pins), "IO iothread1", str(iothread)))
    return ProcSpec(
        pid,
        "qemu-system-x86",
        str(emulator),
        cmdline=(QEMU, "-name", f"guest={name},debug-threads=on", "-S", "-machine", "pc-q35-7.2"),
        threads=tuple(threads),
    )


def per_cpu_kthreads(online: CpuSet, first_pid: int = 10) -> list[ProcSpec]:
    """One per-CPU kthread on each CPU, known as a kthread in turn by each of the three ways audit has."""
    out = []
    for i, cpu in enumerate(online):
        pid, cpus = first_pid + i, str(cpu)
        if i % 3 == 0:
            out.append(ProcSpec(pid, f"cpuhp/{cpu}", cpus, ppid=2, kthread=True))
        elif i % 3 == 1:
            out.append(ProcSpec(pid, f"ksoftirqd/{cpu}", cpus, ppid=2, kthread=True, kthread_line=False))
        else:
            out.append(ProcSpec(pid, f"kworker/{cpu}:0", cpus, ppid=2, kthread=True, kthread_line=False, stat=False))
    return out


def boot_mounts(plan: Plan) -> str:
    """/proc/mounts of a host booted after host-apply: systemd's 2 MiB hugetlbfs, and bmslice's
    1 GiB one when the plan uses 1 GiB pages."""
    mounts = RuntimeSpec().mounts or ""
    if any(h.size_kib == 1048576 for h in plan.host.hugepages):
        mounts += "hugetlbfs /dev/hugepages1G hugetlbfs rw,nosuid,nodev,relatime,pagesize=1024M 0 0\n"
    return mounts


def clean_runtime(plan: Plan, topo: HostTopology, **changes: Any) -> RuntimeSpec:
    reserved, isolated = plan.host.reserved_cpus, plan.host.isolated_cpus
    housekeeping = str(reserved)
    first = str(reserved.min())
    online = str(topo.online_cpus)
    procs = [
        ProcSpec(1, "systemd", housekeeping, cmdline=("/sbin/init", "splash"), ppid=0),
        ProcSpec(2, "kthreadd", housekeeping, ppid=0, kthread=True),
        *per_cpu_kthreads(topo.online_cpus),
        ProcSpec(800, "sshd", housekeeping, cmdline=("sshd: /usr/sbin/sshd -D",)),
        ProcSpec(
            810,
            "libvirtd",
            housekeeping,
            cmdline=("/usr/sbin/libvirtd", "--timeout", "120"),
            threads=(TaskSpec(811, "rpc-worker", housekeeping), TaskSpec(812, "prio-rpc-worker", housekeeping)),
        ),
    ]
    for i, vm in enumerate(plan.vms):
        procs.append(qemu_process(1000 + 100 * i, vm.name, vm.emulator_cpus, vm.vcpu_pins, vm.iothread_cpus))
    irqs = (
        IrqSpec(0, online, first, action="timer"),
        IrqSpec(9, online, None, action=None),  # allocated, no handler: cannot fire
        IrqSpec(24, housekeeping, first, action="eth0-TxRx-0"),
        IrqSpec(25, online, first, action="ahci[0000:00:17.0]"),  # default affinity, effective on the host
        IrqSpec(26, housekeeping, None, action="i801_smbus"),
    )
    values: dict[str, Any] = {
        "isolated": str(isolated),
        "nohz_full": str(isolated),
        "irqs": irqs,
        "procs": tuple(procs),
        "mounts": boot_mounts(plan),
    }
    values.update(changes)
    return RuntimeSpec(**values)


VIOLATING_PIDS = (5000, 5001, 5003, 5100)


def violating_runtime(plan: Plan, topo: HostTopology) -> RuntimeSpec:
    """The clean host plus one breach of each kind; `expected_violations` names them."""
    clean = clean_runtime(plan, topo)
    online = str(topo.online_cpus)
    victim = str(plan.host.isolated_cpus.sorted()[-1])
    vm = plan.vms[0]
    slice_cpus = vm.owned_cpus | vm.emulator_cpus | vm.iothread_cpus
    outsider = (plan.host.isolated_cpus - slice_cpus).sorted()[0]
    qemu_pid = 1000
    procs = [p for p in clean.procs if p.pid != qemu_pid]
    pins = (outsider, *vm.vcpu_pins[1:])
    procs += [
        qemu_process(qemu_pid, vm.name, vm.emulator_cpus, pins, vm.iothread_cpus),
        ProcSpec(5000, "stress", online, cmdline=("/usr/bin/stress", "--cpu", "4")),
        ProcSpec(
            5001,
            "sshd",
            str(plan.host.reserved_cpus),
            cmdline=("/usr/sbin/sshd",),
            threads=(TaskSpec(5002, "worker", victim),),
        ),
        ProcSpec(5003, "kworker/u48:1", online, ppid=2, kthread=True),
        ProcSpec(5100, "qemu-system-x86", victim, cmdline=(QEMU, "-name", "guest=intruder,debug-threads=on")),
    ]
    irqs = (
        *clean.irqs,
        IrqSpec(90, online, victim, action="eth1-TxRx-3"),
        IrqSpec(91, online, None, action="i8042"),
    )
    return replace(clean, procs=tuple(procs), irqs=irqs)


def expected_violations(plan: Plan) -> set[str]:
    return {"irq 90", "irq 91", "thread 1000", *(f"thread {pid}" for pid in VIOLATING_PIDS)}
