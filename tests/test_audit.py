"""audit: clean host trees pass, each kind of breach is caught, and the real machine gets a structured answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from bmslice.cli import host_cmds
from bmslice.cpuset import CpuSet
from bmslice.topology.fsroot import FsRoot
from bmslice.verify.audit import AuditReport, audit
from bmslice.verify.host_state import kthread_evidence, parse_status, qemu_guest, read_runtime, stat_flags
from hosttrees import MACHINES, Built, build, clean_runtime, expected_violations, violating_runtime
from treebuilder import IrqSpec, ProcSpec

KTHREADD_STAT = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 24 0 0"  # recorded on Linux 6.18


Trees = Callable[[str, str], Built]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Trees:
    """Clean and violating trees per machine, written once: the tests only read them."""
    cache: dict[tuple[str, str], Built] = {}
    runtimes = {"clean": clean_runtime, "violating": violating_runtime}

    def get(name: str, variant: str) -> Built:
        if (name, variant) not in cache:
            tmp = tmp_path_factory.mktemp(f"{name}-{variant}")
            cache[(name, variant)] = build(tmp, MACHINES[name](), runtimes[variant])
        return cache[(name, variant)]

    return get


def run_audit(built: Built) -> AuditReport:
    return audit(built.plan, built.topo, read_runtime(FsRoot(built.root)))


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_clean_hosts_pass(trees: Trees, name: str) -> None:
    built = trees(name, "clean")
    report = run_audit(built)
    assert [f.line() for f in report.violations] == []
    online = built.topo.online_cpus
    isolated = built.plan.host.isolated_cpus
    # One per-CPU kthread on each isolated CPU, found by Kthread:, by PF_KTHREAD or by the last fallback.
    assert sorted(e.cpus.min() for e in report.excepted) == isolated.sorted() and len(online) > len(isolated)
    assert {e.reason for e in report.excepted} == {
        "per-CPU kernel thread (Kthread: 1)",
        "per-CPU kernel thread (PF_KTHREAD)",
        "per-CPU kernel thread (child of kthreadd without exe)",
    }
    checks = {f.check for f in report.passed}
    assert {"kernel args", "isolated", "nohz_full", "irqs", "threads"} <= checks
    assert any(f.check.startswith("hugepages") for f in report.passed) == bool(built.plan.host.hugepages)


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_breaches_are_caught(trees: Trees, name: str) -> None:
    built = trees(name, "violating")
    report = run_audit(built)
    assert {f.check for f in report.violations} == expected_violations(built.plan)
    lines = {f.check: f.message for f in report.violations}
    victim = built.plan.host.isolated_cpus.sorted()[-1]
    assert lines["irq 90"].startswith(f"IRQ 90 (eth1-TxRx-3) can fire on isolated CPU(s) {victim}: effective affinity")
    assert "counted even if the kernel will not move it" in lines["irq 90"]
    assert "default affinity (all CPUs" in lines["irq 91"] and "no effective_affinity_list" in lines["irq 91"]
    assert lines["thread 5001"].startswith(f"pid 5001 (sshd) thread 5002 (worker) may run on isolated CPU(s) {victim}")
    assert lines["thread 5003"].startswith("kernel thread pid 5003 (kworker/u48:1) is not per-CPU")
    vm = built.plan.vms[0]
    assert lines["thread 1000"].startswith(f"QEMU of {vm.name}: pid 1000 (qemu-system-x86) thread 1001 (CPU 0/KVM)")
    assert "outside its slice" in lines["thread 1000"]
    assert lines["thread 5100"].startswith("QEMU of unplanned guest intruder: pid 5100")
    assert all(f.remedy for f in report.violations)


def test_kernel_placed_threads_as_a_real_kernel_shows_them(tmp_path: Path) -> None:
    """Seen on a real 6.1 kernel booted with the plan's args (the lab): workqueue rescuers the kernel
    binds to every CPU (PF_NO_SETAFFINITY) cannot be moved, and kswapd keeps its node's CPUs."""

    def runtime(plan, topo):  # type: ignore[no-untyped-def]
        online = str(topo.online_cpus)
        node0 = str(topo.node(0).cpus)
        base = clean_runtime(plan, topo)
        extra = (
            ProcSpec(3, "rcu_gp", online, ppid=2, kthread=True, extra_flags=0x04000000),
            ProcSpec(109, "kblockd", online, ppid=2, kthread=True, kthread_line=False, extra_flags=0x04000000),
            ProcSpec(118, "kswapd0", node0, ppid=2, kthread=True),
        )
        return replace(base, procs=(*base.procs, *extra))

    built = build(tmp_path, MACHINES["server1"](), runtime)
    report = run_audit(built)
    assert report.ok, [f.line() for f in report.violations]
    bound = {e.comm: e.reason for e in report.excepted if e.pid in (3, 109)}
    assert set(bound) == {"rcu_gp", "kblockd"} and all("PF_NO_SETAFFINITY" in r for r in bound.values())
    [kswapd] = report.warnings
    assert kswapd.check == "thread 118" and "kernel thread pid 118 (kswapd0) is not per-CPU" in kswapd.message
    assert kswapd.remedy.startswith(f"taskset -pc {built.plan.host.reserved_cpus} 118")
    assert any(f.check == "threads" for f in report.passed)


def test_kernel_state_mismatches(tmp_path: Path) -> None:
    def runtime(plan, topo):  # type: ignore[no-untyped-def]
        return clean_runtime(plan, topo, isolated="2-11", nohz_full=None)

    built = build(tmp_path, MACHINES["server1"](), runtime, boot_args=False, pages_in_use=True)
    report = run_audit(built)
    lines = [f.line() for f in report.violations]
    assert "fail isolated: /sys/devices/system/cpu/isolated is 2-11, the plan isolates 2-11,14-23" in lines[5]
    assert lines[6].startswith("fail nohz_full: /sys/devices/system/cpu/nohz_full does not exist")
    assert [f.message for f in report.violations[:5]] == [
        "iommu=pt is not active: /proc/cmdline has no iommu",
        "isolcpus=2-11,14-23 is not active: /proc/cmdline has no isolcpus",
        "nohz_full=2-11,14-23 is not active: /proc/cmdline has no nohz_full",
        "rcu_nocbs=2-11,14-23 is not active: /proc/cmdline has no rcu_nocbs",
        "irqaffinity=0-1,12-13 is not active: /proc/cmdline has no irqaffinity",
    ]


def test_cpu_lists_compare_as_sets(tmp_path: Path) -> None:
    machine = MACHINES["amd-small"]()
    built = build(tmp_path, machine, clean_runtime, boot_args=False, cmdline="ro isolcpus=domain,3,1-2 "
                  "nohz_full=1,2,3 rcu_nocbs=1-3 irqaffinity=0 iommu=pt")  # fmt: skip
    report = run_audit(built)
    assert report.ok, [f.line() for f in report.violations]


def test_hugepages_short(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["amd-nps2"](), clean_runtime, hugepages=False)
    lines = {f.check: f for f in run_audit(built).violations}
    assert set(lines) == {"hugepages node0", "hugepages node1"}
    assert lines["hugepages node0"].message == "0 2 MiB pages reserved, the plan needs 4096"
    assert lines["hugepages node0"].remedy == "bmslice host-apply"


def test_irq_without_handler_is_skipped_but_counted(trees: Trees) -> None:
    built = trees("amd-small", "clean")
    passed = {f.check: f.message for f in run_audit(built).passed}
    assert passed["irqs"] == "none of 4 IRQs can fire on isolated CPUs 1-3; 1 without a handler skipped"


def test_smp_affinity_mask_fallback(tmp_path: Path) -> None:
    def runtime(plan, topo):  # type: ignore[no-untyped-def]
        clean = clean_runtime(plan, topo)
        return replace(clean, irqs=(*clean.irqs, IrqSpec(77, "2", None, action="nvme0q2")))

    built = build(tmp_path, MACHINES["amd-small"](), runtime)
    (built.root / "proc/irq/77/smp_affinity_list").unlink()  # only the hex mask left: 4 = CPU 2
    lines = {f.check: f.message for f in run_audit(built).violations}
    assert lines == {"irq 77": lines["irq 77"]}
    assert "smp_affinity_list 2 and no effective_affinity_list" in lines["irq 77"]


def test_zombies_and_vanished_tasks_are_ignored(tmp_path: Path) -> None:
    def runtime(plan, topo):  # type: ignore[no-untyped-def]
        clean = clean_runtime(plan, topo)
        return replace(clean, procs=(*clean.procs, ProcSpec(4000, "defunct", "0-3", cmdline=("x",))))

    built = build(tmp_path, MACHINES["amd-small"](), runtime)
    status = built.root / "proc/4000/task/4000/status"
    status.write_text(status.read_text().replace("State:\tS (sleeping)", "State:\tZ (zombie)"))
    assert run_audit(built).ok


def test_parsers_on_recorded_text() -> None:
    assert stat_flags(KTHREADD_STAT) == 2129984
    assert stat_flags("77 (a) b) weird) S 1 77 77 0 -1 4194560 0") == 4194560
    status = parse_status("Name:\tkthreadd\nPPid:\t0\nKthread:\t1\nCpus_allowed_list:\t0-1\n")
    assert kthread_evidence(2, status, KTHREADD_STAT, False, ()) == "Kthread: 1"
    assert kthread_evidence(2, {"PPid": "0"}, KTHREADD_STAT, False, ()) == "PF_KTHREAD"
    assert kthread_evidence(99, {"PPid": "2"}, None, False, ()) == "child of kthreadd without exe"
    assert kthread_evidence(99, {"PPid": "1"}, None, False, ()) == ""
    assert qemu_guest("qemu-kvm", ("/usr/libexec/qemu-kvm", "-name", "guest=db,debug-threads=on")) == "db"
    assert qemu_guest("qemu-system-x86", ("qemu-system-x86_64", "-name", "old")) == "old"
    assert qemu_guest("bash", ("bash", "-name", "guest=db")) is None


def test_cli_json(trees: Trees, capsys: pytest.CaptureFixture[str]) -> None:
    built = trees("amd-small", "violating")
    code = host_cmds.main(["audit", str(built.spec_path), "--host-root", str(built.root), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["ok"] is False
    assert {v["check"] for v in data["violations"]} == expected_violations(built.plan)
    assert {"pid", "tid", "comm", "cpus", "reason"} == set(data["excepted"][0])


def test_cli_text_clean(trees: Trees, capsys: pytest.CaptureFixture[str]) -> None:
    built = trees("server1", "clean")
    code = host_cmds.main(["audit", str(built.spec_path), "--host-root", str(built.root)])
    out = capsys.readouterr().out
    assert code == 0 and out.rstrip().endswith("audit: isolation holds")
    assert "excepted CPU 2: 1 kernel thread(s) bound there: kworker/2:0" in out
    assert "excepted CPU 3: 1 kernel thread(s) bound there: cpuhp/3" in out


# Why each kind of violation shows on a machine where nothing has been isolated yet.
EXPLAINED = ("kernel args", "isolated", "nohz_full", "irq ", "thread ", "hugepages node")


def test_real_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "probe.yaml"
    spec.write_text("vms: [{name: probe, vcpus: 1, memory: 256MiB, emulator: host}]\n")
    code = host_cmds.main(["audit", str(spec), "--json"])
    out, err = capsys.readouterr()
    if code == 2:
        pytest.skip(f"this machine cannot hold even one 1-vCPU slice: {err.strip()}")
    data = json.loads(out)
    assert set(data) == {"ok", "violations", "warnings", "excepted", "passed"}
    assert code == (0 if data["ok"] else 1)
    for violation in data["violations"]:
        assert violation["check"].startswith(EXPLAINED), violation
        assert violation["remedy"]
    cmdline = Path("/proc/cmdline").read_text()
    if "isolcpus=" not in cmdline:
        assert any(v["check"] == "kernel args" and "isolcpus=" in v["message"] for v in data["violations"])
        # Nothing is isolated, so the audit's own process may run on the CPU planned for the slice.
        assert any(v["check"].startswith("thread ") for v in data["violations"])
    for entry in data["excepted"]:
        assert CpuSet.parse(entry["cpus"]) and entry["reason"].startswith(
            ("per-CPU kernel thread", "bound by the kernel")
        )


@pytest.mark.parametrize("gone", ["processes", "irqs", "both"])
def test_an_audit_that_read_nothing_is_no_pass(
    trees: Trees, gone: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/proc without processes or IRQs (a container, hidepid, a half-copied tree): the checks
    that had nothing to look at fail with that reason instead of counting "none of 0" as a pass."""
    import shutil

    built = trees("server1", "clean")
    root = tmp_path / "root"
    shutil.copytree(built.root, root, symlinks=True)
    proc = root / "proc"
    if gone in ("processes", "both"):
        for pid in [p for p in proc.iterdir() if p.name.isdigit()]:
            shutil.rmtree(pid)
    if gone in ("irqs", "both"):
        shutil.rmtree(proc / "irq")
        (proc / "interrupts").write_text("           CPU0\n")
    report = audit(built.plan, built.topo, read_runtime(FsRoot(root)))
    failed = {f.check: f.message for f in report.violations}
    expect = {"processes": {"threads"}, "irqs": {"irqs"}, "both": {"threads", "irqs"}}[gone]
    assert set(failed) == expect, failed
    assert all("nothing checked, not a pass" in failed[check] for check in expect)
    code = host_cmds.main(["audit", str(built.spec_path), "--host-root", str(root)])
    out = capsys.readouterr().out
    assert code == 1 and out.rstrip().endswith(f"audit: {len(expect)} violation(s)"), out
