"""Realtime vCPUs (issue 14, section 1): spec, plan, domain XML, host args and preflight.

- the spec refuses a bad `realtime` with one line naming the field (priority out of 1..99, a
  boolean, no realtime vCPU left, no hugepages), through the real command line;
- the plan keeps housekeeping vCPUs on whole cores (an odd count on a threads=2 guest is
  refused, naming the field), records the settings, and reads old recorded plans;
- the XML of a realtime VM on the design note's server is a golden file, valid for libvirt's
  RelaxNG schema, read back equal through the model, and read back equal after libvirt's own
  parser (the test:/// driver) split <vcpusched> into one element per vCPU;
- under TCG the KVM-only hint and TSC-deadline requirement are left out and hard_limit
  counts the translation cache;
- the host gets the realtime boot args only when a realtime VM is planned, and a kernel
  booted without the isolcpus flags still counts as reboot-pending;
- preflight judges a PREEMPT_RT kernel, tuned's profile, RT throttling, RT group scheduling
  on cgroup v1 and a memlock limit nobody may raise, on host trees.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree

from bmslice.errors import PlanError, SpecError
from bmslice.model.plan import plan_from_dict, plan_to_dict, vm_from_dict
from bmslice.model.spec import load_spec, spec_from_data
from bmslice.plan.host import missing_args
from bmslice.plan.planner import make_plan
from bmslice.render.artifacts import render_plan
from bmslice.render.domain_model import VcpuSched, domain_from_plan
from bmslice.render.domain_xml import from_xml, to_xml
from bmslice.render.host_files import TUNED_REALTIME, render_host_files
from bmslice.topology.sysfs import FsRoot
from bmslice.verify.compare import compare_definition
from bmslice.verify.findings import Level
from bmslice.verify.preflight import preflight, read_preflight_facts
from golden import assert_golden
from hosttrees import Machine, build
from schema import schema_errors
from topologies import server1, synthetic
from treebuilder import HostSpec, NodeMemory, RuntimeSpec, cpu_layout

ROOT = Path(__file__).parents[1]
SPEC = Path(__file__).parent / "data" / "realtime" / "server1-spec.yaml"
RED = "Red_k8s_cluster_worker1"


def rt_vm(**extra: Any) -> dict[str, Any]:
    vm: dict[str, Any] = {
        "name": "rt", "vcpus": 4, "memory": "2GiB", "hugepages": "2M", "realtime": {"housekeeping_vcpus": 2},
    }  # fmt: skip
    vm.update(extra)
    return vm


def plan_of(vms: list[dict[str, Any]], topo: Any = None, **host: Any) -> Any:
    spec = spec_from_data({"host": host, "vms": vms}, "spec.yaml")
    return make_plan(topo if topo is not None else synthetic(sockets=1, cores=6), spec, origin="spec.yaml")


# --- the spec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("realtime", "needle"),
    [
        ({"priority": 0}, "vms[0].realtime.priority: Expected `int` >= 1"),
        ({"priority": 100}, "vms[0].realtime.priority: Expected `int` <= 99"),
        ({"priority": True}, "vms[0].realtime.priority: Expected `int"),
        ({"priority": "1"}, "vms[0].realtime.priority: Expected `int"),
        ({"housekeeping_vcpus": 0}, "vms[0].realtime.housekeeping_vcpus: Expected `int` >= 1"),
        ({"housekeeping_vcpus": 4}, "vms[0]: realtime.housekeeping_vcpus: 4 leaves no realtime vCPU of the 4"),
        ({"mask": "^0"}, "vms[0].realtime.mask: unknown key"),
    ],
)
def test_bad_realtime_is_one_line_naming_the_field(realtime: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_data({"vms": [rt_vm(realtime=realtime)]}, "spec.yaml")
    assert str(caught.value) == f"spec.yaml: {needle}" or str(caught.value).startswith(f"spec.yaml: {needle}")


def test_realtime_without_hugepages_is_refused_from_the_command_line(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"vms": [rt_vm(hugepages="none")]}))
    host = ROOT / "examples" / "server1" / "host"
    run = subprocess.run(
        [sys.executable, "-m", "bmslice.cli.main", "plan", str(spec), "--host-root", str(host)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.splitlines() == [
        f"error: {spec}: vms[0]: realtime: a realtime VM needs hugepages: 2M or 1G (its memory is locked, and "
        "4 KiB pages would cost it TLB misses)"
    ]


def test_realtime_defaults_to_one_housekeeping_vcpu_at_priority_1() -> None:
    spec = spec_from_data({"vms": [rt_vm(realtime={})]}, "t")
    assert spec.vms[0].realtime is not None
    assert (spec.vms[0].realtime.housekeeping_vcpus, spec.vms[0].realtime.priority) == (1, 1)


# --- the plan ----------------------------------------------------------------------------------


def test_odd_housekeeping_on_a_threads_2_guest_is_refused_naming_the_field() -> None:
    with pytest.raises(PlanError) as caught:
        plan_of([rt_vm(realtime={"housekeeping_vcpus": 1})])
    assert str(caught.value) == (
        "spec.yaml: vms[0].realtime.housekeeping_vcpus: 1 splits host core 2,8: housekeeping vCPU 0 and realtime "
        "vCPU 1 share it; give an even number: whole guest cores"
    )


def test_odd_vcpus_on_smt_still_keep_housekeeping_off_a_realtime_sibling() -> None:
    """5 vCPUs: the guest is told threads=1, but vCPUs 0 and 1 still share a host core."""
    with pytest.raises(PlanError, match=r"splits host core 2,8: .*give one that fills whole host cores"):
        plan_of([rt_vm(vcpus=5, realtime={"housekeeping_vcpus": 1})])
    vm = plan_of([rt_vm(vcpus=5, realtime={"housekeeping_vcpus": 2})]).vm("rt")
    assert vm.guest_topology.threads == 1 and vm.realtime_vcpus == (2, 3, 4)


def test_without_smt_one_housekeeping_vcpu_is_a_whole_core() -> None:
    vm = plan_of([rt_vm(realtime={})], synthetic(sockets=1, cores=8, threads=1)).vm("rt")
    assert vm.realtime is not None and vm.realtime.housekeeping_vcpus == 1
    assert vm.realtime_vcpus == (1, 2, 3)


def test_the_plan_records_realtime_and_reads_old_plans() -> None:
    plan = make_plan(server1(), load_spec(SPEC), origin="spec.yaml")
    red, blue = plan.vm(RED), plan.vm("Blue_k8s_cluster_worker1")
    assert red.realtime is not None and (red.realtime.housekeeping_vcpus, red.realtime.priority) == (2, 1)
    assert red.realtime.memlock_mib == 8192 + 1024 and red.realtime_vcpus == (2, 3, 4, 5, 6, 7)
    assert blue.realtime is None and blue.realtime_vcpus == ()
    data = plan_to_dict(plan)
    assert plan_from_dict(data) == plan
    assert "realtime" not in data["vms"][1]  # an ordinary VM's recorded plan is as it always was
    old = {k: v for k, v in data["vms"][0].items() if k != "realtime"}  # recorded before realtime existed
    assert vm_from_dict(old).realtime is None


def test_realtime_boot_args_only_with_a_realtime_vm() -> None:
    plain = plan_of([{"name": "a", "vcpus": 2, "memory": "1GiB"}])
    assert "nosoftlockup" not in plain.host.kernel_args and "isolcpus=1-5,7-11" in plain.host.kernel_args
    rt = plan_of([rt_vm()]).host.kernel_args
    assert "isolcpus=managed_irq,domain,1-5,7-11" in rt and rt[-5:] == (
        "skew_tick=1",
        "tsc=reliable",
        "nosoftlockup",
        "nmi_watchdog=0",
        "intel_pstate=disable",
    )
    amd = plan_of([rt_vm()], synthetic(sockets=1, cores=6, vendor="AuthenticAMD")).host.kernel_args
    assert "intel_pstate=disable" not in amd and "nmi_watchdog=0" in amd


def test_a_kernel_booted_without_the_isolcpus_flags_is_reboot_pending() -> None:
    planned = ("isolcpus=managed_irq,domain,2-3",)
    assert missing_args(planned, "isolcpus=2-3", None) == planned
    assert missing_args(planned, "isolcpus=domain,managed_irq,2,3", None) == ()
    assert missing_args(("isolcpus=2-3",), "isolcpus=managed_irq,domain,2-3", None) == ()  # more isolation is fine
    assert missing_args(("isolcpus=2-3",), "isolcpus=managed_irq,2-3", None) == ("isolcpus=2-3",)  # no domain


# --- the domain XML ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rt_files() -> dict[str, str]:
    return render_plan(make_plan(server1(), load_spec(SPEC), origin="spec.yaml"))


@pytest.mark.parametrize("name", [f"{RED}.xml", "kernel-args"])
def test_realtime_server1_golden(rt_files: dict[str, str], name: str) -> None:
    assert_golden(f"realtime/server1/{name}", rt_files[name])


def test_an_ordinary_neighbour_renders_as_without_realtime(rt_files: dict[str, str]) -> None:
    blue = "Blue_k8s_cluster_worker1.xml"
    assert rt_files[blue] == (Path(__file__).parent / "golden" / "server1" / blue).read_text()


def test_realtime_xml_validates_and_says_what_the_guides_say(rt_files: dict[str, str]) -> None:
    xml = rt_files[f"{RED}.xml"]
    assert schema_errors(xml) is None
    root = etree.fromstring(xml.encode())
    assert root.find("cputune/vcpusched").attrib == {"vcpus": "2-7", "scheduler": "fifo", "priority": "1"}
    assert [el.tag for el in root.find("memoryBacking")] == ["hugepages", "nosharepages", "locked"]
    assert root.findtext("memtune/hard_limit") == str((8192 + 1024) * 1024)
    assert root.find("features/pmu").get("state") == "off"
    assert root.find("features/kvm/hint-dedicated").get("state") == "on"
    assert root.find("cpu/feature").attrib == {"policy": "require", "name": "tsc-deadline"}
    assert root.find("devices/memballoon").get("model") == "none"


def test_realtime_xml_round_trips_through_libvirt() -> None:
    """libvirt's parser writes <vcpusched vcpus='2-7'> back as six elements: still the same setting."""
    libvirt = pytest.importorskip("libvirt")
    red = make_plan(server1(), load_spec(SPEC)).vm(RED)
    domain = domain_from_plan(red)
    assert from_xml(to_xml(domain)) == domain
    conn = libvirt.open("test:///default")
    try:
        defined = conn.defineXML(to_xml(domain))
        live = defined.XMLDesc(0)
        defined.undefine()
    finally:
        conn.close()
    assert live.count("<vcpusched ") == 6
    assert from_xml(live).vcpusched == (VcpuSched(domain.vcpusched[0].vcpus, "fifo", 1),)
    assert compare_definition(RED, domain, live) == []
    drifted = live.replace("<locked/>", "").replace("<pmu state='off'/>", "")
    assert compare_definition(RED, domain, drifted) == [
        f"{RED} locked memory is False, plan says True",
        f"{RED} PMU is None, plan says False",
    ]


def test_tcg_leaves_out_kvm_only_settings_and_counts_the_translation_cache() -> None:
    vm = plan_of([rt_vm(memory="128MiB")], domain_type="qemu").vm("rt")
    assert vm.realtime is not None and vm.realtime.memlock_mib == 128 + 1024 + 1024
    xml = to_xml(domain_from_plan(vm))
    root = etree.fromstring(xml.encode())
    assert root.find("features/kvm") is None and root.find("cpu/feature") is None
    assert root.find("features/pmu").get("state") == "off" and root.find("memoryBacking/locked") is not None
    assert schema_errors(xml) is None


def test_host_files_carry_the_tuned_realtime_variables_only_with_a_realtime_vm() -> None:
    topo = server1()
    rt = render_host_files(make_plan(topo, load_spec(SPEC)), topo)
    assert rt[TUNED_REALTIME].endswith("isolated_cores=2-11,14-23\nisolate_managed_irq=Y\n")
    plain = render_host_files(make_plan(topo, load_spec(ROOT / "examples/server1/spec.yaml")), topo)
    assert TUNED_REALTIME not in plain


# --- preflight ---------------------------------------------------------------------------------


def _rt_machine() -> Machine:
    host = HostSpec(cpus=cpu_layout(1, 4, 2), node_memory={0: NodeMemory(16384)})
    spec = {"vms": [rt_vm(vcpus=4, realtime={"housekeeping_vcpus": 2, "priority": 10})]}
    return Machine("rt-host", host, spec)


@pytest.fixture(scope="module")
def rt_tree(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build(tmp_path_factory.mktemp("rt"), _rt_machine(), lambda _p, _t: RuntimeSpec(vfio="module"))


def _findings(built: Any, files: dict[str, str]) -> dict[str, Any]:
    for rel, text in files.items():
        path = built.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    try:
        facts = read_preflight_facts(FsRoot(built.root), built.plan, built.topo)
        return {f.check: f for f in preflight(built.plan, built.topo, facts)}
    finally:
        for rel in files:
            (built.root / rel).unlink()


def test_preflight_on_a_host_ready_for_realtime(rt_tree: Any) -> None:
    found = _findings(
        rt_tree,
        {
            "sys/kernel/realtime": "1\n",
            "usr/lib/tuned/profiles/realtime-virtual-host/tuned.conf": "[main]\ninclude=realtime\n",
            "proc/sys/kernel/sched_rt_runtime_us": "-1\n",
            "proc/self/status": "Name:\tbmslice\nCapBnd:\t000001ffffffffff\n",
        },
    )
    for check in ("realtime kernel", "tuned realtime-virtual-host", "rt throttling", "rt cgroup"):
        assert found[check].level is Level.OK, found[check].line()
    assert found["tuned realtime-virtual-host"].message == (
        "available: /usr/lib/tuned/profiles/realtime-virtual-host/tuned.conf"
    )
    assert found["memlock"].level is Level.WARN  # 8 MiB here; libvirt raises it (it may)
    assert "a realtime guest locks up to 3072 MiB" in found["memlock"].message


def test_preflight_on_a_host_not_ready_for_realtime(rt_tree: Any) -> None:
    found = _findings(
        rt_tree,
        {
            "proc/sys/kernel/sched_rt_runtime_us": "950000\n",
            "sys/fs/cgroup/cpu/cpu.rt_runtime_us": "950000\n",
            "proc/self/status": "Name:\tbmslice\nCapBnd:\t000001fffeffffff\n",  # no CAP_SYS_RESOURCE (bit 24)
        },
    )
    warned = ("realtime kernel", "tuned realtime-virtual-host", "rt throttling")
    assert {found[check].level for check in warned} == {
        Level.WARN
    }  # warn, not fail: the VM runs, with weaker guarantees
    assert found["realtime kernel"].message.startswith("not PREEMPT_RT (/sys/kernel/realtime is absent)")
    assert found["rt cgroup"].level is Level.FAIL
    assert "cpu.rt_runtime_us 0" in found["rt cgroup"].message and "/sys/fs/cgroup/cpu/cpu.rt_runtime_us" in (
        found["rt cgroup"].message
    )
    assert found["memlock"].level is Level.FAIL
    assert found["memlock"].message.startswith("RLIMIT_MEMLOCK here is 8 MiB and CAP_SYS_RESOURCE is not in")
    assert found["memlock"].remedy.endswith("at least 3072 MiB")


def test_preflight_without_a_realtime_vm_says_so_once(rt_tree: Any) -> None:
    plain = replace(rt_tree.plan, vms=tuple(replace(vm, realtime=None) for vm in rt_tree.plan.vms))
    facts = read_preflight_facts(FsRoot(rt_tree.root), plain, rt_tree.topo)
    found = [f for f in preflight(plain, rt_tree.topo, facts) if f.check.startswith(("realtime", "rt ", "tuned"))]
    assert [f.line() for f in found] == ["ok   realtime: not needed: no realtime VM"]


# --- verify: the kernel's own view of each thread's scheduling ---------------------------------

# A process shaped like QEMU: its main thread (the emulator), vCPU threads and an IOThread, each
# named as QEMU names them (comm). It prints its threads' ids and waits for stdin to close.
FAKE_QEMU = r"""
import json, sys, threading
names = sys.argv[1:]
done, named = threading.Event(), threading.Barrier(len(names) + 1)
tids = {}
def run(name):
    tid = threading.get_native_id()
    with open(f"/proc/self/task/{tid}/comm", "w") as comm:
        comm.write(name)
    tids[name] = tid
    named.wait()
    done.wait()
for n in names:
    threading.Thread(target=run, args=(n,)).start()
named.wait()
print(json.dumps(tids), flush=True)
sys.stdin.read()
done.set()
"""


def test_verify_reads_each_threads_scheduling_from_the_kernel() -> None:
    """Real threads, scheduled for real (SCHED_FIFO needs root): the reader agrees with
    sched_getscheduler/sched_getparam, and each difference from the plan is one drift line."""
    import os

    from bmslice.cpuset import CpuSet
    from bmslice.model.plan import GuestTopology, RealtimePlan, VmPlan
    from bmslice.verify.compare import compare_threads
    from bmslice.verify.threads import read_threads

    # "TC tc-pc.ram": QEMU's thread-context, which libvirt 9.0 leaves on the memory node's CPUs
    names = ["CPU 0/TCG", "CPU 1/TCG", "CPU 2/TCG", "IO iothread1", "TC tc-pc.ram"]
    child = subprocess.Popen(
        [sys.executable, "-c", FAKE_QEMU, *names], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        tids: dict[str, int] = json.loads(child.stdout.readline())
        last = max(os.sched_getaffinity(0))
        for name, tid in tids.items():
            if not name.startswith("TC "):  # its CPUs are QEMU's choice: left on every CPU
                os.sched_setaffinity(tid, {last} if name.startswith("CPU") else {0})
        os.sched_setaffinity(child.pid, {0})
        vm = VmPlan(
            name="fake", numa_nodes=(0,), vcpu_pins=(last, last, last), emulator_cpus=CpuSet.of(0),
            iothread_cpus=CpuSet.of(0), iothreads=1, guest_topology=GuestTopology(1, 3, 1), memory_mib=128,
            hugepage_kib=2048, cores=(), emulator_policy="host", realtime=RealtimePlan(1, 7, 2176),
        )  # fmt: skip

        def drift() -> list[str]:
            return compare_threads(vm, read_threads(child.pid))

        assert [d for d in drift() if "runs" in d] == [
            f"fake vCPU 1 thread {tids['CPU 1/TCG']} (CPU 1/TCG) runs SCHED_OTHER, plan says SCHED_FIFO priority 7",
            f"fake vCPU 2 thread {tids['CPU 2/TCG']} (CPU 2/TCG) runs SCHED_OTHER, plan says SCHED_FIFO priority 7",
        ]
        for name in ("CPU 1/TCG", "CPU 2/TCG"):
            os.sched_setscheduler(tids[name], os.SCHED_FIFO, os.sched_param(7))
            assert os.sched_getscheduler(tids[name]) == os.SCHED_FIFO
            assert os.sched_getparam(tids[name]).sched_priority == 7
        by_tid = {t.tid: t for t in read_threads(child.pid)}
        assert by_tid[tids["CPU 1/TCG"]].scheduling == "SCHED_FIFO priority 7"
        assert by_tid[tids["CPU 0/TCG"]].scheduling == "SCHED_OTHER"
        assert drift() == []

        os.sched_setscheduler(tids["CPU 2/TCG"], os.SCHED_OTHER, os.sched_param(0))  # behind bmslice's back
        os.sched_setscheduler(tids["CPU 0/TCG"], os.SCHED_RR, os.sched_param(3))
        os.sched_setscheduler(tids["IO iothread1"], os.SCHED_FIFO, os.sched_param(1))
        os.sched_setscheduler(tids["TC tc-pc.ram"], os.SCHED_FIFO, os.sched_param(2))
        assert drift() == [
            f"fake vCPU 0 thread {tids['CPU 0/TCG']} (CPU 0/TCG) runs SCHED_RR priority 3, plan says a housekeeping "
            "vCPU (not SCHED_FIFO, SCHED_RR or SCHED_DEADLINE)",
            f"fake vCPU 2 thread {tids['CPU 2/TCG']} (CPU 2/TCG) runs SCHED_OTHER, plan says SCHED_FIFO priority 7",
            f"fake IOThread 1 thread {tids['IO iothread1']} (IO iothread1) runs SCHED_FIFO priority 1, plan says "
            "not realtime (not SCHED_FIFO, SCHED_RR or SCHED_DEADLINE)",
            f"fake thread-context thread {tids['TC tc-pc.ram']} (TC tc-pc.ram) runs SCHED_FIFO priority 2, plan says "
            "not realtime (not SCHED_FIFO, SCHED_RR or SCHED_DEADLINE)",
        ]
    finally:
        child.communicate(timeout=30)
