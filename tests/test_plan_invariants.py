"""Property tests: every plan the planner returns holds the invariants of faults.md.

Topologies: 1-2 sockets x 1-8 cores x 1-2 threads, 1-2 nodes per socket, three CPU
numbering schemes, some CPUs offline (never CPU 0), some NICs. Specs: 1-5 VMs.
Successful plans are checked by tests/oracle.py:check_plan (independent of the planner);
refusals must be one non-empty line. Determinism and stability are checked too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmslice.errors import PlanError
from bmslice.model.plan import Plan
from bmslice.model.spec import Spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from oracle import check_plan
from topologies import nic, synthetic

SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("HYP_N", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def topologies(draw: st.DrawFn) -> HostTopology:
    sockets = draw(st.integers(1, 2))
    cores = draw(st.integers(1, 8))
    threads = draw(st.integers(1, 2))
    per_socket = draw(st.integers(1, min(2, cores)))
    numbering = draw(st.sampled_from(["spread", "adjacent", "interleaved"]))
    total = sockets * cores * threads
    offline = draw(st.lists(st.integers(1, total - 1), max_size=4, unique=True)) if total > 1 else []
    nodes = sockets * per_socket
    nic_nodes = draw(st.lists(st.one_of(st.none(), st.integers(0, nodes - 1)), max_size=3))
    nics = [nic(f"0000:{i + 1:02x}:00.0", f"eth{i}", node, 50 + i) for i, node in enumerate(nic_nodes)]
    return synthetic(
        sockets=sockets,
        cores=cores,
        threads=threads,
        nodes_per_socket=per_socket,
        numbering=numbering,
        memory_mib_per_node=draw(st.sampled_from([4096, 8192, 16384, 32768])),
        offline=offline,
        nics=nics,
        vendor=draw(st.sampled_from(["GenuineIntel", "AuthenticAMD"])),
    )


@st.composite
def specs(draw: st.DrawFn, topo: HostTopology) -> Spec:
    nodes = len(topo.numa_nodes)
    nic_names = [d.interfaces[0] for d in topo.pci_devices]
    vms: list[dict[str, Any]] = []
    for k in range(draw(st.integers(1, 5))):
        vm: dict[str, Any] = {
            "name": f"vm{k}",
            "vcpus": draw(st.integers(1, 8)),
            "memory": draw(st.sampled_from([512, 1024, 2048, 4096, 8192])),
            "emulator": draw(st.sampled_from(["dedicated", "host"])),
            "iothreads": draw(st.integers(0, 2)),
        }
        node = draw(st.one_of(st.none(), st.integers(0, nodes)))  # `nodes` itself does not exist
        if node is not None:
            vm["numa_node"] = node
        if nic_names:
            picked = draw(st.lists(st.sampled_from(nic_names), max_size=2, unique=True))
            if picked:
                vm["nics"] = [{"passthrough": name} for name in picked]
        vms.append(vm)
    host = {
        "reserved_cores_per_node": draw(st.integers(0, 2)),
        "reserved_memory_per_node": draw(st.sampled_from([1024, 2048])),
        "nic_numa_policy": draw(st.sampled_from(["prefer", "prefer", "require"])),
        "isolate": draw(st.sampled_from(["all", "all", "vms"])),
    }
    return spec_from_data({"host": host, "vms": vms}, "prop.yaml")


def _plan(topo: HostTopology, spec: Spec, keep: tuple[Any, ...] = ()) -> Plan | PlanError:
    try:
        return make_plan(topo, spec, "prop.yaml", keep)
    except PlanError as exc:
        return exc


def _assert_one_line(exc: PlanError) -> None:
    text = str(exc)
    assert text.strip(), "empty PlanError"
    assert "\n" not in text and "\r" not in text, f"multi-line PlanError: {text!r}"


def _shuffled(topo: HostTopology) -> HostTopology:
    """The same host listed in another order: CPUs, nodes and PCI devices reversed."""
    return dataclasses.replace(
        topo,
        cpus=tuple(reversed(topo.cpus)),
        numa_nodes=tuple(reversed(topo.numa_nodes)),
        pci_devices=tuple(reversed(topo.pci_devices)),
    )


cases = topologies().flatmap(lambda topo: st.tuples(st.just(topo), specs(topo)))


@SETTINGS
@given(cases)
def test_every_plan_holds_the_invariants(case: tuple[HostTopology, Spec]) -> None:
    topo, spec = case
    result = _plan(topo, spec)
    if isinstance(result, PlanError):
        _assert_one_line(result)
        return
    check_plan(topo, spec, result)


@SETTINGS
@given(cases)
def test_planning_is_deterministic(case: tuple[HostTopology, Spec]) -> None:
    topo, spec = case
    first, second = _plan(topo, spec), _plan(topo, spec)
    if isinstance(first, PlanError):
        assert isinstance(second, PlanError) and str(second) == str(first)
    else:
        assert second == first
    shuffled = _plan(_shuffled(topo), spec)
    if isinstance(first, PlanError):
        assert isinstance(shuffled, PlanError), "reordered topology made a refused spec plannable"
    else:
        assert shuffled == first, "same host listed in another order gave another plan"


@SETTINGS
@given(cases)
def test_refusal_text_does_not_depend_on_listing_order(case: tuple[HostTopology, Spec]) -> None:
    topo, spec = case
    first = _plan(topo, spec)
    if isinstance(first, PlanError):
        shuffled = _plan(_shuffled(topo), spec)
        assert isinstance(shuffled, PlanError) and str(shuffled) == str(first)


@SETTINGS
@given(cases, st.integers(1, 4), st.sampled_from(["dedicated", "host"]))
def test_replanning_keeps_running_slices(case: tuple[HostTopology, Spec], vcpus: int, emulator: str) -> None:
    topo, spec = case
    plan = _plan(topo, spec)
    if isinstance(plan, PlanError):
        return
    # Same spec, everything already running: nothing moves.
    assert _plan(topo, spec, plan.vms) == plan
    # One more VM: the running ones keep their cores, pins and emulator CPUs.
    data = spec.model_dump(mode="json")
    data["vms"].append({"name": "extra", "vcpus": vcpus, "memory": 512, "emulator": emulator})
    bigger = spec_from_data(data, "prop.yaml")
    again = _plan(topo, bigger, plan.vms)
    if isinstance(again, PlanError):
        _assert_one_line(again)
        return
    for old in plan.vms:
        new = again.vm(old.name)
        assert new.numa_nodes == old.numa_nodes
        assert new.vcpu_pins == old.vcpu_pins
        assert new.emulator_cpus == old.emulator_cpus
        assert new.iothread_cpus == old.iothread_cpus
        assert new.cores == old.cores
        assert new.guest_topology == old.guest_topology
    check_plan(topo, bigger, again)
