"""Rendered domain XML: golden files, libvirt's schema, and the XML model round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from bmslice.model.spec import load_spec, spec_from_data
from bmslice.plan.planner import make_plan
from bmslice.render.artifacts import render_plan
from bmslice.render.domain_model import domain_from_plan
from bmslice.render.domain_xml import from_xml, to_xml
from golden import assert_golden
from schema import schema_errors
from topologies import server1, synthetic

EXAMPLE = Path(__file__).parents[1] / "examples" / "server1" / "spec.yaml"


@pytest.fixture(scope="module")
def server1_files() -> dict[str, str]:
    return render_plan(make_plan(server1(), load_spec(EXAMPLE), origin="spec.yaml"))


@pytest.mark.parametrize("name", ["Red_k8s_cluster_worker1.xml", "Blue_k8s_cluster_worker1.xml", "kernel-args"])
def test_server1_golden(server1_files: dict[str, str], name: str) -> None:
    assert_golden(f"server1/{name}", server1_files[name])


def test_server1_kernel_args_line(server1_files: dict[str, str]) -> None:
    args = server1_files["kernel-args"].split()
    assert "intel_iommu=on" in args
    assert "isolcpus=2-11,14-23" in args


@pytest.mark.parametrize("name", ["Red_k8s_cluster_worker1.xml", "Blue_k8s_cluster_worker1.xml"])
def test_server1_xml_validates(server1_files: dict[str, str], name: str) -> None:
    assert schema_errors(server1_files[name]) is None


def test_schema_really_rejects_bad_xml(server1_files: dict[str, str]) -> None:
    bad = server1_files["Red_k8s_cluster_worker1.xml"].replace("<iothreads>1</iothreads>", "<iothreads>one</iothreads>")
    assert schema_errors(bad) is not None


def test_red_xml_carries_the_note_layout(server1_files: dict[str, str]) -> None:
    root = etree.fromstring(server1_files["Red_k8s_cluster_worker1.xml"].encode())
    pins = [(p.get("vcpu"), p.get("cpuset")) for p in root.findall("cputune/vcpupin")]
    assert pins == [(str(i), str(c)) for i, c in enumerate([4, 16, 6, 18, 8, 20, 10, 22])]
    assert root.find("cputune/emulatorpin").get("cpuset") == "2,14"
    assert root.find("cputune/iothreadpin").get("cpuset") == "2,14"
    assert root.find("vcpu").get("placement") == "static"
    assert root.find("numatune/memory").attrib == {"mode": "strict", "nodeset": "0"}
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("cpu/topology").attrib == {"sockets": "1", "dies": "1", "cores": "4", "threads": "2"}
    address = root.find("devices/hostdev/source/address").attrib
    assert dict(address) == {"domain": "0x0000", "bus": "0x01", "slot": "0x00", "function": "0x0"}
    assert root.find("devices/interface") is None


def test_round_trip_through_the_xml_model() -> None:
    plan = make_plan(server1(), load_spec(EXAMPLE))
    for vm in plan.vms:
        domain = domain_from_plan(vm)
        assert from_xml(to_xml(domain)) == domain


def test_disabled_cpu_features_and_tcg() -> None:
    spec = spec_from_data(
        {
            "host": {"domain_type": "qemu"},
            "vms": [{"name": "a", "vcpus": 2, "memory": "1GiB", "disable_cpu_features": ["arch-capabilities"]}],
        },
        "t",
    )
    plan = make_plan(synthetic(sockets=1, cores=4), spec)
    xml = render_plan(plan)["a.xml"]
    root = etree.fromstring(xml.encode())
    assert root.get("type") == "qemu"
    assert root.find("cpu").get("mode") == "maximum"
    assert root.find("cpu/feature").attrib == {"policy": "disable", "name": "arch-capabilities"}
    assert schema_errors(xml) is None


def test_hugepages_render_memory_backing() -> None:
    spec = spec_from_data({"vms": [{"name": "a", "vcpus": 2, "memory": "4GiB", "hugepages": "1G"}]}, "t")
    plan = make_plan(synthetic(sockets=1, cores=4), spec)
    xml = render_plan(plan)["a.xml"]
    page = etree.fromstring(xml.encode()).find("memoryBacking/hugepages/page")
    assert page.attrib == {"size": "1048576", "unit": "KiB"}
    assert schema_errors(xml) is None
    assert "hugepages=0:4" in plan.host.kernel_args


def test_render_is_deterministic() -> None:
    first = render_plan(make_plan(server1(), load_spec(EXAMPLE)))
    second = render_plan(make_plan(server1(), load_spec(EXAMPLE)))
    assert first == second
