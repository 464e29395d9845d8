"""Scenario 6: realtime vCPUs on a real kernel and a real libvirtd (issue 14, section 1).

A 4-vCPU TCG guest (SeaBIOS only, no disk) with `realtime: {housekeeping_vcpus: 2,
priority: 5}` on 2 MiB hugepages: its realtime vCPU threads run SCHED_FIFO at priority 5,
its housekeeping vCPUs, emulator and IOThread do not (read here with sched_getscheduler /
sched_getparam, independently of bmslice's /proc reader); its memory is locked under the
planned hard_limit; `bmslice verify` exits 0, and exits 1 naming the vCPU once one realtime
vCPU thread is set to SCHED_OTHER behind bmslice's back.

Why the lab and not the test machine's own libvirtd: there a realtime slice cannot start,
for three independent reasons, each named by `bmslice preflight`: the machine has 2 CPUs
(a slice with a housekeeping and a realtime vCPU needs two CPUs besides the host's CPU 0);
its container lacks CAP_SYS_RESOURCE, so libvirt cannot raise QEMU's memory-lock limit for
<locked/> ("cannot limit locked memory ...: Operation not permitted"); and its kernel has
RT group scheduling on cgroup v1, where libvirt's cgroups get cpu.rt_runtime_us 0 and
SCHED_FIFO is refused ("Cannot set scheduler parameters ...: Operation not permitted"). The
lab has 12 CPUs, root with every capability, no cgroup controllers for libvirt, and
hugetlbfs mounted before libvirtd starts (libvirt finds hugetlbfs mounts only at its start).
"""

from __future__ import annotations

from pathlib import Path

from lab import labctl, specs
from lab.conftest import Lab

QEMU = "qemu:///system"
VM = "lab-rt"
PRIORITY = 5
NR = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"

# Every thread of the VM's QEMU: name, policy and priority, as the kernel's syscalls say.
SCHED = r"""
import json, os, sys
pid = int(open(f"/run/libvirt/qemu/{sys.argv[1]}.pid").read())
names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR",
         os.SCHED_BATCH: "SCHED_BATCH", os.SCHED_IDLE: "SCHED_IDLE"}
out = []
for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
    comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
    policy = os.sched_getscheduler(tid)
    out.append([tid, comm, names.get(policy, str(policy)), os.sched_getparam(tid).sched_priority])
limits = open(f"/proc/{pid}/limits").read()
memlock = next(line.split()[3] for line in limits.splitlines() if line.startswith("Max locked memory"))
status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
print(json.dumps({"threads": out, "memlock": memlock, "VmLck": status["VmLck"].strip()}))
"""

SET_OTHER = r"""
import os, sys
os.sched_setscheduler(int(sys.argv[1]), os.SCHED_OTHER, os.sched_param(0))
"""


def realtime_spec() -> dict[str, object]:
    # Node 0 of the lab has 3 cores of 2 threads: the host keeps one, the VM's 4 vCPUs take two
    # (vCPUs 0-1 on one core: the housekeeping guest core), the emulator shares the host's.
    vm = {
        "name": VM,
        "vcpus": 4,
        "memory": "128MiB",
        "numa_node": 0,
        "emulator": "host",
        "hugepages": "2M",
        "realtime": {"housekeeping_vcpus": 2, "priority": PRIORITY},
    }
    return {"host": specs.HOST, "vms": [vm]}


def test_realtime_vcpus_run_fifo_and_verify_catches_a_change(lab: Lab, tmp_path: Path) -> None:
    lab.ensure()
    path = specs.write(tmp_path, "realtime.yaml", realtime_spec())
    plan = labctl.bmslice("plan", path.name, "--json", files=[path]).expect().json()
    vm = plan["vms"][0]
    assert vm["realtime"] == {"housekeeping_vcpus": 2, "priority": PRIORITY, "memlock_mib": 128 + 2048}, vm
    assert vm["guest_topology"]["threads"] == 2, vm  # housekeeping vCPUs 0-1 are one guest core

    checks = labctl.bmslice("preflight", path.name, "--json", files=[path]).json()
    found = {f["check"]: f for f in checks["findings"]}
    assert found["rt cgroup"]["level"] == "ok" and found["memlock"]["level"] != "fail", checks
    labctl.say(f"checked: preflight: realtime kernel {found['realtime kernel']['level']}, rt cgroup ok")

    old_pages = int(labctl.sh(f"cat {NR}").expect().out)
    labctl.sh(f"echo {old_pages + 64} > {NR}").expect()
    applied = labctl.bmslice("apply", path.name, "--connect", QEMU, files=[path], timeout=1500)
    try:
        applied.expect()
        seen = labctl.run("python3", "-c", SCHED, VM).expect().json()
        threads = {comm: (tid, policy, prio) for tid, comm, policy, prio in seen["threads"]}
        for vcpu in (2, 3):
            tid, policy, prio = threads[f"CPU {vcpu}/TCG"]
            assert (policy, prio) == ("SCHED_FIFO", PRIORITY), seen
        realtime = {"CPU 2/TCG", "CPU 3/TCG"}
        others = {comm: policy for comm, (_tid, policy, _prio) in threads.items() if comm not in realtime}
        assert "CPU 0/TCG" in others and "CPU 1/TCG" in others and "IO iothread1" in others, seen
        assert set(others.values()) <= {"SCHED_OTHER", "SCHED_BATCH", "SCHED_IDLE"}, seen
        labctl.say(f"checked: vCPUs 2-3 SCHED_FIFO {PRIORITY}; {', '.join(sorted(others))} not realtime")
        assert int(seen["memlock"]) == (128 + 2048) * 1024 * 1024, seen  # libvirt's RLIMIT_MEMLOCK = hard_limit
        assert seen["VmLck"] != "0 kB", seen
        labctl.say(f"checked: QEMU's RLIMIT_MEMLOCK is the planned hard_limit, {seen['VmLck']} locked")

        labctl.bmslice("verify", path.name, "--connect", QEMU, files=[path]).expect()
        labctl.say("checked: verify exit 0")

        tid = threads["CPU 3/TCG"][0]
        labctl.run("python3", "-c", SET_OTHER, str(tid)).expect()
        drift = labctl.bmslice("verify", path.name, "--connect", QEMU, files=[path]).expect(1)
        line = f"{VM} vCPU 3 thread {tid} (CPU 3/TCG) runs SCHED_OTHER, plan says SCHED_FIFO priority {PRIORITY}"
        assert line in drift.out.splitlines(), drift.report()
        labctl.say(f"checked: verify exit 1: {line}")
    finally:
        destroyed = labctl.bmslice("destroy", path.name, "--connect", QEMU, files=[path], timeout=900)
        labctl.sh(f"echo {old_pages} > {NR}")
    destroyed.expect()
    assert labctl.sh(f"cat {NR}").expect().out.strip() == str(old_pages)
    labctl.say("checked: destroyed, hugepages back to what they were")
