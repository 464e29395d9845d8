# ruff: noqa: F811 - test parameters take the names of the fixtures imported from libvirt_fixtures
"""apply / verify / status / destroy on real libvirt (issue 3).

Tests marked `libvirtd` drive the real qemu:///system with QEMU guests (KVM when /dev/kvm
exists, else TCG); they fail, not skip, when libvirtd does not answer, unless
BMSLICE_SKIP_LIBVIRTD=1. A guest needs no OS: its vCPU threads run anyway (SeaBIOS loops).

This machine has 2 CPUs: the host keeps CPU 0 and only CPU 1 is left for slices, so the
tests that need two slices read a larger host from a sysfs tree (--host-root). Rollback
still runs against the real libvirtd (the second slice fails before it would need its CPU);
stability uses libvirt's own test driver, which runs in-process:
- test:///default keeps its state only while a connection in the same process is open,
  so a fresh `bmslice` process sees a fresh driver. The full stability check (pins, no
  restart, the new slice placed around the old one) therefore runs through the library
  API with a connection held open by the test.
- test:///<file.xml> loads a host with the first slice already running (dumped from a
  real apply), so the CLI can show, run to run, that applying a bigger spec only adds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bmslice.cpuset import CpuSet
from bmslice.errors import ApplyError
from libvirt_fixtures import (  # the fixtures are imported here; pytest finds them by name
    HAS_KVM,
    QEMU_URI,
    SSH_KEY,
    TEST_URI,
    Cli,
    Slices,
    bmslice_cli,  # noqa: F401
    bmslice_lock_dir,  # noqa: F401
    host_section,
    host_tree,
    libvirt_test_driver,  # noqa: F401
    one_error,
    qemu_conn,  # noqa: F401
    qemu_pid,
    qemu_slices,  # noqa: F401
    steps,
    thread_cpus,
    unique_prefix,
    vm_entry,
    wait_gone,
    with_disk,
    write_spec,
)

libvirtd = pytest.mark.libvirtd


def virsh(*args: str) -> None:
    subprocess.run(["virsh", "-q", "-c", QEMU_URI, *args], check=True, capture_output=True, text=True)


def planned(spec: Path, host_root: Path | None = None) -> Any:
    """The plan bmslice makes for `spec` on this host (or a tree), for finer checks."""
    from bmslice.model.spec import load_spec
    from bmslice.plan.planner import make_plan
    from bmslice.topology.sysfs import read_host_tree

    return make_plan(read_host_tree(host_root or Path("/")), load_spec(spec), origin=str(spec))


# --- (1) end to end from the CLI --------------------------------------------------------


@libvirtd
def test_apply_verify_drift_repair_destroy(qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path) -> None:
    vm = qemu_slices.name("a")
    spec = write_spec(tmp_path / "spec.yaml", [with_disk(vm_entry(vm))])
    plan = planned(spec).vm(vm)
    vcpu_cpu, emulator = plan.vcpu_pins[0], plan.emulator_cpus
    if os.cpu_count() == 2:  # the layout: host keeps CPU 0, the vCPU runs on CPU 1
        assert (vcpu_cpu, emulator) == (1, CpuSet.of(0))
    assert vcpu_cpu not in emulator

    run = bmslice_cli("apply", spec)
    assert run.returncode == 0, run
    assert steps(run) == [
        f"define {vm}",  # first: the domain names its volumes before they exist (a killed run is found)
        f"create volume default/{vm}.qcow2 (64 MiB qcow2)",
        f"create cloud-init seed default/{vm}-seed.iso",
        f"start {vm}",
        f"set autostart on {vm}",
    ]
    assert "applied: 5 step(s)" in run.lines
    dom = qemu_slices.conn.lookupByName(vm)
    assert dom.isActive() and dom.autostart()
    xml = dom.XMLDesc(0)
    assert ("type='kvm'" if HAS_KVM else "type='qemu'") in xml
    pid, dom_id = qemu_pid(vm), dom.ID()

    # The seed carries the key and nothing that looks like a password.
    seed = Path(f"/var/lib/libvirt/images/{vm}-seed.iso").read_bytes()
    assert SSH_KEY.encode() in seed and b"passwd" not in seed.lower()

    run = bmslice_cli("verify", spec)
    assert run.returncode == 0, run
    assert "ok: 1 slice(s) match the plan" in run.lines

    # The kernel's own view: every vCPU thread on its planned CPU, every other QEMU thread on the emulator CPUs.
    threads = thread_cpus(pid)
    vcpu_threads = {tid: cpus for tid, (comm, cpus) in threads.items() if re.fullmatch(r"CPU \d+/(KVM|TCG)", comm)}
    assert list(vcpu_threads.values()) == [str(vcpu_cpu)], threads
    others = {comm: cpus for comm, cpus in threads.values() if not comm.startswith(("CPU ", "kvm"))}
    assert others and all(CpuSet.parse(cpus) == emulator for cpus in others.values()), threads

    run = bmslice_cli("status", spec)
    assert run.returncode == 0, run
    assert re.search(rf"{re.escape(vm)}\s.*running\s.*yes", run.stdout), run

    # vCPU drift behind bmslice's back.
    drift_cpu = min(emulator)
    virsh("vcpupin", vm, "0", str(drift_cpu), "--live")
    run = bmslice_cli("verify", spec)
    assert run.returncode == 1, run
    assert f"{vm} vCPU 0 pinned to {drift_cpu}, plan says {vcpu_cpu}" in run.lines
    assert any(
        re.fullmatch(
            rf"{re.escape(vm)} thread \d+ \(CPU 0/(KVM|TCG)\) allowed on CPUs {drift_cpu}, plan says {vcpu_cpu}", line
        )
        for line in run.lines
    ), run  # the kernel view sees it too
    report = json.loads(bmslice_cli("verify", spec, "--json").stdout)
    assert report["ok"] is False and f"{vm} vCPU 0 pinned to {drift_cpu}, plan says {vcpu_cpu}" in report["drift"]
    assert bmslice_cli("status", spec).returncode == 1

    run = bmslice_cli("apply", spec, "--dry-run")
    assert run.returncode == 0 and f"would re-pin {vm} vCPU 0 live: {drift_cpu} -> {vcpu_cpu}" in run.lines, run
    assert bmslice_cli("verify", spec).returncode == 1  # the dry run changed nothing

    run = bmslice_cli("apply", spec)
    assert run.returncode == 0, run
    assert steps(run) == [f"re-pin {vm} vCPU 0 live: {drift_cpu} -> {vcpu_cpu}"]
    assert (qemu_pid(vm), qemu_slices.conn.lookupByName(vm).ID()) == (pid, dom_id)  # live, no restart
    assert bmslice_cli("verify", spec).returncode == 0

    # Emulator drift.
    virsh("emulatorpin", vm, str(vcpu_cpu), "--live")
    run = bmslice_cli("verify", spec)
    assert run.returncode == 1, run
    assert f"{vm} emulator pinned to {vcpu_cpu}, plan says {emulator}" in run.lines
    run = bmslice_cli("apply", spec)
    assert run.returncode == 0, run
    assert steps(run) == [f"re-pin {vm} emulator live: {vcpu_cpu} -> {emulator}"]
    assert qemu_pid(vm) == pid
    assert bmslice_cli("verify", spec).returncode == 0
    assert all(CpuSet.parse(c) == emulator for comm, c in thread_cpus(pid).values() if comm in others)

    run = bmslice_cli("destroy", spec)
    assert run.returncode == 0, run
    assert steps(run) == [
        f"stop {vm}",
        f"undefine {vm}",
        f"delete volume /var/lib/libvirt/images/{vm}.qcow2",
        f"delete volume /var/lib/libvirt/images/{vm}-seed.iso",
    ]
    assert wait_gone(pid)
    assert qemu_slices.leftovers() == []
    assert not Path(f"/run/libvirt/qemu/{vm}.pid").exists()
    run = bmslice_cli("destroy", spec)
    assert run.returncode == 0 and "nothing to destroy" in run.lines, run


# --- (2) rollback -------------------------------------------------------------------------


@libvirtd
@pytest.mark.parametrize("failure", ["backing image that is not qcow2", "CPU feature QEMU rejects"])
def test_failure_on_second_slice_rolls_back_the_first(
    failure: str, qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    """The first slice is created, started and set to autostart; the second fails; nothing is left.

    Two slices do not fit this 2-CPU host, so the plan reads a 4-CPU tree; the first slice
    gets CPU 1 (which exists here), the second fails before its CPU matters.
    """
    tree = host_tree(tmp_path / "host", cores=4)
    first, second = qemu_slices.name("a"), qemu_slices.name("b")
    if failure == "backing image that is not qcow2":  # volume creation fails (a missing one is refused earlier)
        not_qcow2 = tmp_path / "not-a-qcow2.qcow2"
        not_qcow2.write_text("not a disk image\n")
        bad = {**vm_entry(second), "disk": {"size": "64MiB", "image": str(not_qcow2)}}
        failed_step, reason = f"create volume default/{second}.qcow2", "cannot create volume"
    else:  # libvirt defines it, starting it fails
        bad = {**vm_entry(second), "disable_cpu_features": ["bmslice-no-such-feature"]}
        failed_step, reason = f"start {second}", "bmslice-no-such-feature"
    spec = write_spec(tmp_path / "spec.yaml", [with_disk(vm_entry(first)), bad])
    assert planned(spec, tree).vm(first).vcpu_pins == (1,)

    run = bmslice_cli("apply", spec, "--host-root", tree)
    error = one_error(run)
    assert error.startswith(f"error: {failed_step}") and reason in error and "rolled back" in error, run
    assert "ROLLBACK INCOMPLETE" not in error
    done = steps(run)
    assert done.index(f"start {first}") < done.index(f"stop {first}"), run  # it really ran, then was undone
    assert {f"stop {first}", f"undefine {first}"} <= set(done)
    assert f"delete volume default/{first}.qcow2" in done and f"delete seed default/{first}-seed.iso" in done
    assert qemu_slices.leftovers() == []


# --- (3) idempotence ----------------------------------------------------------------------


@libvirtd
def test_second_apply_changes_nothing(qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path) -> None:
    vm = qemu_slices.name("a")
    spec = write_spec(tmp_path / "spec.yaml", [with_disk(vm_entry(vm))])
    first = bmslice_cli("apply", spec)
    assert first.returncode == 0 and len(steps(first)) == 5, first
    pid = qemu_pid(vm)
    second = bmslice_cli("apply", spec)
    assert second.returncode == 0, second
    assert steps(second) == []
    assert "no changes: all 1 slice(s) match the plan" in second.lines
    assert qemu_pid(vm) == pid
    dry = bmslice_cli("apply", spec, "--dry-run")
    assert dry.returncode == 0 and "dry run: no changes needed" in dry.lines, dry


# --- (4) stability: a running slice keeps its place when the spec grows ----------------------


def _two_slice_specs(tmp_path: Path, first: str, second: str) -> tuple[Path, Path]:
    host = host_section(domain_type="qemu")
    one = write_spec(tmp_path / "one.yaml", [vm_entry(first, vcpus=2)], host)
    # The new slice is listed first: planned from scratch it would take the first slice's core.
    two = write_spec(tmp_path / "two.yaml", [vm_entry(second, vcpus=2), vm_entry(first, vcpus=2)], host)
    return one, two


def _pins(dom: Any) -> tuple[tuple[CpuSet, ...], CpuSet, tuple[tuple[int, CpuSet], ...]]:
    import libvirt

    def cpus(mask: Any) -> CpuSet:
        return CpuSet.from_iter(i for i, on in enumerate(mask) if on)

    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    return (
        tuple(cpus(m) for m in dom.vcpuPinInfo(live)),
        cpus(dom.emulatorPinInfo(live)),
        tuple((i, cpus(m)) for i, m in dom.ioThreadInfo(live)),
    )


def test_running_slice_keeps_every_pin_when_a_slice_is_added(
    libvirt_test_driver: Any, bmslice_lock_dir: Path, tmp_path: Path
) -> None:
    """Library API on test:///default (state shared through the connection the test holds)."""
    from bmslice.apply.applier import ApplyOptions, apply
    from bmslice.model.spec import load_spec
    from bmslice.verify.verifier import verify

    tree = host_tree(tmp_path / "host", cores=4, threads=2)  # CPUs 0-7, siblings N / N+4
    prefix = unique_prefix()
    first, second = f"{prefix}-a", f"{prefix}-b"
    one, two = _two_slice_specs(tmp_path, first, second)
    opts = ApplyOptions(TEST_URI, host_root=tree)
    fresh = planned(two, tree)
    assert fresh.vm(second).vcpu_pins == planned(one, tree).vm(first).vcpu_pins  # the test means something

    lines: list[str] = []
    apply(load_spec(one), str(one), opts, lines.append)
    assert lines == [f"define {first}", f"start {first}", f"set autostart on {first}"]
    dom = libvirt_test_driver.lookupByName(first)
    before, dom_id = _pins(dom), dom.ID()
    assert before[0] == (CpuSet.of(1), CpuSet.of(5))

    lines.clear()
    result = apply(load_spec(two), str(two), opts, lines.append)
    assert lines == [f"define {second}", f"start {second}", f"set autostart on {second}"]
    assert result.changed
    dom = libvirt_test_driver.lookupByName(first)
    assert _pins(dom) == before and dom.ID() == dom_id and dom.isActive()  # every pin, and not restarted
    new_pins = _pins(libvirt_test_driver.lookupByName(second))
    assert new_pins[0] == (CpuSet.of(2), CpuSet.of(6))  # placed around the running slice
    assert CpuSet.union(new_pins[0]).isdisjoint(CpuSet.union(before[0]) | before[1])

    report = verify(load_spec(two), str(two), TEST_URI, tree)
    assert report.drift == [] and [s.state for s in report.slices] == ["running", "running"]
    lines.clear()
    assert not apply(load_spec(two), str(two), opts, lines.append).changed and lines == []


def test_stability_across_cli_runs(bmslice_lock_dir: Path, tmp_path: Path, bmslice_cli: Cli) -> None:
    """test:///<file>: a host whose first slice already runs (as the first apply left it); the CLI only adds."""
    import libvirt

    from bmslice.apply.applier import ApplyOptions, apply
    from bmslice.model.spec import load_spec

    tree = host_tree(tmp_path / "host", cores=4, threads=2)
    prefix = unique_prefix()
    first, second = f"{prefix}-a", f"{prefix}-b"
    one, two = _two_slice_specs(tmp_path, first, second)
    keeper = libvirt.open(TEST_URI)
    try:
        apply(load_spec(one), str(one), ApplyOptions(TEST_URI, host_root=tree), lambda _line: None)
        first_xml = keeper.lookupByName(first).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        keeper.close()
    node = tmp_path / "node.xml"
    node.write_text(
        "<node><cpu><mhz>2000</mhz><model>x86_64</model><active>8</active><total>8</total><nodes>1</nodes>"
        f"<sockets>1</sockets><cores>4</cores><threads>2</threads></cpu><memory>16777216</memory>{first_xml}</node>"
    )
    uri = f"test://{node}"

    run = bmslice_cli("verify", one, "--connect", uri, "--host-root", tree)
    assert run.returncode == 0, run  # the file's slice is what the first apply made, running
    run = bmslice_cli("apply", two, "--connect", uri, "--host-root", tree, "--dry-run")
    assert run.returncode == 0, run
    assert [s for s in steps(run) if first in s] == [f"would set autostart on {first}"]  # test driver keeps none
    run = bmslice_cli("apply", two, "--connect", uri, "--host-root", tree)
    assert run.returncode == 0, run
    assert steps(run)[:3] == [f"define {second}", f"start {second}", f"set autostart on {second}"]
    assert [s for s in steps(run) if first in s] == [f"set autostart on {first}"]  # no re-pin, stop or start


def test_allow_move_restarts_a_slice_whose_definition_changed(
    libvirt_test_driver: Any, bmslice_lock_dir: Path, tmp_path: Path
) -> None:
    """More memory: refused without --allow-move (naming it); with it the slice restarts in place."""
    from bmslice.apply.applier import ApplyOptions, apply
    from bmslice.model.spec import load_spec
    from bmslice.verify.verifier import verify

    tree = host_tree(tmp_path / "host", cores=4, threads=2)
    vm = f"{unique_prefix()}-a"
    host = host_section(domain_type="qemu")
    small = write_spec(tmp_path / "small.yaml", [vm_entry(vm, vcpus=2)], host)
    big = write_spec(tmp_path / "big.yaml", [vm_entry(vm, vcpus=2, memory="256MiB")], host)
    apply(load_spec(small), str(small), ApplyOptions(TEST_URI, host_root=tree), lambda _line: None)
    before = _pins(libvirt_test_driver.lookupByName(vm))

    with pytest.raises(ApplyError, match=r"memory_kib.*--allow-move"):
        apply(load_spec(big), str(big), ApplyOptions(TEST_URI, host_root=tree), lambda _line: None)
    assert [line for line in verify(load_spec(big), str(big), TEST_URI, tree).drift if "memory" in line]

    lines: list[str] = []
    apply(load_spec(big), str(big), ApplyOptions(TEST_URI, allow_move=True, host_root=tree), lines.append)
    assert lines == [f"stop {vm} to move it", f"redefine {vm}", f"start {vm}"]
    dom = libvirt_test_driver.lookupByName(vm)
    assert dom.isActive() and dom.info()[1] == 256 * 1024 and _pins(dom) == before
    assert verify(load_spec(big), str(big), TEST_URI, tree).drift == []


# --- (5) dry run ----------------------------------------------------------------------------


@libvirtd
def test_dry_run_changes_nothing(qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path) -> None:
    vm = qemu_slices.name("a")
    spec = write_spec(tmp_path / "spec.yaml", [with_disk(vm_entry(vm))])
    run = bmslice_cli("apply", spec, "--dry-run")
    assert run.returncode == 0, run
    assert steps(run) == [
        f"would define {vm}",
        f"would create volume default/{vm}.qcow2 (64 MiB qcow2)",
        f"would create cloud-init seed default/{vm}-seed.iso",
        f"would start {vm}",
        f"would set autostart on {vm}",
    ]
    assert "dry run: 5 step(s), nothing changed" in run.lines
    assert qemu_slices.leftovers() == []
    assert bmslice_cli("verify", spec).returncode == 1  # "not defined"


# --- (6) two runs at once ---------------------------------------------------------------------


@libvirtd
def test_second_run_refuses_while_the_lock_is_held(qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path) -> None:
    from bmslice.apply.libvirt_conn import host_key
    from bmslice.apply.lock import host_lock

    spec = write_spec(tmp_path / "spec.yaml", [vm_entry(qemu_slices.name("a"))])
    key = host_key(qemu_slices.conn)
    with host_lock(key, QEMU_URI):
        run = bmslice_cli("apply", spec)
        with pytest.raises(ApplyError, match="holds the lock"), host_lock(key):
            pass
    error = one_error(run)
    assert f"another bmslice run holds the lock for host {key}" in error
    assert f"pid {os.getpid()} via {QEMU_URI}" in error  # names who holds it
    assert qemu_slices.leftovers() == []
    run = bmslice_cli("apply", spec, "--dry-run")  # released: the next run goes ahead
    assert run.returncode == 0, run


# --- (7) bad input is refused before anything changes --------------------------------------------


@libvirtd
def test_password_key_in_spec_is_refused(qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path) -> None:
    vm = with_disk(vm_entry(qemu_slices.name("a")))
    vm["cloud_init"] = {"ssh_authorized_keys": [SSH_KEY], "password": "hunter2-secret"}
    spec = write_spec(tmp_path / "spec.yaml", [vm])
    run = bmslice_cli("apply", spec)
    assert one_error(run) == f"error: {spec}: vms[0].cloud_init.password: unknown key"
    assert "hunter2-secret" not in run.stdout + run.stderr
    assert qemu_slices.leftovers() == []


@libvirtd
def test_plain_password_in_hash_file_is_refused_before_any_change(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    (tmp_path / "root.hash").write_text("hunter2-secret\n")
    vm = with_disk(vm_entry(qemu_slices.name("a")))  # its disk volume would be the first change
    vm["cloud_init"] = {"ssh_authorized_keys": [SSH_KEY], "password_hash_file": "root.hash"}
    spec = write_spec(tmp_path / "spec.yaml", [vm])
    run = bmslice_cli("apply", spec)
    error = one_error(run)
    assert "password_hash_file" in error and "plain password" in error
    assert "hunter2-secret" not in run.stdout + run.stderr
    assert steps(run) == []
    assert qemu_slices.leftovers() == []


# --- (8) passthrough without an IOMMU ---------------------------------------------------------------


@libvirtd
def test_passthrough_without_iommu_is_refused_naming_the_kernel_args(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    """A 2-CPU tree like this machine, with a spare NIC but no IOMMU groups."""
    from treebuilder import PciSpec

    tree = host_tree(
        tmp_path / "host",
        cores=2,
        iommu=False,
        pci=(
            PciSpec("0000:01:00.0", driver="ixgbe", interfaces=("eno1",), iommu_group=5),
            PciSpec("0000:02:00.0", driver="igb", interfaces=("eno2",), iommu_group=6),
        ),
        default_route="eno2",
    )
    spec = write_spec(tmp_path / "spec.yaml", [vm_entry(qemu_slices.name("a"), nics=[{"passthrough": "eno1"}])])
    for extra in ((), ("--dry-run",)):
        run = bmslice_cli("apply", spec, "--host-root", tree, *extra)
        error = one_error(run)
        assert "IOMMU is not active" in error and "intel_iommu=on" in error and "iommu=pt" in error, run
        assert steps(run) == []
    assert qemu_slices.leftovers() == []


# --- finer checks ---------------------------------------------------------------------------------


def test_pin_map_refuses_cpus_the_host_lacks() -> None:
    from bmslice.apply.libvirt_conn import cpumap

    assert cpumap(CpuSet.of(1, 3), 4) == (False, True, False, True)
    with pytest.raises(ApplyError, match="CPUs 9 are not on this host"):
        cpumap(CpuSet.of(1, 9), 8)
