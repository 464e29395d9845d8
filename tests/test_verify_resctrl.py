"""verify reads back the resctrl groups libvirt made for the slices (schemata and tasks), on
host trees through FsRoot; apply refuses before any change while the host still holds the
planned ways. libvirt's test:/// driver stands in for libvirtd (it keeps <cachetune> but
makes no resctrl groups, so the tree plays the kernel's part)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bmslice.errors import ApplyError
from bmslice.model.plan import Plan
from bmslice.model.spec import load_spec
from bmslice.plan.planner import make_plan
from bmslice.topology.resctrl import format_schemata, machine_name
from bmslice.topology.sysfs import FsRoot, read_host_tree
from bmslice.verify.resctrl_state import compare_resctrl, read_slice_resctrl
from hosttrees import qemu_process
from libvirt_fixtures import (  # the fixtures are imported here; pytest finds them by name
    TEST_URI,
    bmslice_lock_dir,  # noqa: F401
    libvirt_test_driver,  # noqa: F401
    unique_prefix,
    write_spec,
)
from treebuilder import GroupSpec, HostSpec, NodeMemory, ResctrlSpec, RuntimeSpec, cpu_layout, l3_by_cores, write_tree

QEMU_PID = 4000


def small_snc() -> HostSpec:
    """8 CPUs, as many as libvirt's test:///default pins: 4 cores x 2 threads, two NUMA nodes
    sharing one L3 of 11 ways x 2.5 MiB (sub-NUMA clustering), MBA in percent."""
    cpus = cpu_layout(1, 4, 2, siblings="spread", nodes_per_socket=2)
    return HostSpec(
        cpus=cpus,
        node_memory={0: NodeMemory(8192), 1: NodeMemory(8192)},
        l3=l3_by_cores(cpus, 4, 28160),
        resctrl=ResctrlSpec(cbm_mask="7ff", num_closids=16, mb=(10, 10, 8)),
    )


def slice_spec(path: Path, names: tuple[str, str]) -> Path:
    first, second = names
    vms = [
        {"name": first, "vcpus": 2, "memory": "128MiB", "numa_node": 0, "emulator": "host", "iothreads": 0,
         "cache": {"l3": "5MiB", "memory_bandwidth": 60}},
        {"name": second, "vcpus": 2, "memory": "128MiB", "numa_node": 1, "emulator": "host", "iothreads": 0,
         "cache": {"l3": "2560KiB"}},
    ]  # fmt: skip
    return write_spec(
        path, vms, {"reserved_cores_per_node": 1, "reserved_memory_per_node": "512MiB", "domain_type": "qemu"}
    )


def planned(tree: Path, spec: Path) -> Plan:
    return make_plan(read_host_tree(tree), load_spec(spec), str(spec))


def live_tree(root: Path, plan: Plan, ids: dict[str, int], narrowed: bool = True, **changes: Any) -> Path:
    """The SKX tree as the kernel shows it once libvirt started the slices: the default group
    narrowed to the plan's host ways, one group per slice with its vCPU threads, QEMU processes."""
    groups: dict[str, GroupSpec] = {}
    procs = []
    for i, vm in enumerate(plan.vms):
        pid = QEMU_PID + 100 * i
        proc = qemu_process(pid, vm.name, vm.emulator_cpus, vm.vcpu_pins, vm.iothread_cpus)
        procs.append(proc)
        assert vm.cache is not None
        l3 = {w.cache_id: w.mask for w in vm.cache.ways}
        mb = dict.fromkeys(vm.cache.domains, vm.cache.memory_bandwidth) if vm.cache.memory_bandwidth else {}
        tids = tuple(t.tid for t in proc.threads if t.comm.startswith("CPU "))
        name = f"{machine_name(ids[vm.name], vm.name)}-vcpus_0-{vm.vcpus - 1}"
        groups[name] = GroupSpec(format_schemata(l3, mb), tids)
    default = format_schemata(dict(plan.host.l3_host_masks)) if narrowed else None
    resctrl = ResctrlSpec(default_schemata=default, groups=groups, **changes)
    return write_tree(replace(small_snc(), resctrl=resctrl, runtime=RuntimeSpec(procs=tuple(procs))), root)


@pytest.fixture
def names() -> tuple[str, str]:
    prefix = unique_prefix()
    return f"{prefix}-du", f"{prefix}-ims"


@pytest.fixture
def plan_and_spec(tmp_path: Path, names: tuple[str, str]) -> tuple[Plan, Path]:
    spec = slice_spec(tmp_path / "spec.yaml", names)
    return planned(write_tree(small_snc(), tmp_path / "fresh"), spec), spec


# --- the comparison on trees ------------------------------------------------------------------------


def test_groups_as_planned_show_no_drift(
    tmp_path: Path, plan_and_spec: tuple[Plan, Path], names: tuple[str, str]
) -> None:
    plan, _ = plan_and_spec
    tree = live_tree(tmp_path / "live", plan, {names[0]: 3, names[1]: 4})
    for vm in plan.vms:
        seen = read_slice_resctrl(FsRoot(tree), vm.name)
        assert seen.group is not None and len(seen.vcpu_threads) == vm.vcpus
        assert compare_resctrl(vm, seen) == ([], [])


def test_drift_fewer_ways_overlap_bandwidth_tasks(
    tmp_path: Path, plan_and_spec: tuple[Plan, Path], names: tuple[str, str]
) -> None:
    plan, _ = plan_and_spec
    du = plan.vm(names[0])
    assert du.cache is not None and du.cache.ways[0].mask == 0x300  # started first: the low end of the free run
    tree = live_tree(tmp_path / "live", plan, {names[0]: 3, names[1]: 4})
    group = next((tree / "sys/fs/resctrl").glob("qemu-3-*-vcpus_0-1"))
    (group / "schemata").write_text("    L3:0=200\n    MB:0= 40\n")
    (group / "tasks").write_text(f"{QEMU_PID + 1}\n")
    drift, notes = compare_resctrl(du, read_slice_resctrl(FsRoot(tree), du.name))
    assert drift == [
        f"{du.name} holds 1 L3 ways (200) on cache 0, plan says 2 (300)",
        f"{du.name} memory bandwidth on L3 cache 0 is 40%, plan says 60%",
        f"{du.name} vCPU 1 (thread {QEMU_PID + 2}) is not in its resctrl group {group.name}",
    ]
    assert notes == []
    (group / "schemata").write_text("L3:0=003\nMB:0=60\n")  # as many ways, but the host's
    (group / "tasks").write_text("".join(f"{QEMU_PID + i}\n" for i in range(1, 3)))
    drift, notes = compare_resctrl(du, read_slice_resctrl(FsRoot(tree), du.name))
    assert drift == [f"{du.name} L3 ways 3 on cache 0 overlap the host (default group)'s ff: not exclusive"]
    assert notes == [
        f"{du.name} holds L3 ways 3 on cache 0, the plan laid out 300 (libvirt started the slices in another order); "
        "as many ways, held by it alone"
    ]


def test_missing_group_is_drift(tmp_path: Path, plan_and_spec: tuple[Plan, Path], names: tuple[str, str]) -> None:
    plan, _ = plan_and_spec
    tree = live_tree(tmp_path / "live", plan, {names[0]: 3, names[1]: 4})
    ims = plan.vm(names[1])
    for group in (tree / "sys/fs/resctrl").glob("qemu-4-*"):
        for child in group.iterdir():
            child.unlink()
        group.rmdir()
    drift, _ = compare_resctrl(ims, read_slice_resctrl(FsRoot(tree), ims.name))
    assert drift == [f"{ims.name} has no resctrl group: its cachetune/memorytune did not take effect"]


# --- through apply and verify (libvirt's test driver) -------------------------------------------------


def test_apply_refuses_while_the_host_holds_the_planned_ways(
    libvirt_test_driver: Any,  # noqa: F811 (a fixture)
    bmslice_lock_dir: Path,  # noqa: F811
    tmp_path: Path,
    plan_and_spec: tuple[Plan, Path],
) -> None:
    from bmslice.apply.applier import ApplyOptions, apply

    plan, spec = plan_and_spec
    tree = write_tree(small_snc(), tmp_path / "unnarrowed")  # the default group holds every way, as after mount
    with pytest.raises(
        ApplyError, match=r"L3 ways 300 on cache 0 are still the host's \(default group 7ff\).*host-apply"
    ):
        apply(load_spec(spec), str(spec), ApplyOptions(TEST_URI, host_root=tree), lambda _line: None)
    assert not [d for d in libvirt_test_driver.listAllDomains() if d.name() in {vm.name for vm in plan.vms}]


def test_apply_then_verify_reads_the_groups(
    libvirt_test_driver: Any,  # noqa: F811 (a fixture)
    bmslice_lock_dir: Path,  # noqa: F811
    tmp_path: Path,
    plan_and_spec: tuple[Plan, Path],
    names: tuple[str, str],
) -> None:
    from bmslice.apply.applier import ApplyOptions, apply
    from bmslice.verify.verifier import verify

    plan, spec = plan_and_spec
    narrowed = write_tree(
        replace(small_snc(), resctrl=ResctrlSpec(default_schemata=format_schemata(dict(plan.host.l3_host_masks)))),
        tmp_path / "narrowed",
    )
    lines: list[str] = []
    apply(load_spec(spec), str(spec), ApplyOptions(TEST_URI, host_root=narrowed), lines.append)
    assert lines[:2] == [f"define {names[0]}", f"start {names[0]}"]
    ids = {n: libvirt_test_driver.lookupByName(n).ID() for n in names}
    tree = live_tree(tmp_path / "live", plan, ids)
    report = verify(load_spec(spec), str(spec), TEST_URI, tree)
    assert report.drift == [], report.drift
    group = next((tree / "sys/fs/resctrl").glob(f"{machine_name(ids[names[1]], names[1])}-vcpus_0-1"))
    (group / "tasks").write_text("")  # the vCPU threads moved back to the default group behind bmslice's back
    drift = verify(load_spec(spec), str(spec), TEST_URI, tree).drift
    assert drift == [
        f"{names[1]} vCPU {i} (thread {QEMU_PID + 100 + 1 + i}) is not in its resctrl group {group.name}"
        for i in (0, 1)
    ]
