"""preflight on host trees: each readiness check, its level and its one-line remedy."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bmslice.cli import host_cmds
from bmslice.topology.sysfs import FsRoot
from bmslice.verify.findings import Finding, Level
from bmslice.verify.host_state import parse_memlock
from bmslice.verify.preflight import preflight, read_preflight_facts
from hosttrees import MACHINES, Built, build, clean_runtime
from treebuilder import AMD_FLAGS, INTEL_FLAGS, NodeMemory, RuntimeSpec


def ready(plan: Any, topo: Any) -> RuntimeSpec:
    """Modules present, nothing running yet."""
    return RuntimeSpec(vfio="module", kvm_nested="Y")


def check(built: Built) -> dict[str, Finding]:
    findings = preflight(built.plan, built.topo, read_preflight_facts(FsRoot(built.root), built.plan, built.topo))
    return {f.check: f for f in findings}


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_prepared_machines_are_ready(tmp_path: Path, name: str) -> None:
    built = build(tmp_path, MACHINES[name](), ready, boot_args=True, pages_in_use=False)
    found = check(built)
    failed = [f.line() for f in found.values() if f.level is Level.FAIL]
    assert failed == []
    assert found["cpu virtualisation"].level is Level.OK
    assert found["kvm"].message.startswith("kvm_amd" if built.host.vendor == "AuthenticAMD" else "kvm_intel")
    assert found["kernel args"].level is Level.OK
    assert found["iommu"].level is Level.OK


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


@pytest.mark.parametrize(
    ("name", "args"), [("server1", "boot with intel_iommu=on iommu=pt"), ("amd-nps2", "boot with iommu=pt (")]
)
def test_iommu_off_fails_with_vendor_args(tmp_path: Path, name: str, args: str) -> None:
    built = build(tmp_path, MACHINES[name](), ready, iommu=False)
    finding = check(built)["iommu"]
    assert finding.level is Level.FAIL and finding.remedy.startswith(args)
    assert "amd_iommu" not in finding.remedy


def test_no_iommu_without_passthrough_is_a_warning(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["amd-small"](), ready, iommu=False)
    found = check(built)
    assert found["iommu"].level is Level.WARN
    assert found["vfio-pci"].level is Level.OK and found["memlock"].message.startswith("not needed")


@pytest.mark.parametrize("vendor_flags", [INTEL_FLAGS, AMD_FLAGS])
def test_no_virtualisation_flags_fail(tmp_path: Path, vendor_flags: str) -> None:
    flags = " ".join(f for f in vendor_flags.split() if f not in ("vmx", "svm"))
    built = build(tmp_path, MACHINES["intel-nosmt"](), ready, flags=flags)
    found = check(built)
    assert found["cpu virtualisation"].level is Level.FAIL
    assert "VT-x / AMD-V" in found["cpu virtualisation"].remedy


def test_kvm_not_loaded_fails(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["intel-nosmt"](), lambda p, t: RuntimeSpec(kvm_nested=None))
    finding = check(built)["kvm"]
    assert finding.level is Level.FAIL and finding.remedy == "modprobe kvm_intel"


def test_nested_guest_host_warns_and_names_the_feature(tmp_path: Path) -> None:
    machine = MACHINES["amd-small"]()
    built = build(tmp_path, machine, ready, flags=AMD_FLAGS + " hypervisor")
    finding = check(built)["nested host"]
    assert finding.level is Level.WARN
    assert finding.remedy == "set disable_cpu_features: [arch-capabilities] on tiny"
    spec = {"vms": [{**machine.spec["vms"][0], "disable_cpu_features": ["arch-capabilities"]}]}
    built = build(tmp_path / "fixed", machine, ready, spec=spec, flags=AMD_FLAGS + " hypervisor")
    assert check(built)["nested host"].level is Level.OK


def test_vfio_missing_fails_only_with_passthrough(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["amd-nps2"](), lambda p, t: RuntimeSpec(vfio=None))
    finding = check(built)["vfio-pci"]
    assert finding.level is Level.FAIL and "6.1.0-18-amd64" in finding.message
    for where in ("loaded", "builtin"):
        built = build(tmp_path / where, MACHINES["amd-nps2"](), lambda p, t, w=where: RuntimeSpec(vfio=w))
        assert check(built)["vfio-pci"].level is Level.OK


def test_memlock_unlimited_is_ok(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["amd-nps2"](), lambda p, t: RuntimeSpec(memlock="unlimited"))
    assert check(built)["memlock"].level is Level.OK
    assert parse_memlock("Max locked memory         unlimited            unlimited            bytes\n") == "unlimited"


def test_runtime_hugepages_pending_then_short_of_memory(tmp_path: Path) -> None:
    machine = MACHINES["amd-nps2"]()
    built = build(tmp_path, machine, ready, hugepages=False)
    found = check(built)
    assert found["hugepages node0"].level is Level.WARN
    assert (
        found["hugepages node0"].message
        == "0 free 2 MiB pages, the plan needs 4096; host-apply reserves 4096 more at runtime"
    )
    assert found["memory node0"].level is Level.OK
    tight = {0: NodeMemory(32768, free_mib=4096), 1: NodeMemory(32768)}
    built = build(tmp_path / "tight", machine, ready, hugepages=False, node_memory=tight)
    finding = check(built)["memory node0"]
    assert finding.level is Level.FAIL
    assert finding.message == "4096 MiB free (+0 MiB page cache), db need 8192 MiB"


def test_boot_time_gigantic_pages_pending(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["intel-nosmt"](), ready, boot_args=False, hugepages=False)
    finding = check(built)["hugepages node0"]
    assert finding.level is Level.WARN and "reboot pending" in finding.message


def test_running_guests_are_not_counted_again(tmp_path: Path) -> None:
    built = build(tmp_path, MACHINES["amd-nps2"](), clean_runtime, hugepages=True)
    found = check(built)
    assert found["memory"].message == "already running, not counted: db, web"
    assert "hugepages node0" not in found


def test_json_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    built = build(tmp_path, MACHINES["amd-nps2"](), ready, iommu=False)
    code = host_cmds.main(["preflight", str(built.spec_path), "--host-root", str(built.root), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["ok"] is False
    assert {"level", "check", "message", "remedy"} == set(data["findings"][0])
    assert any(f["check"] == "iommu" and f["level"] == "fail" for f in data["findings"])


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


def test_replace_is_usable_on_findings() -> None:
    finding = Finding(Level.WARN, "x", "y", "z")
    assert replace(finding, level=Level.OK).line() == "ok   x: y"
