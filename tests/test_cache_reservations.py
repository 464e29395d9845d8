"""L3 ways and memory bandwidth per slice, on host trees with /sys/fs/resctrl: way masks never
overlap, the host keeps its minimum, over-subscription is refused naming the domain, and
libvirt's own way of turning sizes into masks lands on the plan's masks."""

from __future__ import annotations

import doctest
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import bmslice.plan.cache_ways as cache_ways
from bmslice.errors import PlanError
from bmslice.model.plan import Plan, plan_from_dict, plan_to_dict
from bmslice.model.spec import Spec, load_spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from bmslice.render.artifacts import render_plan
from bmslice.render.domain_model import ResctrlTune, domain_from_plan
from bmslice.render.domain_xml import from_xml, to_xml
from bmslice.render.host_files import render_host_files
from bmslice.render.resctrl_files import DEFAULT_SCHEMATA, MOUNT_UNIT, SCHEMATA_SERVICE, dropin_path
from bmslice.topology.resctrl import machine_name, parse_schemata
from bmslice.topology.sysfs import read_host_tree
from golden import assert_golden
from schema import schema_errors
from treebuilder import GroupSpec, ResctrlSpec, epyc_spec, skx_snc_spec, write_tree

DATA = Path(__file__).parent / "data" / "cache"


@pytest.fixture(scope="module")
def epyc(tmp_path_factory: pytest.TempPathFactory) -> HostTopology:
    return read_host_tree(write_tree(epyc_spec(), tmp_path_factory.mktemp("epyc") / "host"))


@pytest.fixture(scope="module")
def skx(tmp_path_factory: pytest.TempPathFactory) -> HostTopology:
    return read_host_tree(write_tree(skx_snc_spec(), tmp_path_factory.mktemp("skx") / "host"))


def spec(vms: list[dict[str, Any]], **host: Any) -> Spec:
    return spec_from_data({"host": {"reserved_cores_per_node": 1, **host}, "vms": vms}, "cache.yaml")


def refusal(topo: HostTopology, the_spec: Spec, keep: tuple[Any, ...] = ()) -> str:
    with pytest.raises(PlanError) as info:
        make_plan(topo, the_spec, "cache.yaml", keep)
    text = str(info.value)
    assert "\n" not in text
    return text


def check_ways(topo: HostTopology, plan: Plan) -> None:
    """Every invariant of the reservations, independently of how the planner got there."""
    rc = topo.resctrl
    assert rc is not None and rc.l3 is not None
    full, min_bits = rc.l3.cbm_mask, rc.l3.min_cbm_bits
    host = dict(plan.host.l3_host_masks)
    by_domain: dict[int, list[tuple[str, int]]] = {}
    for vm in plan.vms:
        if vm.cache is None or not vm.cache.ways:
            continue
        vcpu_domains = sorted({d.id for cpu in vm.vcpu_pins if (d := topo.l3_of(cpu)) is not None})
        assert [w.cache_id for w in vm.cache.ways] == vcpu_domains, f"{vm.name}: ways on every vCPU L3, only there"
        for way in vm.cache.ways:
            mask = way.mask
            low = mask & -mask
            assert mask & (mask + low) == 0, f"{vm.name}: mask {mask:x} not contiguous"
            assert mask & ~full == 0 and way.ways >= min_bits
            size = next(d.size_kib for d in topo.l3_domains if d.id == way.cache_id)
            assert way.size_kib == way.ways * size // rc.l3.ways
            assert vm.cache.l3_kib is not None and way.size_kib >= vm.cache.l3_kib  # rounded up, never down
            by_domain.setdefault(way.cache_id, []).append((vm.name, mask))
    for cache_id, held in by_domain.items():
        used = 0
        for name, mask in held:
            assert used & mask == 0, f"{name}: ways {mask:x} on L3 {cache_id} overlap another slice's"
            used |= mask
        host_mask = host[cache_id]
        assert host_mask & used == 0, f"L3 {cache_id}: the host's {host_mask:x} overlaps the slices' {used:x}"
        assert host_mask.bit_count() >= min_bits and host_mask & (host_mask + 1) == 0  # contiguous from way 0


# --- the EPYC-like tree: golden XML ----------------------------------------------------------------


@pytest.fixture(scope="module")
def epyc_plan(epyc: HostTopology) -> Plan:
    return make_plan(epyc, load_spec(DATA / "epyc1-spec.yaml"), "epyc1-spec.yaml")


@pytest.mark.parametrize("name", ["du1.xml", "du2.xml", "cu1.xml", "upf.xml"])
def test_epyc_golden_xml_validates(epyc_plan: Plan, name: str) -> None:
    xml = render_plan(epyc_plan)[name]
    assert_golden(f"epyc1/{name}", xml)
    assert schema_errors(xml) is None


@pytest.mark.parametrize("name", ["du.xml", "ims.xml"])
def test_skx_golden_xml_with_memorytune_validates(skx: HostTopology, name: str) -> None:
    plan = make_plan(skx, load_spec(DATA / "skx1-spec.yaml"), "skx1-spec.yaml")
    check_ways(skx, plan)
    xml = render_plan(plan)[name]
    assert_golden(f"skx1/{name}", xml)
    assert schema_errors(xml) is None


def test_epyc_layout(epyc: HostTopology, epyc_plan: Plan) -> None:
    check_ways(epyc, epyc_plan)
    du1, du2, cu1, upf = (epyc_plan.vm(n) for n in ("du1", "du2", "cu1", "upf"))
    assert du1.numa_nodes == (1,) and du1.l3_domains == (6,)  # its NIC's node, one whole L3
    assert du1.cache is not None and [(w.cache_id, w.mask, w.size_kib) for w in du1.cache.ways] == [(6, 0xF000, 8192)]
    assert cu1.cache is not None and cu1.cache.ways[0].ways == 2 and cu1.cache.ways[0].size_kib == 4096  # 3 MiB: 2 ways
    assert du2.l3_domains != cu1.l3_domains or du2.numa_nodes != cu1.numa_nodes  # 4 + 2 cores: not one 3-core L3
    assert upf.l3_domains == (20, 22) and upf.cache is not None and len(upf.cache.ways) == 2  # ways on both
    assert dict(epyc_plan.host.l3_host_masks)[6] == 0x0FFF
    data = plan_to_dict(epyc_plan)
    assert data["host"]["l3_host_masks"]["6"] == "fff"
    assert data["vms"][0]["cache"]["ways"] == [{"cache_id": 6, "mask": "f000", "ways": 4, "size_kib": 8192}]
    assert plan_from_dict(data) == epyc_plan


def test_cachetune_round_trip_and_libvirt_formatting(epyc_plan: Plan) -> None:
    dom = domain_from_plan(epyc_plan.vm("upf"))
    assert dom.cachetunes == (ResctrlTune(dom.cachetunes[0].vcpus, ((20, 16384), (22, 16384))),)
    assert from_xml(to_xml(dom)) == dom
    # libvirt reformats sizes in the largest exact unit and adds the group id: the same reservation
    live = to_xml(dom).replace('size="16384" unit="KiB"', "size='16' unit='MiB'")
    live = live.replace('<cachetune vcpus="0-9">', "<cachetune vcpus='0-9' id='vcpus_0-9'>")
    assert from_xml(live).cachetunes == dom.cachetunes


def test_host_config_mounts_resctrl_and_narrows_the_host(epyc: HostTopology, epyc_plan: Plan) -> None:
    files = render_host_files(epyc_plan, epyc)
    assert_golden("epyc1/sys-fs-resctrl.mount", files[MOUNT_UNIT])
    assert_golden("epyc1/bmslice-resctrl.service", files[SCHEMATA_SERVICE])
    schemata = files[DEFAULT_SCHEMATA]
    assert schemata == "L3:0=3fff;2=3ff;6=fff;20=ff;22=ff\n"
    assert dict(parse_schemata(schemata)[0]) == dict(epyc_plan.host.l3_host_masks)
    assert "After=sys-fs-resctrl.mount bmslice-resctrl.service" in files[dropin_path("libvirtd.service")]
    plain = make_plan(epyc, spec([{"name": "a", "vcpus": 2, "memory": 1024}]), "t")
    assert not any("resctrl" in path for path in render_host_files(plain, epyc))


# --- libvirt's masks are the plan's ------------------------------------------------------------------


def libvirt_pick(free: int, ways: int, width: int) -> int:
    """libvirt's virResctrlAllocFindUnused, restated on a bit string: the first run of exactly
    `ways` free bits, else the first of the shortest longer runs; its lowest `ways` bits."""
    bits = "".join("1" if free >> i & 1 else "0" for i in range(width))
    runs = [(len(run), start) for start, run in _runs(bits) if len(run) >= ways]
    exact = [r for r in runs if r[0] == ways]
    _, start = exact[0] if exact else min(runs, key=lambda r: r[0])  # min keeps the first of equals
    return ((1 << ways) - 1) << start


def _runs(bits: str) -> list[tuple[int, str]]:
    out, i = [], 0
    while i < len(bits):
        if bits[i] == "1":
            j = i
            while j < len(bits) and bits[j] == "1":
                j += 1
            out.append((i, bits[i:j]))
            i = j
        else:
            i += 1
    return out


def libvirt_masks(
    plan: Plan, total: int, order: list[str], running: dict[int, int] | None = None
) -> dict[str, dict[int, int]]:
    """The masks libvirt writes when the default group holds the plan's host masks and the VMs of
    `order` start one after another (`running`: ways other groups already hold)."""
    taken = dict(plan.host.l3_host_masks)
    for cache_id, mask in (running or {}).items():
        taken[cache_id] = taken.get(cache_id, 0) | mask
    out: dict[str, dict[int, int]] = {}
    for name in order:
        vm = plan.vm(name)
        for way in vm.cache.ways if vm.cache is not None else ():
            free = ((1 << total) - 1) & ~taken.get(way.cache_id, 0)
            mask = libvirt_pick(free, way.ways, total)
            out.setdefault(name, {})[way.cache_id] = mask
            taken[way.cache_id] = taken.get(way.cache_id, 0) | mask
    return out


def test_libvirt_starting_the_slices_in_spec_order_writes_the_plans_masks(epyc_plan: Plan) -> None:
    order = [vm.name for vm in epyc_plan.vms]
    want = {vm.name: {w.cache_id: w.mask for w in vm.cache.ways} for vm in epyc_plan.vms if vm.cache}
    assert libvirt_masks(epyc_plan, 16, order) == want


def test_a_slice_restarted_alone_gets_its_ways_back(skx: HostTopology) -> None:
    """Four slices share L3 0; whichever restarts while the others run finds exactly its own ways free."""
    vms = [
        {"name": f"s{i}", "vcpus": 2, "memory": 1024, "numa_node": 0, "cache": {"l3": f"{2 + i}MiB"}} for i in range(4)
    ]
    plan = make_plan(skx, spec(vms), "t")
    check_ways(skx, plan)
    masks = {vm.name: vm.cache.ways[0].mask for vm in plan.vms if vm.cache}
    for name in masks:
        others = 0
        for other, mask in masks.items():
            if other != name:
                others |= mask
        assert libvirt_masks(plan, 11, [name], {0: others}) == {name: {0: masks[name]}}


# --- refusals --------------------------------------------------------------------------------------


def test_over_subscription_names_the_domain_and_what_is_left(skx: HostTopology) -> None:
    # SKX: 11 ways of 2560 KiB per socket L3; the host keeps 1: 10 for slices
    vms = [
        {"name": "a", "vcpus": 2, "memory": 1024, "numa_node": 0, "cache": {"l3": "15MiB"}},  # 6 ways
        {"name": "b", "vcpus": 2, "memory": 1024, "numa_node": 1, "cache": {"l3": "12MiB"}},  # 5 ways, same L3
    ]
    text = refusal(skx, spec(vms))
    assert text == (
        "cache.yaml: b: the slices on L3 cache 0 need 11 contiguous ways of 2560 KiB (a 6, b 5), "
        "only 10 are left: the host keeps at least 1"
    )
    vms[1]["numa_node"] = 2  # the other socket's L3: both fit
    check_ways(skx, make_plan(skx, spec(vms), "t"))


def test_ways_count_in_placement(epyc: HostTopology) -> None:
    """Two slices of 10 ways each fit one L3's cores but not its 15 ways: they get an L3 each."""
    vms = [
        {"name": n, "vcpus": 2, "memory": 1024, "numa_node": 0, "emulator": "host", "cache": {"l3": "20MiB"}}
        for n in "ab"
    ]
    plan = make_plan(epyc, spec(vms), "t")
    assert {plan.vm("a").l3_domains, plan.vm("b").l3_domains} == {(0,), (2,)}
    check_ways(epyc, plan)


@pytest.mark.parametrize(
    ("resctrl", "cache", "message"),
    [
        (None, {"l3": "4MiB"}, "a: cache.l3 needs resctrl (Intel RDT / AMD QoS), which sysfs:"),
        (ResctrlSpec(mounted=False), {"l3": "4MiB"}, "a: cache.l3 needs resctrl mounted: mount -t resctrl"),
        (ResctrlSpec(cdp=True), {"l3": "4MiB"}, "is mounted with cdp (L3CODE/L3DATA); bmslice reserves unified ways"),
        (ResctrlSpec(mb=None), {"memory_bandwidth": 40}, "has no memory bandwidth allocation (no info/MB)"),
        (
            ResctrlSpec(),
            {"memory_bandwidth": 35},
            "memory_bandwidth 35% is not one the host can set: a multiple of 10%",
        ),
        (
            ResctrlSpec(mount_options="rw,mba_MBps"),
            {"memory_bandwidth": 40},
            "is a percentage, but this host's MB takes absolute limits",
        ),
    ],
)
def test_no_way_to_meet_the_request_is_one_line(
    tmp_path: Path, resctrl: ResctrlSpec | None, cache: dict[str, Any], message: str
) -> None:
    topo = read_host_tree(write_tree(replace(skx_snc_spec(), resctrl=resctrl), tmp_path / "host"))
    text = refusal(topo, spec([{"name": "a", "vcpus": 2, "memory": 1024, "cache": cache}]))
    assert message in text


def test_amd_bandwidth_percent_is_refused(epyc: HostTopology) -> None:
    text = refusal(epyc, spec([{"name": "a", "vcpus": 2, "memory": 1024, "cache": {"memory_bandwidth": 40}}]))
    assert "AMD: multiples of 1/8 GB/s" in text


def test_closids_run_out(tmp_path: Path) -> None:
    rs = ResctrlSpec(num_closids=4, mb=None, groups={"other": GroupSpec("L3:0=001;1=001\n")})
    topo = read_host_tree(write_tree(replace(skx_snc_spec(), resctrl=rs), tmp_path / "host"))
    vms = [{"name": n, "vcpus": 2, "memory": 1024, "cache": {"l3": "3MiB"}} for n in "abc"]
    text = refusal(topo, spec(vms))
    assert text == (
        "cache.yaml: c: no resctrl group left: the host gives 4 (CLOSIDs), the default group and 1 other "
        "group(s) (other) hold 2, and 3 slices ask for one (a, b, c)"
    )
    make_plan(topo, spec(vms[:2]), "t")


def test_bandwidth_caps_add_up_to_at_most_100_percent(skx: HostTopology) -> None:
    vms = [
        {"name": "a", "vcpus": 2, "memory": 1024, "numa_node": 0, "cache": {"memory_bandwidth": 60}},
        {"name": "b", "vcpus": 2, "memory": 1024, "numa_node": 1, "cache": {"memory_bandwidth": 50}},
    ]
    assert refusal(skx, spec(vms)) == (
        "cache.yaml: b: memory_bandwidth on L3 cache 0: the other slices there cap 60% (a 60%), only 40% is left"
    )
    vms[1]["cache"] = {"memory_bandwidth": 40, "l3": "5MiB"}
    plan = make_plan(skx, spec(vms), "t")
    b = domain_from_plan(plan.vm("b"))
    assert b.memorytunes == (ResctrlTune(b.memorytunes[0].vcpus, ((0, 40),)),)
    assert b.cachetunes[0].entries == ((0, 5120),)
    assert schema_errors(to_xml(b)) is None
    assert domain_from_plan(plan.vm("a")).cachetunes == ()  # bandwidth only: no <cachetune>
    assert plan.host.l3_host_masks == ((0, 0x1FF),)  # b's 2 ways on top


# --- running slices and other groups ---------------------------------------------------------------


def test_running_slices_keep_their_ways_and_new_ones_go_around(skx: HostTopology) -> None:
    first = make_plan(
        skx, spec([{"name": "a", "vcpus": 2, "memory": 1024, "numa_node": 0, "cache": {"l3": "5MiB"}}]), "t"
    )
    a_ways = first.vm("a").cache.ways  # type: ignore[union-attr]
    both = spec(
        [
            {"name": "a", "vcpus": 2, "memory": 1024, "numa_node": 0, "cache": {"l3": "5MiB"}},
            {"name": "b", "vcpus": 2, "memory": 1024, "numa_node": 1, "cache": {"l3": "10MiB"}},
        ]
    )
    plan = make_plan(skx, both, "t", first.vms)
    assert plan.vm("a") == first.vm("a")
    check_ways(skx, plan)
    assert plan.vm("b").cache.ways[0].mask == 0x1E0  # type: ignore[union-attr]  # 4 ways right below a's 0x600
    assert a_ways[0].mask == 0x600
    assert libvirt_masks(plan, 11, ["b"], {0: 0x600}) == {"b": {0: 0x1E0}}
    changed = spec([{"name": "a", "vcpus": 2, "memory": 1024, "numa_node": 0, "cache": {"l3": "8MiB"}}])
    assert "changes cache l3 5120KiB -> l3 8192KiB" in refusal(skx, changed, tuple(first.vms))


def test_other_groups_keep_their_ways(tmp_path: Path) -> None:
    groups = {
        "qemu-7-old-vcpus_0-1": GroupSpec("L3:0=7f0;1=7ff\n"),  # a libvirt group of a VM this plan does not know
        "batch": GroupSpec("L3:0=00c;1=7ff\n"),
    }
    topo = read_host_tree(
        write_tree(replace(skx_snc_spec(), resctrl=ResctrlSpec(mb=None, groups=groups)), tmp_path / "h")
    )
    vms = [{"name": "a", "vcpus": 2, "memory": 1024, "numa_node": 0, "cache": {"l3": "5MiB"}}]
    text = refusal(topo, spec(vms))
    assert "the host keeps at least 1, group batch 2, group qemu-7-old-vcpus_0-1 7 held already" in text
    assert "only 1 are left" in text
    vms[0]["cache"] = {"l3": "2MiB"}
    plan = make_plan(topo, spec(vms), "t")
    assert plan.vm("a").cache.ways[0].mask == 0x2  # type: ignore[union-attr]  # the one way nobody holds
    assert plan.host.l3_host_masks == ((0, 0x1),)


@pytest.mark.parametrize("seed", range(40))
def test_random_requests_never_overlap_or_are_refused_naming_the_domain(epyc: HostTopology, seed: int) -> None:
    rng = random.Random(seed)
    vms = []
    for k in range(rng.randint(2, 12)):
        vm: dict[str, Any] = {"name": f"v{k}", "vcpus": rng.choice([2, 4, 6, 8, 10]), "memory": 2048}
        if rng.random() < 0.7:
            vm["cache"] = {"l3": f"{rng.choice([1, 2, 4, 6, 8, 12, 16, 24])}MiB"}
        if rng.random() < 0.3:
            vm["numa_node"] = rng.randrange(8)
        vms.append(vm)
    try:
        plan = make_plan(epyc, spec(vms), "t")
    except PlanError as exc:
        text = str(exc)
        assert "\n" not in text
        without_cache = [{k: v for k, v in vm.items() if k != "cache"} for vm in vms]
        try:
            make_plan(epyc, spec(without_cache), "t")
        except PlanError:
            return  # the cores do not fit: not a cache refusal
        assert "on L3 cache" in text and "are left" in text, text
        return
    check_ways(epyc, plan)
    order = [vm.name for vm in plan.vms]
    assert libvirt_masks(plan, 16, order) == {
        vm.name: {w.cache_id: w.mask for w in vm.cache.ways} for vm in plan.vms if vm.cache
    }


def test_machine_names_follow_libvirt() -> None:
    assert machine_name(3, "Red_k8s_cluster_worker1") == "qemu-3-Redk8sclusterworker1"
    assert machine_name(1, "a" * 80) == "qemu-1-" + "a" * 57  # 64 characters in all
    assert machine_name(2, "x.-y") == "qemu-2-x.y"


def test_docstring_examples() -> None:
    import bmslice.render.resctrl_files
    import bmslice.topology.caches
    import bmslice.topology.resctrl

    for module in (cache_ways, bmslice.topology.resctrl, bmslice.topology.caches, bmslice.render.resctrl_files):
        assert doctest.testmod(module).failed == 0, module.__name__


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({}, "vms[0].cache: give l3, memory_bandwidth or both"),
        ({"l3": "8MiBB"}, "vms[0].cache.l3"),
        ({"l3": "0.5KiB"}, "must be a positive whole number of KiB"),
        ({"memory_bandwidth": 0}, "vms[0].cache.memory_bandwidth"),
        ({"memory_bandwidth": 101}, "vms[0].cache.memory_bandwidth"),
        ({"memory_bandwidth": True}, "vms[0].cache.memory_bandwidth"),
        ({"l3": "4MiB", "ways": 2}, "vms[0].cache.ways"),
    ],
)
def test_bad_cache_specs_are_one_line(cache: dict[str, Any], message: str) -> None:
    from bmslice.errors import SpecError

    with pytest.raises(SpecError) as info:
        spec([{"name": "a", "vcpus": 2, "memory": 1024, "cache": cache}])
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("cache.yaml: ")
