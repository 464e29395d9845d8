"""Guests over several NUMA nodes (issue 14, section 3): `numa_nodes: N`.

- on the design note's server (examples/server1/host), a 2-node VM: one guest cell per host
  node with the host's distances, each cell's vCPUs pinned on its node, the emulator core on
  the first, 2 guest sockets, memory bound per cell, its NIC and VF on the guest cell of their
  host node, hugepages per node in the host plan; golden XML valid for libvirt's RelaxNG
  schema, defined on libvirt's test:/// driver and read back equal;
- on the EPYC-like tree (8 NUMA nodes, 2 L3 domains each), a 4-node VM with a VF from each
  of two NICs on two nodes, applied for real on the tree and the test:/// driver (the test
  plays the kernel that makes the VFs), verified without drift, its XML a golden file;
- each refusal is one line naming the field;
- re-planning with the slice running keeps it exactly, its recorded plan round-tripped;
- nic_numa_policy require stays exact when the cost search runs out of steps;
- the picture and the HTML report of a 2-node VM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from lxml import etree, html

import bmslice.plan.placement as placement
from bmslice.errors import PlanError, SpecError
from bmslice.model.plan import Plan, VmPlan, plan_to_dict, vm_from_dict
from bmslice.model.spec import Spec, load_spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.capacity import Load, NodeFree
from bmslice.plan.planner import make_plan
from bmslice.render.artifacts import render_plan
from bmslice.render.domain_model import domain_from_plan
from bmslice.render.domain_xml import from_xml, to_xml
from bmslice.render.picture_svg import render_svg
from bmslice.render.report_html import render_report
from bmslice.topology.sysfs import read_host_tree
from bmslice.verify.compare import compare_definition
from golden import assert_golden
from oracle import check_plan
from schema import schema_errors
from treebuilder import HostSpec, NodeMemory, add_vfs, epyc_spec, write_tree

REPO = Path(__file__).parents[1]
SERVER1 = REPO / "examples" / "server1" / "host"
DATA = Path(__file__).parent / "data" / "multinode"
SERVER1_SPEC = DATA / "server1-spec.yaml"
EPYC_SPEC = DATA / "epyc1-spec.yaml"
E810 = {"ens1f0": "0000:41:00.0", "ens2f0": "0000:a1:00.0"}  # on host nodes 1 and 5


@pytest.fixture(scope="module")
def server1() -> HostTopology:
    return read_host_tree(SERVER1)


@pytest.fixture(scope="module")
def server1_plan(server1: HostTopology) -> Plan:
    return make_plan(server1, load_spec(SERVER1_SPEC), str(SERVER1_SPEC))


def epyc_host() -> HostSpec:
    """The EPYC-like tree after host-apply reserved its 1 GiB pages (16 free per node)."""
    memory = NodeMemory(65536, hugepages=((2048, 0, 0), (1048576, 16, 16)))
    return replace(epyc_spec(), node_memory=dict.fromkeys(range(8), memory))


@pytest.fixture(scope="module")
def epyc(tmp_path_factory: pytest.TempPathFactory) -> HostTopology:
    return read_host_tree(write_tree(epyc_host(), tmp_path_factory.mktemp("epyc") / "host"))


@pytest.fixture(scope="module")
def epyc_plan(epyc: HostTopology) -> Plan:
    return make_plan(epyc, load_spec(EPYC_SPEC), str(EPYC_SPEC))


def spec(vms: list[dict[str, Any]], **host: Any) -> Spec:
    return spec_from_data({"host": {"reserved_cores_per_node": 1, **host}, "vms": vms}, "spec.yaml")


def node_of(topo: HostTopology, cpu: int) -> int | None:
    return next(c.node for c in topo.cpus if c.id == cpu)


def distance(topo: HostTopology, a: int, b: int) -> int:
    ids = sorted(n.id for n in topo.numa_nodes)
    return topo.node(a).distances[ids.index(b)]


def check_cells(topo: HostTopology, vm: VmPlan) -> None:
    """Cell i: host node numa_nodes[i], vCPUs i*share.., pinned there, the host's distances."""
    share = vm.vcpus // len(vm.numa_nodes)
    assert [c.node for c in vm.cells] == list(vm.numa_nodes)
    for i, cell in enumerate(vm.cells):
        assert list(cell.vcpus) == list(range(i * share, (i + 1) * share))
        assert {node_of(topo, vm.vcpu_pins[v]) for v in cell.vcpus} == {cell.node}
        assert cell.memory_mib * len(vm.cells) == vm.memory_mib
        assert cell.distances == tuple(distance(topo, cell.node, other.node) for other in vm.cells)
    # over several nodes on hugepages, the emulator may also run on the host's CPUs of the other nodes
    # (libvirt preallocates each cell's pages from a thread on that cell's node, inside its cpuset)
    want = set(vm.numa_nodes) if vm.hugepage_kib else {vm.numa_nodes[0]}
    assert {node_of(topo, cpu) for cpu in vm.emulator_cpus} == want


# --- the design note's server: a VM over both nodes ------------------------------------------------


def test_server1_two_node_vm(server1: HostTopology, server1_plan: Plan) -> None:
    wide = server1_plan.vm("wide")
    assert wide.numa_nodes == (0, 1)
    check_cells(server1, wide)
    assert [c.distances for c in wide.cells] == [(10, 21), (21, 10)]  # examples/server1/host's distance files
    assert wide.vcpu_pins == (4, 16, 6, 18, 3, 15, 5, 17) and wide.emulator_cpus.format() == "1-2,13-14"
    t = wide.guest_topology
    assert (t.sockets, t.cores, t.threads) == (2, 2, 2)  # a socket per cell, sibling pairs on host cores
    assert wide.memory_by_node() == {0: 4096, 1: 4096}
    # eno1 and eno2 (its VF) sit on host node 0: guest cell 0
    assert [(d.interface, d.numa_node, wide.cell_of_node(d.numa_node)) for d in wide.devices] == [
        ("eno1", 0, 0),
        ("eno2", 0, 0),
    ]
    assert [(h.node, h.size_kib, h.pages) for h in server1_plan.host.hugepages] == [(0, 2048, 2048), (1, 2048, 2048)]
    assert server1_plan.vm("narrow").cells == () and server1_plan.vm("narrow").numa_nodes == (1,)
    assert not server1_plan.warnings
    check_plan(server1, load_spec(SERVER1_SPEC), server1_plan)


@pytest.mark.parametrize("name", ["wide.xml", "narrow.xml"])
def test_server1_golden_xml_validates(server1_plan: Plan, name: str) -> None:
    xml = render_plan(server1_plan)[name]
    assert_golden(f"multinode/server1/{name}", xml)
    assert schema_errors(xml) is None


def test_server1_xml_binds_memory_per_cell_and_devices_to_their_cell(server1_plan: Plan) -> None:
    root = etree.fromstring(render_plan(server1_plan)["wide.xml"].encode())
    assert [m.attrib for m in root.findall("numatune/memnode")] == [
        {"cellid": "0", "mode": "strict", "nodeset": "0"},
        {"cellid": "1", "mode": "strict", "nodeset": "1"},
    ]
    assert [(c.get("id"), c.get("cpus"), c.get("memory")) for c in root.findall("cpu/numa/cell")] == [
        ("0", "0-3", str(4 * 1024 * 1024)),
        ("1", "4-7", str(4 * 1024 * 1024)),
    ]
    controllers = {c.get("index"): c for c in root.findall("devices/controller")}
    for device in (root.find("devices/hostdev"), root.find("devices/interface")):
        port = controllers[str(int(device.find("address").get("bus"), 16))]
        assert port.get("model") == "pcie-root-port"
        expander = controllers[str(int(port.find("address").get("bus"), 16))]
        assert expander.get("model") == "pcie-expander-bus" and expander.findtext("target/node") == "0"
    narrow = etree.fromstring(render_plan(server1_plan)["narrow.xml"].encode())
    assert narrow.find("cpu/numa") is None and narrow.find("devices/controller") is None


@pytest.fixture
def test_driver() -> Iterator[Any]:
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open("test:///default")
    try:
        yield conn
    finally:
        conn.close()  # the last connection gone, the driver's state is dropped


def test_server1_xml_round_trips_through_libvirt(test_driver: Any, server1_plan: Plan) -> None:
    domain = domain_from_plan(server1_plan.vm("wide"))
    assert from_xml(to_xml(domain)) == domain
    defined = test_driver.defineXML(to_xml(domain))
    try:
        live = from_xml(defined.XMLDesc(0))
    finally:
        defined.undefine()
    assert live.cells == domain.cells and len(live.cells) == 2
    assert live.device_cells == domain.device_cells == (("0000:01:00.0", 0), ("0000:01:10.1", 0))
    assert (live.numa_mode, live.numa_nodeset, live.topology) == (
        domain.numa_mode,
        domain.numa_nodeset,
        domain.topology,
    )
    assert compare_definition("wide", domain, to_xml(live)) == []


def test_verify_names_a_cell_bound_elsewhere(server1_plan: Plan) -> None:
    domain = domain_from_plan(server1_plan.vm("wide"))
    moved = to_xml(domain).replace(
        '<memnode cellid="1" mode="strict" nodeset="1"/>', '<memnode cellid="1" mode="strict" nodeset="0"/>'
    )
    drift = compare_definition("wide", domain, moved)
    assert len(drift) == 1 and drift[0].startswith("wide guest NUMA cells is ")


# --- the EPYC-like tree: a VM over four nodes, applied -------------------------------------------------


def test_epyc_four_node_vm(epyc: HostTopology, epyc_plan: Plan) -> None:
    upf = epyc_plan.vm("upf")
    assert len(set(upf.numa_nodes)) == 4 and {1, 5} <= set(upf.numa_nodes)  # the nodes of its two VFs' PFs
    check_cells(epyc, upf)
    t = upf.guest_topology
    assert (t.sockets, t.cores, t.threads) == (4, 2, 2)
    vfs = {d.interface: upf.cell_of_node(d.numa_node) for d in upf.devices}
    assert vfs == {"ens1f0": upf.numa_nodes.index(1), "ens2f0": upf.numa_nodes.index(5)}
    assert sorted((h.node, h.size_kib, h.pages) for h in epyc_plan.host.hugepages) == sorted(
        (node, 1048576, 8) for node in upf.numa_nodes
    )
    # each share keeps to one L3 domain of its node, so does the one-node VM: no split at all
    assert len(upf.l3_domains) == 4 and len(epyc_plan.vm("du").l3_domains) == 1
    assert not any("L3" in w for w in epyc_plan.warnings)
    check_plan(epyc, load_spec(EPYC_SPEC), epyc_plan)


def test_epyc_apply_defines_the_cells_and_verify_finds_no_drift(
    test_driver: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apply on the tree and the test:/// driver; the tree has no kernel, so the test plays its
    part: once sriov_numvfs is written, the VF appears (treebuilder.add_vfs). The XML bmslice
    defines, with the VF addresses the kernel chose, is the golden file."""
    import bmslice.apply.lock as lock
    from bmslice.apply.applier import ApplyOptions, apply
    from bmslice.apply.sriov import resolve_vf_addresses
    from bmslice.verify.verifier import verify

    monkeypatch.setattr(lock, "LOCK_DIR", tmp_path / "locks")
    host = epyc_host()
    tree = write_tree(host, tmp_path / "host")
    made: list[str] = []

    def kernel(_line: str) -> None:
        nonlocal host
        for group, address in enumerate(E810.values(), start=70):
            numvfs = tree / f"sys/bus/pci/devices/{address}/sriov_numvfs"
            if numvfs.read_text() == "1\n" and not (numvfs.parent / "virtfn0").exists():
                host = add_vfs(tree, host, address, 1, first_group=group)
                made.append(address)

    the_spec = load_spec(EPYC_SPEC)
    plan = make_plan(read_host_tree(tree), the_spec, str(EPYC_SPEC))
    mounts = tree / "proc/mounts"  # host-apply's 1 GiB hugetlbfs, mounted at boot
    existing = mounts.read_text() if mounts.exists() else ""
    mounts.write_text(existing + "hugetlbfs /dev/hugepages1G hugetlbfs rw,relatime,pagesize=1024M 0 0\n")
    apply(the_spec, str(EPYC_SPEC), ApplyOptions("test:///default", host_root=tree), kernel)
    try:
        assert sorted(made) == sorted(E810.values())
        upf = resolve_vf_addresses(tree, plan.vm("upf"))
        desired = domain_from_plan(upf)
        xml = to_xml(desired)
        assert_golden("multinode/epyc1/upf.xml", xml)
        assert schema_errors(xml) is None
        live_xml = test_driver.lookupByName("upf").XMLDesc(0)
        live = from_xml(live_xml)
        assert live.cells == desired.cells and [c.host_node for c in live.cells] == list(upf.numa_nodes)
        vf_cells = {address: cell for address, cell in live.device_cells}
        assert sorted(vf_cells.values()) == sorted(upf.numa_nodes.index(n) for n in (1, 5))
        assert live.device_cells == desired.device_cells and len(live.device_cells) == 2
        assert (live.numa_nodeset, live.topology) == (desired.numa_nodeset, desired.topology)
        assert compare_definition("upf", desired, live_xml) == []
        # The test driver's own host has CPUs 0-7: it reports no pin to the EPYC's higher CPUs
        # (pins are verified on small trees in test_lifecycle.py). Everything else must agree.
        report = verify(the_spec, str(EPYC_SPEC), "test:///default", tree)
        assert [s.state for s in report.slices] == ["running", "running"]
        assert [line for line in report.drift if " pinned to " not in line] == []
        # Re-planning with the slice running keeps it exactly, from the plan its domain records.
        recorded = vm_from_dict(json.loads(live.plan_json or "{}"))
        assert recorded.cells == upf.cells and recorded.devices == upf.devices
        data = yaml.safe_load(EPYC_SPEC.read_text())
        data["vms"].append({"name": "late", "vcpus": 8, "memory": "8GiB", "numa_nodes": 2})
        again = make_plan(read_host_tree(tree), spec_from_data(data, "t"), "t", keep=[recorded])
        # (its record still carries the plan-time note that its VF addresses came at apply time)
        assert again.vm("upf") == replace(recorded, warnings=())
        assert again.vm("late").owned_cpus.isdisjoint(recorded.owned_cpus)
    finally:
        for name in ("upf", "du"):
            dom = test_driver.lookupByName(name)
            dom.destroy()
            dom.undefine()


# --- stability ---------------------------------------------------------------------------------------


def test_replanning_keeps_a_running_vm_over_several_nodes_exactly(server1: HostTopology, server1_plan: Plan) -> None:
    wide = server1_plan.vm("wide")
    recorded = vm_from_dict(plan_to_dict(server1_plan)["vms"][0])
    assert recorded == wide and len(recorded.cells) == 2
    metadata = domain_from_plan(wide).plan_json  # what the domain carries
    assert metadata is not None and vm_from_dict(json.loads(metadata)) == wide
    data = yaml.safe_load(SERVER1_SPEC.read_text())
    data["vms"][1]["vcpus"] = 2  # narrow did not run: planned afresh, around wide
    data["vms"].append({"name": "late", "vcpus": 2, "memory": "1GiB", "numa_node": 0})
    again = make_plan(server1, spec_from_data(data, "t"), "t", keep=[recorded])
    assert again.vm("wide") == wide
    assert again.vm("late").owned_cpus.isdisjoint(wide.owned_cpus)
    assert again.host.hugepages == server1_plan.host.hugepages  # wide's pages stay counted per node
    # its 4 GiB on each node count as taken: a one-node VM cannot have more than the rest
    too_big = {"name": "late", "vcpus": 2, "memory": "27GiB", "numa_node": 1}
    with pytest.raises(PlanError, match="late needs 27648 MiB on NUMA node 1, only 26624 MiB are free"):
        make_plan(server1, spec_from_data({**data, "vms": [data["vms"][0], too_big]}, "t"), "t", keep=[recorded])


def test_a_running_slice_asked_to_span_another_number_of_nodes_must_move(
    server1: HostTopology, server1_plan: Plan
) -> None:
    """Its guest cells are fixed when it is defined: the spec's new numa_nodes is never ignored."""
    data = yaml.safe_load(SERVER1_SPEC.read_text())
    data["vms"][1]["numa_nodes"] = 2  # narrow runs on node 1 alone
    with pytest.raises(PlanError) as info:
        make_plan(server1, spec_from_data(data, "t"), "t", keep=[server1_plan.vm("narrow")])
    assert str(info.value) == (
        "narrow already runs on CPUs 7,9,11,19,21,23 and the spec changes numa_nodes 1 -> 2; "
        "moving a running slice needs --allow-move"
    )


# --- refusals, one line each, naming the field --------------------------------------------------------


@pytest.mark.parametrize(
    ("vm", "needle"),
    [
        (
            {"vcpus": 4, "memory": "4GiB", "numa_nodes": 2, "numa_node": 0},
            "spec.yaml: vms[0]: numa_node pins a VM to one node; with numa_nodes: 2 leave numa_node out",
        ),
        (
            {"vcpus": 7, "memory": "4GiB", "numa_nodes": 2},
            "spec.yaml: vms[0]: numa_nodes: 2 needs vcpus divisible by 2 (an equal share per node), got 7",
        ),
        (
            {"vcpus": 6, "memory": "1000MiB", "numa_nodes": 3},
            "spec.yaml: vms[0]: numa_nodes: 3 needs memory that splits into 3 equal shares of whole MiB",
        ),
        (
            {"vcpus": 4, "memory": "3GiB", "numa_nodes": 2, "hugepages": "1G"},
            "spec.yaml: vms[0]: numa_nodes: 2 needs memory that splits into 2 equal shares of whole 1048576 KiB "
            "hugepages (an equal share per node), got 3072 MiB",
        ),
        ({"vcpus": 4, "memory": "4GiB", "numa_nodes": 9}, "vms[0].numa_nodes: Expected `int` <= 8"),
        (
            {"vcpus": 4, "memory": "4GiB", "numa_nodes": 0},
            "vms[0].numa_nodes: Expected `int` >= 1",
        ),
        ({"vcpus": 4, "memory": "4GiB", "numa_nodes": True}, "vms[0].numa_nodes: Expected `int"),
    ],
)
def test_spec_refusals(vm: dict[str, Any], needle: str) -> None:
    with pytest.raises(SpecError) as info:
        spec([{"name": "w", **vm}])
    assert needle in str(info.value) and "\n" not in str(info.value)


def refusal(topo: HostTopology, the_spec: Spec) -> str:
    with pytest.raises(PlanError) as info:
        make_plan(topo, the_spec, "spec.yaml")
    text = str(info.value)
    assert "\n" not in text
    return text


def test_more_nodes_than_the_host_has_is_refused(server1: HostTopology) -> None:
    text = refusal(server1, spec([{"name": "w", "vcpus": 6, "memory": "6GiB", "numa_nodes": 3}]))
    assert text == "spec.yaml: vms[0].numa_nodes: w asks for 3 NUMA nodes, the host has 2 with CPUs (0, 1)"


def test_a_vm_too_big_for_one_node_gets_the_hint(server1: HostTopology) -> None:
    text = refusal(server1, spec([{"name": "big", "vcpus": 16, "memory": "8GiB"}]))
    assert text.startswith("big needs 9 whole cores on one NUMA node")
    assert text.endswith("; numa_nodes: 2 (or more) lets a VM span NUMA nodes")
    plan = make_plan(server1, spec([{"name": "big", "vcpus": 16, "memory": "8GiB", "numa_nodes": 2}]), "spec.yaml")
    assert plan.vm("big").numa_nodes == (0, 1)  # what the hint says works
    memory = refusal(server1, spec([{"name": "big", "vcpus": 2, "memory": "40GiB"}]))
    assert memory.endswith("; numa_nodes: 2 (or more) lets a VM span NUMA nodes")


def test_require_refuses_a_nic_on_a_node_no_share_can_use(epyc: HostTopology) -> None:
    """ens1f0 sits on node 1, which the pinned VM fills: no 2 nodes with room for w's shares
    include node 1. Under prefer the same spec plans, with the NIC cross-NUMA."""
    vms = [
        {"name": "filler", "vcpus": 12, "memory": "8GiB", "numa_node": 1},
        {"name": "w", "vcpus": 4, "memory": "4GiB", "numa_nodes": 2, "nics": [{"sriov": {"pf": "ens1f0"}}]},
    ]
    text = refusal(epyc, spec(vms, nic_numa_policy="require"))
    assert text == (
        "w: nic_numa_policy is require and its NICs are on NUMA node(s) 1, but no 2 nodes with room for its "
        "shares hold them all"
    )
    plan = make_plan(epyc, spec(vms), "spec.yaml")
    assert 1 not in plan.vm("w").numa_nodes
    assert any("(cross-NUMA)" in w for w in plan.vm("w").warnings)


def _two_node_vm_with_nic_on_5(strict: bool) -> tuple[list[placement.Request], list[NodeFree]]:
    """A VM over 2 of 8 like nodes whose NIC is on node 5, its candidates in id order."""
    nodes = [NodeFree(n, 4, 0, 8192) for n in range(8)]
    parts = [
        placement.Request(
            f"w#{part}",
            Load(0, 2, 2048),
            tuple(range(8)),
            (0,) * 8,
            group="w",
            part=part,
            parts=2,
            local_sets=(frozenset({5}),),
            strict=strict,
        )
        for part in range(2)
    ]
    return parts, nodes


@pytest.mark.parametrize("strict", [False, True])
def test_cp_sat_finds_the_fewest_remote_nics_when_the_cost_search_runs_out(
    strict: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no steps for the search for the fewest remote NICs, CP-SAT answers it: prefer and
    require both get a layout that holds node 5, proven the fewest."""
    monkeypatch.setattr(placement, "COST_STEP_LIMIT", 0)
    parts, nodes = _two_node_vm_with_nic_on_5(strict)
    found = placement.place(parts, nodes)
    assert found is not None
    assert 5 in {found.nodes["w#0"], found.nodes["w#1"]} and found.numa_optimal


@pytest.mark.parametrize("strict", [False, True])
def test_require_stays_exact_when_every_budget_runs_out(strict: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no budget at all for the fewest remote NICs (no steps, no CP-SAT time), prefer keeps
    the first layout found (nodes 0 and 1, the NIC remote, and says so); require must still find
    one that holds node 5."""
    monkeypatch.setattr(placement, "COST_STEP_LIMIT", 0)
    monkeypatch.setattr(placement, "SAT_TIME_LIMIT", 0.0)
    parts, nodes = _two_node_vm_with_nic_on_5(strict)
    found = placement.place(parts, nodes)
    assert found is not None
    chosen = {found.nodes["w#0"], found.nodes["w#1"]}
    if strict:
        assert 5 in chosen and found.numa_optimal
    else:
        assert chosen == {0, 1} and not found.numa_optimal


# --- the picture and the report -----------------------------------------------------------------------


def test_server1_picture_golden(server1: HostTopology, server1_plan: Plan) -> None:
    svg = render_svg(server1, server1_plan).decode()
    assert_golden("picture/server1-multinode.svg", svg)
    root = etree.fromstring(svg.encode())
    titles = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}title")]
    # wide's vCPUs are drawn on both nodes
    assert any("wide" in t and "NUMA node 0" in t for t in titles)
    assert any("wide" in t and "NUMA node 1" in t for t in titles)


def test_report_names_the_nodes_and_guest_cells(server1: HostTopology, server1_plan: Plan) -> None:
    page = html.fromstring(render_report(server1, server1_plan))
    headings = [" ".join(h.text_content().split()) for h in page.iter("h3")]
    assert "A · wide (NUMA nodes 0,1 (2 guest cells))" in headings
    assert "B · narrow (NUMA node 1)" in headings
    row = next(tr for tr in page.iter("tr") if tr.findtext("td/span") == "wide" or "wide" in tr.text_content())
    assert "2 sockets × 2 cores × 2 threads" in row.text_content()
