"""The design note's server1 (2 sockets x 6 cores x 2 threads, node 0 even CPUs, node 1 odd):
golden facts of the example spec, the refusals around it, and spec validation errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmslice.cpuset import CpuSet
from bmslice.errors import PlanError, SpecError
from bmslice.model.plan import GuestTopology, Plan
from bmslice.model.spec import Spec, load_spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from oracle import check_plan
from topologies import server1

SPEC_PATH = Path(__file__).resolve().parents[1] / "examples" / "server1" / "spec.yaml"
RED = "Red_k8s_cluster_worker1"
BLUE = "Blue_k8s_cluster_worker1"


def _data() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(SPEC_PATH.read_text()))


def _vm(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(vm for vm in data["vms"] if vm["name"] == name)


def _plan(data: dict[str, Any], topo: HostTopology | None = None) -> Plan:
    return make_plan(topo or server1(), spec_from_data(data, "spec.yaml"), "spec.yaml")


def _refusal(data: dict[str, Any], topo: HostTopology | None = None) -> str:
    with pytest.raises(PlanError) as info:
        _plan(data, topo)
    text = str(info.value)
    assert text.strip() and "\n" not in text
    return text


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(SPEC_PATH)


@pytest.fixture(scope="module")
def plan(spec: Spec) -> Plan:
    return make_plan(server1(), spec, str(SPEC_PATH))


# --- golden facts -----------------------------------------------------------------------


def test_golden_plan_holds_every_invariant(spec: Spec, plan: Plan) -> None:
    check_plan(server1(), spec, plan)


def test_host_keeps_first_core_of_each_node(plan: Plan) -> None:
    assert plan.host.reserved_cpus == CpuSet.parse("0,1,12,13")


def test_red_pins_and_emulator(plan: Plan) -> None:
    red = plan.vm(RED)
    assert red.numa_nodes == (0,)
    assert list(red.vcpu_pins) == [4, 16, 6, 18, 8, 20, 10, 22]
    assert red.emulator_cpus == CpuSet.of(2, 14)
    assert red.iothread_cpus == CpuSet.of(2, 14)
    assert red.guest_topology == GuestTopology(sockets=1, cores=4, threads=2)


def test_blue_pins_and_emulator(plan: Plan) -> None:
    blue = plan.vm(BLUE)
    assert blue.numa_nodes == (1,)
    assert list(blue.vcpu_pins) == [5, 17, 7, 19, 9, 21, 11, 23]
    assert blue.emulator_cpus == CpuSet.of(3, 15)
    assert blue.iothread_cpus == CpuSet.of(3, 15)
    assert blue.guest_topology == GuestTopology(sockets=1, cores=4, threads=2)


def test_isolation_and_kernel_args(plan: Plan) -> None:
    assert plan.host.isolated_cpus == CpuSet.parse("2-11,14-23")
    args = plan.host.kernel_args
    for arg in (
        "intel_iommu=on",
        "iommu=pt",
        "isolcpus=2-11,14-23",
        "nohz_full=2-11,14-23",
        "rcu_nocbs=2-11,14-23",
        "irqaffinity=0-1,12-13",
    ):
        assert arg in args
    assert any(a.startswith("nohz_full=") for a in args)
    assert any(a.startswith("rcu_nocbs=") for a in args)
    assert plan.host.reboot_required is True


def test_cross_numa_warning_only_for_blue(plan: Plan) -> None:
    blue = [w for w in plan.vm(BLUE).warnings if "cross-NUMA" in w]
    assert len(blue) == 1 and "eno2" in blue[0]
    assert not [w for w in plan.vm(RED).warnings if "cross-NUMA" in w]
    assert sum("cross-NUMA" in w for w in plan.warnings) == 1


# --- refusals and variants --------------------------------------------------------------


def test_too_many_vcpus_names_the_core_shortfall() -> None:
    # Design-note message (regression: once read "needs 7 whole cores").
    data = _data()
    _vm(data, BLUE)["vcpus"] = 10
    assert "Blue_k8s_cluster_worker1 needs 6 whole cores on NUMA node 1, only 5 are free" in _refusal(data)


def test_too_much_memory_names_node_and_amount() -> None:
    data = _data()
    _vm(data, BLUE)["memory"] = "40GiB"
    text = _refusal(data)
    # 32 GiB per node minus the host's 2 GiB
    assert "Blue_k8s_cluster_worker1 needs 40960 MiB on NUMA node 1, only 30720 MiB are free" in text


def test_memory_exactly_at_the_limit_fits() -> None:
    data = _data()
    _vm(data, BLUE)["memory"] = "30GiB"
    assert _plan(data).vm(BLUE).memory_mib == 30720


def test_default_route_nic_refused() -> None:
    data = _data()
    _vm(data, RED)["nics"] = [{"passthrough": "eno3"}]
    text = _refusal(data)
    assert "default route" in text and "eno3" in text and "vms[0].nics[0].passthrough" in text
    assert "allow_management_nic" in text


def test_default_route_nic_allowed_with_override() -> None:
    data = _data()
    _vm(data, RED)["nics"] = [{"passthrough": "eno3"}]
    data["host"]["allow_management_nic"] = True
    plan = _plan(data)
    assert [d.interface for d in plan.vm(RED).devices] == ["eno3"]
    override = [w for w in plan.warnings if w.startswith("OVERRIDE")]
    assert len(override) == 1 and "eno3" in override[0] and RED in override[0]


def test_same_nic_in_two_vms_refused() -> None:
    data = _data()
    _vm(data, BLUE)["nics"] = [{"passthrough": "eno1"}]
    text = _refusal(data)
    assert "vms[1].nics[0].passthrough" in text and "already given to Red_k8s_cluster_worker1" in text


def test_same_nic_by_name_and_pci_address_refused() -> None:
    data = _data()
    _vm(data, BLUE)["nics"] = [{"passthrough": "01:00.0"}]  # eno1 by (short) PCI address
    assert "already given to Red_k8s_cluster_worker1" in _refusal(data)


def test_unknown_nic_lists_known_nics() -> None:
    data = _data()
    _vm(data, BLUE)["nics"] = [{"passthrough": "eno9"}]
    text = _refusal(data)
    assert "'eno9'" in text and "eno1, eno2, eno3, eno4" in text


def test_nic_numa_require_refuses_cross_numa_blue() -> None:
    data = _data()
    data["host"]["nic_numa_policy"] = "require"
    text = _refusal(data)
    assert BLUE in text and "require" in text


def test_nic_numa_require_without_fixed_node_moves_the_vm() -> None:
    """Blue without numa_node goes where its NIC is, if it fits there; here node 0 is full."""
    data = _data()
    data["host"]["nic_numa_policy"] = "require"
    del _vm(data, BLUE)["numa_node"]
    assert BLUE in _refusal(data)
    _vm(data, RED)["vcpus"] = 2
    _vm(data, BLUE)["vcpus"] = 2
    plan = _plan(data)
    assert plan.vm(BLUE).numa_nodes == (0,) and not plan.warnings


def test_emulator_host_uses_the_nodes_reserved_cpus() -> None:
    data = _data()
    _vm(data, RED)["emulator"] = "host"
    _vm(data, BLUE)["emulator"] = "host"
    plan = _plan(data)
    assert plan.vm(RED).emulator_cpus == CpuSet.of(0, 12)
    assert plan.vm(RED).iothread_cpus == CpuSet.of(0, 12)
    assert plan.vm(BLUE).emulator_cpus == CpuSet.of(1, 13)
    assert len(plan.vm(RED).cores) == 4
    check_plan(server1(), spec_from_data(data, "spec.yaml"), plan)


def test_amd_host_gets_no_intel_iommu_arg() -> None:
    plan = _plan(_data(), server1(vendor="AuthenticAMD"))
    assert not any(a.startswith("intel_iommu") for a in plan.host.kernel_args)
    assert "iommu=pt" in plan.host.kernel_args
    assert plan.host.cpu_vendor == "AuthenticAMD"


def test_explicit_reserved_cpus() -> None:
    data = _data()
    data["host"] = {"reserved_cpus": "0,12"}
    plan = _plan(data)
    assert plan.host.reserved_cpus == CpuSet.of(0, 12)
    assert plan.host.isolated_cpus == CpuSet.parse("1-11,13-23")
    check_plan(server1(), spec_from_data(data, "spec.yaml"), plan)


def test_explicit_reserved_cpus_splitting_a_core_refused() -> None:
    data = _data()
    data["host"] = {"reserved_cpus": "0"}
    text = _refusal(data)
    assert "splits core" in text and "0,12" in text


def test_explicit_reserved_cpus_without_cpu0_refused() -> None:
    data = _data()
    data["host"] = {"reserved_cpus": "1,13"}
    assert "CPU 0" in _refusal(data)


def test_kernel_already_booted_with_the_args_needs_no_reboot(plan: Plan) -> None:
    cmdline = "BOOT_IMAGE=/vmlinuz ro " + " ".join(plan.host.kernel_args)
    again = make_plan(server1(cmdline=cmdline), load_spec(SPEC_PATH), "spec.yaml")
    assert again.host.reboot_required is False and again.host.missing_kernel_args == ()


# --- spec validation --------------------------------------------------------------------


def _bad(mutate: Any) -> dict[str, Any]:
    data = _data()
    mutate(data)
    return data


SPEC_ERRORS = [
    ("unknown key", lambda d: d["vms"][0].update(colour="red"), "vms[0].colour", "unknown key"),
    ("vcpus 0", lambda d: d["vms"][0].update(vcpus=0), "vms[0].vcpus", "Expected `int` >= 1"),
    ("vcpus -1", lambda d: d["vms"][1].update(vcpus=-1), "vms[1].vcpus", "Expected `int` >= 1"),
    ("bad memory", lambda d: d["vms"][0].update(memory="8XB"), "vms[0].memory", "8XB"),
    (
        "bad PCI address",
        lambda d: d["vms"][0].update(nics=[{"passthrough": "0000:zz:00.0"}]),
        "vms[0].nics[0].passthrough",
        "0000:zz:00.0",
    ),
    ("unknown host key", lambda d: d["host"].update(reserved_cores=1), "host.reserved_cores", "unknown key"),
]


@pytest.mark.parametrize(("label", "mutate", "field", "reason"), SPEC_ERRORS, ids=[e[0] for e in SPEC_ERRORS])
def test_spec_errors_name_file_field_and_reason(
    tmp_path: Path, label: str, mutate: Any, field: str, reason: str
) -> None:
    data = _bad(mutate)
    with pytest.raises(SpecError) as info:
        spec_from_data(data, "spec.yaml")
    text = str(info.value)
    assert "\n" not in text and text.startswith("spec.yaml: ")
    assert f": {field}: " in text and reason in text
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == text.replace("spec.yaml", str(path), 1)


def test_duplicate_vm_names_refused() -> None:
    data = _data()
    _vm(data, BLUE)["name"] = RED
    with pytest.raises(SpecError) as info:
        spec_from_data(data, "spec.yaml")
    text = str(info.value)
    assert "\n" not in text and text.startswith("spec.yaml: ")
    assert "duplicate VM name 'Red_k8s_cluster_worker1'" in text


def test_duplicate_vm_names_error_names_the_field() -> None:
    # faults.md 32: file, field and reason - the second entry's field, vms[1].name.
    data = _data()
    _vm(data, BLUE)["name"] = RED
    with pytest.raises(SpecError) as info:
        spec_from_data(data, "spec.yaml")
    assert "vms[1].name" in str(info.value)


def test_yaml_syntax_error_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("vms:\n  - name: a\n    vcpus: [1\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value) and "YAML" in str(info.value)
