"""A slice's recorded plan read back from its libvirt metadata, and planning around slices whose
record does not read back (issue 19, classes 3 and 4; the real-libvirtd half is test_corrupt_slices.py).

- Every record bmslice writes reads back as the plan it was (every plan kind).
- A record truncated, not JSON, of the wrong types, with keys bmslice does not write, with
  hostile names (newline, Jinja, too long), or that contradicts itself is one RecordError
  line naming the field; a random mutation of a record is a plan or that error, never
  anything else.
- The planner keeps clear of what such a slice holds: its CPUs, devices, VFs and memory; a
  refusal it may have caused names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError
from bmslice.model.live import HeldSlice
from bmslice.model.plan import Plan, VmPlan, vm_from_dict
from bmslice.model.recorded import MAX_RECORD_CHARS, RecordError, recorded_vm
from bmslice.model.spec import VM_NAME_RE, load_spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from bmslice.render.domain_model import domain_from_plan
from bmslice.topology.sysfs import read_host_tree
from treebuilder import epyc_spec, write_tree

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests/data"
SERVER1 = ROOT / "examples/server1/host"
KERNEL415 = DATA / "trees/server1-kernel4.15"
RED = "Red_k8s_cluster_worker1"


@pytest.fixture(scope="module")
def server1() -> HostTopology:
    return read_host_tree(SERVER1)


@pytest.fixture(scope="module")
def server1_plan(server1: HostTopology) -> Plan:
    return make_plan(server1, load_spec(ROOT / "examples/server1/spec.yaml"))


def _plans(tmp: Path) -> list[Plan]:
    """One plan of each kind: passthrough, realtime with 1 GiB pages, VMs over several nodes,
    L3 ways and bandwidth caps, SR-IOV VFs on a kernel without sriov_offset."""
    server1 = read_host_tree(SERVER1)
    epyc = read_host_tree(write_tree(epyc_spec(), tmp / "epyc"))
    return [
        make_plan(server1, load_spec(ROOT / "examples/server1/spec.yaml")),
        make_plan(server1, load_spec(DATA / "realtime/server1-spec.yaml")),
        make_plan(server1, load_spec(DATA / "multinode/server1-spec.yaml")),
        make_plan(epyc, load_spec(DATA / "cache/epyc1-spec.yaml")),
        make_plan(read_host_tree(KERNEL415), load_spec(DATA / "server1-kernel4.15-vfs.yaml")),
    ]


def record(vm: VmPlan) -> str:
    """The metadata text apply writes into the domain (what domain_from_plan records)."""
    text = domain_from_plan(vm).plan_json
    assert text is not None
    return text


def test_every_record_bmslice_writes_reads_back_as_its_plan(tmp_path: Path) -> None:
    plans = _plans(tmp_path)
    seen = set()
    for plan in plans:
        for vm in plan.vms:
            assert recorded_vm(record(vm)) == vm, vm.name
            seen |= {key for key in json.loads(record(vm))}
            seen |= {f"devices.{d.type}" for d in vm.devices}
    # the kinds this covers: every key bmslice records, both device kinds
    assert {"realtime", "cells", "cache", "l3_domains", "devices.vf", "devices.passthrough"} <= seen


def test_a_record_from_before_the_optional_keys_still_reads(server1_plan: Plan) -> None:
    """Plans recorded before realtime, L3, cells and dies existed (round 1) carry none of those keys."""
    data = json.loads(record(server1_plan.vm(RED)))
    for key in ("realtime", "l3_domains", "cache", "cells", "hugepage_kib", "warnings", "domain_type"):
        data.pop(key, None)
    data["guest_topology"].pop("dies")
    assert recorded_vm(json.dumps(data)) == vm_from_dict(data)


def _mutated(base: dict[str, Any], path: str, value: Any) -> str:
    data = json.loads(json.dumps(base))
    *parents, last = path.split(".")
    at: Any = data
    for key in parents:
        at = at[int(key)] if isinstance(at, list) else at[key]
    if isinstance(at, list) and int(last) == len(at):  # an item where the record has none yet
        at.append(value)
    elif isinstance(at, list):
        at[int(last)] = value
    else:
        at[last] = value
    return json.dumps(data)


TRUNCATED, NOT_JSON, TYPES, UNKNOWN, HOSTILE, INCONSISTENT, SIZE = (
    "truncated",
    "not JSON",
    "wrong types",
    "unknown keys",
    "hostile names",
    "inconsistent",
    "size",
)

# (class, path in the record, value, what the one line must say); path "" = the whole text
CASES: list[tuple[str, str, Any, str]] = [
    (TRUNCATED, "", "half", "not JSON"),
    (TRUNCATED, "", "", "not JSON"),
    (TRUNCATED, "", '{"name": "x"}', "required field is missing"),
    (NOT_JSON, "", "<slice><vcpus>2</vcpus></slice>", "not JSON"),
    (NOT_JSON, "", "[1, 2]", "JSON an array, not the object"),
    (NOT_JSON, "", '"Red"', "JSON a string, not the object"),
    (NOT_JSON, "", "null", "JSON null, not the object"),
    (NOT_JSON, "", '{"name": NaN}', "not JSON bmslice accepts"),
    (NOT_JSON, "", '{"name": "a", "name": "b"}', "duplicate key"),
    (TYPES, "vcpu_pins", "4,16", "vcpu_pins: Expected `array`"),
    (TYPES, "vcpu_pins.0", "4", "vcpu_pins[0]: Expected `int"),
    (TYPES, "vcpu_pins.0", True, "vcpu_pins[0]: Expected `int"),
    (TYPES, "memory_mib", 8192.0, "memory_mib: Expected `int"),
    (TYPES, "guest_topology", [1, 4, 2], "guest_topology: Expected `object`"),
    (TYPES, "devices", {"address": "0000:01:00.0"}, "devices: Expected `array`"),
    (TYPES, "devices.0.numa_node", "0", "devices[0].numa_node: Expected `int"),
    (TYPES, "emulator_cpus", None, "emulator_cpus: Expected `array`"),
    (TYPES, "hugepage_kib", 4096, "hugepage_kib: expected 2048 or 1048576, got 4096"),
    (TYPES, "emulator_policy", "shared", "emulator_policy: expected 'dedicated' or 'host', got"),
    (TYPES, "vcpu_pins.0", -1, "vcpu_pins[0]: Expected `int` >= 0"),
    (UNKNOWN, "version", 2, "version: unknown key"),
    (UNKNOWN, "devices.0.vendor", "8086", "devices[0].vendor: unknown key"),
    (HOSTILE, "name", "Red\nGRUB_CMDLINE_LINUX=x", "name: 'Red\\nGRUB_CMDLINE_LINUX=x' is not a valid domain name"),
    (HOSTILE, "name", "{{ lookup('pipe', 'id') }}", "is not a valid domain name"),
    (HOSTILE, "name", "r" * 65, "is not a valid domain name"),
    (HOSTILE, "name", "../../etc/passwd", "is not a valid domain name"),
    (HOSTILE, "devices.0.interface", "eno1\n", "devices[0].interface: 'eno1\\n' is not an interface name"),
    (HOSTILE, "devices.0.interface", "{{ x }}", "is not an interface name"),
    (HOSTILE, "devices.0.address", "0000:01:00.0\n", "devices[0].address: '0000:01:00.0\\n' is not a PCI address"),
    (HOSTILE, "devices.0.address", "01:00.0", "devices[0].address: '01:00.0' is not a PCI address"),
    (HOSTILE, "devices.0.driver", "ixgbe\nrm -rf /", "devices[0].driver: 'ixgbe\\nrm -rf /' is not a kernel driver"),
    (HOSTILE, "disable_cpu_features.0", "a b", "is not a CPU feature name"),
    (HOSTILE, "warnings.0", "x\ny", "warnings[0]: 'x\\ny' is not a one-line warning"),
    (INCONSISTENT, "vcpu_pins.0", 1, "vcpu_pins: CPUs 1 are not in the slice's cores"),
    (INCONSISTENT, "guest_topology.sockets", 2, "guest_topology: does not multiply out to its 8 vCPUs"),
    (INCONSISTENT, "cores.0", [4, 16], "cores: a CPU is listed in two cores"),
    (INCONSISTENT, "numa_nodes", [], "numa_nodes: Expected `array` of length >= 1"),
    (SIZE, "", "x" * (MAX_RECORD_CHARS + 1), "characters, more than any plan bmslice records"),
    (SIZE, "", "[" * 100_000, "nested too deeply"),
    (SIZE, "memory_mib", "big", "an integer of 5000 digits is too large"),
]


def _case_text(base: dict[str, Any], path: str, value: Any) -> str:
    if path == "":
        return json.dumps(base)[: len(json.dumps(base)) // 2] if value == "half" else str(value)
    if value == "big":  # a 5,000-digit number: json.dumps cannot make one past Python's int limit
        return _mutated(base, path, 0).replace('"memory_mib": 0', '"memory_mib": ' + "9" * 5000)
    return _mutated(base, path, value)


@pytest.mark.parametrize(("kind", "path", "value", "says"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_bad_record_is_one_line_naming_the_field(
    server1_plan: Plan, kind: str, path: str, value: Any, says: str
) -> None:
    base = json.loads(record(server1_plan.vm(RED)))
    with pytest.raises(RecordError) as info:
        recorded_vm(_case_text(base, path, value))
    line = str(info.value)
    assert says in line, (kind, line)
    assert line.isprintable() and len(line) < 400, line  # one line, bounded, whatever the record held


def test_the_cases_cover_every_class() -> None:
    assert {c[0] for c in CASES} == {TRUNCATED, NOT_JSON, TYPES, UNKNOWN, HOSTILE, INCONSISTENT, SIZE}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _leaves(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _leaves(v, f"{prefix}{k}.")] + ([prefix[:-1]] if prefix else [])
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _leaves(v, f"{prefix}{i}.")] + ([prefix[:-1]] if prefix else [])
    return [prefix[:-1]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mutated_record_is_a_plan_or_one_recorderror(server1_plan: Plan, data: st.DataObject) -> None:
    vm = server1_plan.vm(RED)
    base = json.loads(record(vm))
    path = data.draw(st.sampled_from(_leaves(base)))
    value = data.draw(JSON_VALUES)
    try:
        got = recorded_vm(_mutated(base, path, value))
    except RecordError as exc:
        assert str(exc).isprintable() and len(str(exc)) < 400
        return
    # accepted: every name in it passed the spec's validators, and it is a plan bmslice can use
    assert VM_NAME_RE.fullmatch(got.name)
    assert got.vcpu_cpus.issubset(got.owned_cpus) and got.vcpus == len(got.vcpu_cpus)
    assert all(d.address is None or "\n" not in d.address for d in got.devices)


# --- planning around held slices ------------------------------------------------------------------


def spec(vms: list[dict[str, Any]], **host: Any) -> Any:
    return spec_from_data({"host": {"reserved_cores_per_node": 1, **host}, "vms": vms}, "spec.yaml")


def held(**kw: Any) -> HeldSlice:
    return HeldSlice(**{"name": "ghost", "why": "not JSON: Expecting value at line 1", "cpus": CpuSet(), **kw})


def test_new_vms_go_around_a_held_slices_cpus(server1: HostTopology) -> None:
    vm = {"name": "new", "vcpus": 4, "memory": "2GiB", "numa_node": 0, "emulator": "host"}
    free = make_plan(server1, spec([vm])).vm("new")
    ghost = held(cpus=free.owned_cpus | CpuSet.of(6))  # its cores, and one thread of another
    plan = make_plan(server1, spec([vm]), held=[ghost])
    assert plan.vm("new").owned_cpus.isdisjoint(ghost.cpus | CpuSet.of(18))  # 6's sibling 18: a core is whole
    assert [v.name for v in plan.vms] == ["new"]  # the held slice is not in the plan


def test_a_held_slices_device_goes_to_no_one(server1: HostTopology) -> None:
    ghost = held(devices=("0000:01:00.0",))  # eno1
    vm = {"name": "new", "vcpus": 2, "memory": "2GiB", "nics": [{"passthrough": "eno1"}]}
    with pytest.raises(PlanError) as info:
        make_plan(server1, spec([vm]), held=[ghost])
    assert "0000:01:00.0 (eno1) is already given to ghost, whose bmslice metadata is unreadable" in str(info.value)
    vf = {"name": "new", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "eno1"}}]}
    with pytest.raises(PlanError, match="passed through whole to ghost, whose bmslice metadata is unreadable"):
        make_plan(server1, spec([vf]), held=[ghost])


def test_a_held_slices_vfs_are_skipped(server1: HostTopology) -> None:
    vm = {"name": "new", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "eno2", "count": 2}}]}
    before = make_plan(server1, spec([vm])).vm("new").devices
    assert [d.vf_index for d in before] == [0, 1]
    ghost = held(devices=(before[0].known_address,))  # VF 0 of eno2, which does not exist yet
    after = make_plan(server1, spec([vm]), held=[ghost]).vm("new").devices
    assert [d.vf_index for d in after] == [1, 2]


def test_a_held_slices_memory_is_taken_from_its_node(server1: HostTopology) -> None:
    vm = {"name": "new", "vcpus": 2, "memory": "16GiB"}
    (first,) = make_plan(server1, spec([vm])).vm("new").numa_nodes
    ghost = held(memory_mib=((first, 20 * 1024),))  # 16GiB no longer fits beside it there
    assert make_plan(server1, spec([vm]), held=[ghost]).vm("new").numa_nodes == (1 - first,)


def test_a_shortfall_names_the_held_slice_and_the_way_out(server1: HostTopology) -> None:
    ghost = held(cpus=CpuSet.parse("2-11,14-23"), devices=("0000:01:00.0",))
    with pytest.raises(PlanError) as info:
        make_plan(server1, spec([{"name": "new", "vcpus": 2, "memory": "2GiB"}]), held=[ghost])
    message = str(info.value)
    assert message.startswith("new needs 2 whole cores")
    assert "ghost (CPUs 2-11,14-23, PCI devices 0000:01:00.0)" in message
    assert "`bmslice destroy SPEC --vm NAME` removes one" in message


def test_isolate_vms_keeps_a_held_slices_cpus_isolated(server1: HostTopology) -> None:
    vm = {"name": "new", "vcpus": 2, "memory": "2GiB", "numa_node": 0}
    plan = make_plan(server1, spec([vm], isolate="vms"), held=[held(cpus=CpuSet.parse("11,23"))])
    assert CpuSet.parse("11,23").issubset(plan.host.isolated_cpus)


def test_a_running_slice_outside_the_spec_keeps_its_device(server1: HostTopology, server1_plan: Plan) -> None:
    """The same rule for a readable slice the spec does not name: its NIC is not free."""
    red = server1_plan.vm(RED)
    vm = {"name": "new", "vcpus": 2, "memory": "2GiB", "nics": [{"passthrough": "0000:01:00.0"}]}
    with pytest.raises(PlanError, match=f"already given to {RED}"):
        make_plan(server1, spec([vm]), keep=[red])


@pytest.mark.parametrize("held_mib", [1 << 30, 40 * 1024])
def test_a_held_slice_holding_more_than_its_node_leaves_none_not_less_than_none(
    server1: HostTopology, held_mib: int
) -> None:
    """A held slice whose definition binds more memory to a node than the node has (1 TiB, or just
    over it): the node has no memory left for others (never a negative amount), the other node does."""
    ghost = held(memory_mib=((0, held_mib),))
    vm = {"name": "new", "vcpus": 2, "memory": "2GiB"}
    assert make_plan(server1, spec([vm]), held=[ghost]).vm("new").numa_nodes == (1,)
    pinned = {**vm, "numa_node": 0}
    with pytest.raises(PlanError) as info:
        make_plan(server1, spec([pinned]), held=[ghost])
    assert "new needs 2048 MiB on NUMA node 0, only 0 MiB are free" in str(info.value), str(info.value)
