"""preflight: each readiness check, its level and its one-line remedy.

A few prepared host trees are read for real; variants of them (flags, modules, memory)
are made in memory, since `preflight` is a pure function of plan, topology and facts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bmslice.cli import host_cmds
from bmslice.model.spec import spec_from_data
from bmslice.plan.planner import make_plan
from bmslice.topology.fsroot import FsRoot
from bmslice.verify.findings import Finding, Level
from bmslice.verify.host_state import parse_memlock, read_module_facts
from bmslice.verify.preflight import PreflightFacts, preflight, read_preflight_facts
from hosttrees import MACHINES, Built, boot_mounts, build, clean_runtime
from treebuilder import RuntimeSpec


def ready(plan: Any, topo: Any) -> RuntimeSpec:
    """Modules present, hugetlbfs mounted, nothing running yet."""
    return RuntimeSpec(vfio="module", kvm_nested="Y", mounts=boot_mounts(plan))


Prepared = Callable[[str], tuple[Built, PreflightFacts]]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """Each machine after host-apply and a reboot, slices not started: written once, only read."""
    cache: dict[str, tuple[Built, PreflightFacts]] = {}

    def get(name: str) -> tuple[Built, PreflightFacts]:
        if name not in cache:
            built = build(tmp_path_factory.mktemp(name), MACHINES[name](), ready, pages_in_use=False)
            cache[name] = (built, read_preflight_facts(FsRoot(built.root), built.plan, built.topo))
        return cache[name]

    return get


def by_check(findings: tuple[Finding, ...]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_prepared_machines_are_ready(prepared: Prepared, name: str) -> None:
    built, facts = prepared(name)
    found = by_check(preflight(built.plan, built.topo, facts))
    assert [f.line() for f in found.values() if f.level is Level.FAIL] == []
    assert found["cpu virtualisation"].level is Level.OK
    kvm = "kvm_amd" if built.host.vendor == "AuthenticAMD" else "kvm_intel"
    assert found["kvm"].message == f"{kvm} loaded; nested virtualisation on: guests may run VMs of their own"
    assert found["kernel args"].level is Level.OK
    assert found["iommu"].level is Level.OK
    assert found["nested host"].level is Level.OK


def test_server1_before_host_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = build(tmp_path, MACHINES["server1"](), ready, boot_args=False, hugepages=False)
    code = host_cmds.main(["preflight", str(built.spec_path), "--host-root", str(built.root)])
    out = capsys.readouterr().out
    assert code == 0, out  # warnings only
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    assert lines["warn kernel args"].startswith("warn kernel args: reboot pending: not in /proc/cmdline: iommu=pt")
    assert "-> bmslice host-apply, then run `update-grub`" in lines["warn kernel args"]
    assert "SR-IOV capable (63 VFs, 0 enabled); passed through whole to Red_k8s_cluster_worker1" in out
    assert lines["warn memlock"].startswith("warn memlock: this process's RLIMIT_MEMLOCK is 8 MiB, a VFIO guest")
    assert "libvirt raises RLIMIT_MEMLOCK" in lines["warn memlock"]
    assert "ok   vfio-pci: available: module /lib/modules/6.1.0-18-amd64/kernel/drivers/vfio/pci/vfio-pci.ko" in out
    assert out.rstrip().endswith("preflight: ready (2 warn)")


def test_iommu_off_on_a_tree_fails_with_intel_args(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["server1"](), ready, iommu=False)
    facts = read_preflight_facts(FsRoot(built.root), built.plan, built.topo)
    finding = by_check(preflight(built.plan, built.topo, facts))["iommu"]
    assert finding.level is Level.FAIL
    assert finding.remedy.startswith("boot with intel_iommu=on iommu=pt")


def test_iommu_off_amd_names_no_intel_arg(prepared: Prepared) -> None:
    built, facts = prepared("amd-nps2")
    finding = by_check(preflight(built.plan, replace(built.topo, iommu_active=False), facts))["iommu"]
    assert finding.level is Level.FAIL and finding.remedy.startswith("boot with iommu=pt (")
    assert "intel_iommu" not in finding.remedy and "amd_iommu" not in finding.remedy


def test_no_iommu_without_passthrough_is_a_warning(prepared: Prepared) -> None:
    built, facts = prepared("amd-small")
    no_vfio = replace(facts, modules=replace(facts.modules, vfio=()))
    found = by_check(preflight(built.plan, replace(built.topo, iommu_active=False), no_vfio))
    assert found["iommu"].level is Level.WARN
    assert found["vfio-pci"].level is Level.OK and found["vfio-pci"].message.endswith("no device is passed through")
    assert found["memlock"].message.startswith("not needed")


@pytest.mark.parametrize("name", ["intel-nosmt", "amd-small"])
def test_no_virtualisation_flags_fail(prepared: Prepared, name: str) -> None:
    built, facts = prepared(name)
    topo = replace(built.topo, cpu_flags=built.topo.cpu_flags - {"vmx", "svm"})
    finding = by_check(preflight(built.plan, topo, facts))["cpu virtualisation"]
    assert finding.level is Level.FAIL and "VT-x / AMD-V" in finding.remedy


def test_kvm_not_loaded_fails(prepared: Prepared) -> None:
    built, facts = prepared("intel-nosmt")
    unloaded = replace(facts, modules=replace(facts.modules, kvm_module=None, nested=None))
    finding = by_check(preflight(built.plan, built.topo, unloaded))["kvm"]
    assert finding.level is Level.FAIL and finding.remedy == "modprobe kvm_intel"


def test_nested_guest_host_warns_and_names_the_feature(prepared: Prepared) -> None:
    built, facts = prepared("amd-small")
    topo = replace(built.topo, cpu_flags=built.topo.cpu_flags | {"hypervisor"})
    finding = by_check(preflight(built.plan, topo, facts))["nested host"]
    assert finding.level is Level.WARN
    assert finding.remedy == "set disable_cpu_features: [arch-capabilities] on tiny"
    vm = {**MACHINES["amd-small"]().spec["vms"][0], "disable_cpu_features": ["arch-capabilities"]}
    plan = make_plan(topo, spec_from_data({"vms": [vm]}, "spec"))
    assert by_check(preflight(plan, topo, facts))["nested host"].level is Level.OK


def test_vfio_missing_fails_with_passthrough(prepared: Prepared) -> None:
    built, facts = prepared("amd-nps2")
    missing = replace(facts, modules=replace(facts.modules, vfio=()))
    finding = by_check(preflight(built.plan, built.topo, missing))["vfio-pci"]
    assert finding.level is Level.FAIL and "6.1.0-18-amd64" in finding.message


@pytest.mark.parametrize(
    ("files", "found"),
    [
        (["sys/module/vfio_pci/", "sys/bus/pci/drivers/vfio-pci/"], "loaded (/sys/module/vfio_pci)"),
        (["lib/modules/6.9.0/modules.builtin"], "built into the kernel"),
        (["lib/modules/6.9.0/kernel/drivers/vfio/pci/vfio-pci.ko.zst"], "module /lib/modules/6.9.0/kernel/"),
    ],
)
def test_vfio_found_where_the_kernel_keeps_it(tmp_path: Path, files: list[str], found: str) -> None:
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text("6.9.0\n")
    for rel in files:
        path = tmp_path / rel
        if rel.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("kernel/drivers/vfio/pci/vfio-pci.ko\n")
    facts = read_module_facts(FsRoot(tmp_path))
    assert facts.kernel_release == "6.9.0" and facts.vfio[0].startswith(found)


def test_memlock(prepared: Prepared) -> None:
    built, facts = prepared("amd-nps2")
    assert facts.modules.memlock == 8388608
    unlimited = replace(facts, modules=replace(facts.modules, memlock="unlimited"))
    assert by_check(preflight(built.plan, built.topo, unlimited))["memlock"].level is Level.OK
    assert parse_memlock("Max locked memory         unlimited            unlimited            bytes\n") == "unlimited"
    assert parse_memlock("Max open files            1024                 524288               files\n") is None


def test_runtime_hugepages_pending_then_short_of_memory(prepared: Prepared) -> None:
    built, facts = prepared("amd-nps2")
    empty = tuple(replace(n, hugepages=()) for n in built.topo.numa_nodes)
    found = by_check(preflight(built.plan, replace(built.topo, numa_nodes=empty), facts))
    assert found["hugepages node0"].level is Level.WARN
    assert found["hugepages node0"].message == (
        "0 free 2 MiB pages, the plan needs 4096; host-apply reserves 4096 more at runtime"
    )
    assert found["memory node0"].level is Level.OK
    tight = (replace(empty[0], free_mib=4096), empty[1])
    finding = by_check(preflight(built.plan, replace(built.topo, numa_nodes=tight), facts))["memory node0"]
    assert finding.level is Level.FAIL
    assert finding.message == "4096 MiB free (+0 MiB page cache), db need 8192 MiB"
    cached = replace(facts, reclaimable_mib={0: 6000, 1: 0})
    assert by_check(preflight(built.plan, replace(built.topo, numa_nodes=tight), cached))["memory node0"].level is (
        Level.WARN
    )


def test_boot_time_gigantic_pages(prepared: Prepared) -> None:
    built, facts = prepared("intel-nosmt")
    assert by_check(preflight(built.plan, built.topo, facts))["hugepages node0"].level is Level.OK
    none = tuple(replace(n, hugepages=()) for n in built.topo.numa_nodes)
    topo = replace(built.topo, numa_nodes=none)
    assert by_check(preflight(built.plan, topo, facts))["hugepages node0"].level is Level.FAIL  # args active, no pages
    pending = replace(built.plan, host=replace(built.plan.host, missing_kernel_args=("hugepages=0:4",)))
    finding = by_check(preflight(pending, topo, facts))["hugepages node0"]
    assert finding.level is Level.WARN and "reboot pending" in finding.message


def test_running_guests_are_not_counted_again(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["amd-small"](), clean_runtime)
    facts = read_preflight_facts(FsRoot(built.root), built.plan, built.topo)
    assert facts.running_guests == frozenset({"tiny"})
    found = by_check(preflight(built.plan, built.topo, facts))
    assert found["memory"].message == "already running, not counted: tiny"
    assert "memory node0" not in found


def test_json_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = build(tmp_path, MACHINES["amd-small"](), lambda p, t: RuntimeSpec(kvm_nested=None))
    code = host_cmds.main(["preflight", str(built.spec_path), "--host-root", str(built.root), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["ok"] is False
    assert {"level", "check", "message", "remedy"} == set(data["findings"][0])
    failed = [f for f in data["findings"] if f["level"] == "fail"]
    assert failed == [
        {"level": "fail", "check": "kvm", "message": "kvm_amd is not loaded (/sys/module/kvm_amd absent)",
         "remedy": "modprobe kvm_amd"}
    ]  # fmt: skip


def test_real_machine_preflight_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "probe.yaml"
    spec.write_text("vms: [{name: probe, vcpus: 1, memory: 256MiB, emulator: host}]\n")
    code = host_cmds.main(["preflight", str(spec), "--json"])
    out, err = capsys.readouterr()
    if code == 2:
        pytest.skip(f"this machine cannot hold even one 1-vCPU slice: {err.strip()}")
    data = json.loads(out)
    assert code == (0 if data["ok"] else 1)
    assert {f["check"] for f in data["findings"]} >= {"cpu virtualisation", "iommu", "vfio-pci", "kernel args"}
