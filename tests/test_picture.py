"""The picture of a sliced server: golden SVGs, what every picture must show, the HTML report in a
real headless Chromium, the terminal grid and `bmslice show`.

BMSLICE_REGEN_GOLDEN=1 also rewrites docs/picture.md's terminal view and the screenshot
docs/images/server1-report.png.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from lxml import etree, html
from rich.console import Console

from bmslice.cli import show_cmd
from bmslice.cli.picture_view import picture_view
from bmslice.cpuset import CpuSet
from bmslice.model.plan import Plan
from bmslice.model.spec import load_spec, spec_from_data
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from bmslice.render.picture_map import Role, picture_map
from bmslice.render.picture_svg import SVG_NS, render_svg, vm_colour
from bmslice.render.report_html import render_report
from bmslice.topology.sysfs import read_host_tree
from golden import assert_golden
from topologies import nic, synthetic

REPO = Path(__file__).parents[1]
EXAMPLE = REPO / "examples" / "server1"
DOC = REPO / "docs" / "picture.md"
SCREENSHOT = REPO / "docs" / "images" / "server1-report.png"
NS = {"s": SVG_NS}
REGEN = os.environ.get("BMSLICE_REGEN_GOLDEN") == "1"

LARGE_SPEC = {
    "vms": [
        {"name": "db", "vcpus": 28, "memory": "16GiB", "numa_node": 1, "nics": [{"passthrough": "ens1f0"}]},
        # its NIC is on node 1: drawn there with a cross-NUMA warning
        {"name": "web-1", "vcpus": 12, "memory": "8GiB", "numa_node": 2, "nics": [{"passthrough": "ens1f1"}]},
        {"name": "web-2", "vcpus": 12, "memory": "8GiB"},
        # odd vCPU count (an idle sibling) and emulator threads on the host CPUs
        {"name": "cache", "vcpus": 7, "memory": "8GiB", "emulator": "host"},
        {"name": "analytics", "vcpus": 24, "memory": "16GiB", "nics": [{"passthrough": "ens2f0"}]},
        {"name": "batch", "vcpus": 20, "memory": "16GiB", "numa_node": 6, "nics": [{"passthrough": "ens3f0"}]},
    ]
}


def large_topology() -> HostTopology:
    """2 sockets x 64 cores x 2 threads, 4 NUMA nodes per socket: 256 CPUs."""
    nics = (
        nic("0000:01:00.0", "eno1", 0, 10),
        nic("0000:41:00.0", "ens1f0", 1, 20),
        nic("0000:41:00.1", "ens1f1", 1, 21),
        nic("0000:81:00.0", "ens2f0", 4, 30),
        nic("0000:c1:00.0", "ens3f0", 6, 40),
        nic("0000:c1:00.1", "ens3f1", 6, 41),
    )
    return synthetic(sockets=2, cores=64, threads=2, nodes_per_socket=4, nics=nics, default_route="eno1")


@pytest.fixture(scope="module")
def server1() -> tuple[HostTopology, Plan]:
    topo = read_host_tree(EXAMPLE / "host")
    return topo, make_plan(topo, load_spec(EXAMPLE / "spec.yaml"), origin="spec.yaml")


@pytest.fixture(scope="module")
def large() -> tuple[HostTopology, Plan]:
    topo = large_topology()
    return topo, make_plan(topo, spec_from_data(LARGE_SPEC, "large"), origin="large")


CASES = ["server1", "large"]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[HostTopology, Plan]:
    fixture: tuple[HostTopology, Plan] = request.getfixturevalue(request.param)
    return fixture


def _svg(topo: HostTopology, plan: Plan) -> etree._Element:
    return etree.fromstring(render_svg(topo, plan))


def _thread_labels(root: etree._Element) -> list[str]:
    return [t.text or "" for t in root.iterfind(".//s:g[@class='cpu']/s:text", NS)]


# --- golden files --------------------------------------------------------------------------------


def test_server1_golden(server1: tuple[HostTopology, Plan]) -> None:
    assert_golden("picture/server1.svg", render_svg(*server1).decode())


def test_large_golden(large: tuple[HostTopology, Plan]) -> None:
    topo, plan = large
    assert len(topo.online_cpus) == 256 and len(topo.numa_nodes) == 8
    assert_golden("picture/large-8numa.svg", render_svg(topo, plan).decode())


# --- what every picture shows ------------------------------------------------------------------


def test_every_online_cpu_is_labelled_exactly_once(case: tuple[HostTopology, Plan]) -> None:
    topo, plan = case
    numbers = [int(label.split(" ")[0]) for label in _thread_labels(_svg(topo, plan))]
    assert sorted(numbers) == topo.online_cpus.sorted()


def test_vcpu_labels_name_the_guest_vcpu(case: tuple[HostTopology, Plan]) -> None:
    topo, plan = case
    labels = set(_thread_labels(_svg(topo, plan)))
    for vm in plan.vms:
        for i, cpu in enumerate(vm.vcpu_pins):
            assert f"{cpu} · v{i}" in labels
        for cpu in vm.emulator_cpus - plan.host.reserved_cpus:
            assert f"{cpu} · emu" in labels


def test_server1_shows_the_note_layout(server1: tuple[HostTopology, Plan]) -> None:
    labels = _thread_labels(_svg(*server1))
    for label in ("4 · v0", "16 · v1", "22 · v7", "2 · emu", "14 · emu", "0 · host", "13 · host", "5 · v0"):
        assert label in labels


def test_each_vm_colour_is_in_the_legend_and_on_its_cpus(case: tuple[HostTopology, Plan]) -> None:
    topo, plan = case
    root = _svg(topo, plan)
    legend = root.find(".//s:g[@id='legend']", NS)
    assert legend is not None
    legend_fills = {r.get("fill") for r in legend.iterfind(".//s:rect", NS)}
    for i, vm in enumerate(plan.vms):
        colour = vm_colour(i)
        assert colour in legend_fills, vm.name
        entry = legend.find(f".//s:g[@id='legend-vm-{i}']", NS)
        assert entry is not None and vm.name in "".join(entry.itertext())
        rect = root.find(f".//s:g[@id='cpu-{vm.vcpu_pins[0]}']/s:rect", NS)
        assert rect is not None and rect.get("fill") == colour


def test_vm_colours_are_distinct_for_up_to_nine_vms() -> None:
    assert len({vm_colour(i) for i in range(9)}) == 9


def test_nics_are_drawn_on_their_node_with_owner_and_warning(server1: tuple[HostTopology, Plan]) -> None:
    root = _svg(*server1)
    node0 = root.find(".//s:g[@id='node-0']", NS)
    assert node0 is not None
    eno = {g.get("id"): " ".join(g.itertext()) for g in node0.iterfind(".//s:g[@class='nic']", NS)}
    assert set(eno) == {"nic-0000-01-00-0", "nic-0000-01-00-1", "nic-0000-08-00-0", "nic-0000-08-00-1"}
    assert "Red_k8s_cluster_worker1" in eno["nic-0000-01-00-0"]
    assert "mgmt/default route" in eno["nic-0000-08-00-0"]
    assert "cross-NUMA" in eno["nic-0000-01-00-1"] and "Blue_k8s_cluster_worker1" in eno["nic-0000-01-00-1"]
    cross = node0.find(".//s:g[@id='nic-0000-01-00-1']/s:g[@class='warning-marker']", NS)
    assert cross is not None
    assert node0.find(".//s:g[@id='nic-0000-01-00-0']/s:g[@class='warning-marker']", NS) is None
    warnings = " ".join(root.find(".//s:g[@id='warnings']", NS).itertext())  # type: ignore[union-attr]
    assert "0000:01:00.1 (eno2) is on NUMA node 0" in warnings


def test_sriov_vfs_are_counted_on_their_pf_with_their_vms() -> None:
    """The design note's third VM: Blue and Green each get a VF of eno2 (on node 0; Blue runs on node 1)."""
    topo = read_host_tree(EXAMPLE / "host")
    red = {"name": "Red", "vcpus": 6, "memory": "8GiB", "numa_node": 0, "nics": [{"passthrough": "eno1"}]}
    blue = {
        "name": "Blue",
        "vcpus": 6,
        "memory": "8GiB",
        "numa_node": 1,
        "nics": [{"sriov": {"pf": "eno2", "vlan": 200}}],
    }
    green = {"name": "Green", "vcpus": 2, "memory": "4GiB", "emulator": "host", "nics": [{"sriov": {"pf": "eno2"}}]}
    plan = make_plan(topo, spec_from_data({"vms": [red, blue, green]}, "t"), origin="t")
    root = _svg(topo, plan)
    eno2 = root.find(".//s:g[@id='node-0']//s:g[@id='nic-0000-01-00-1']", NS)
    assert eno2 is not None
    text = [t.text for t in eno2.iterfind("s:text", NS)]
    assert text == ["eno2  0000:01:00.1", "host", "SR-IOV VFs 0→2/63: B×1, C×1", "cross-NUMA: B on node 1"]
    assert [r.get("fill") for r in eno2.iterfind("s:rect[@class='vf-user']", NS)] == [vm_colour(1), vm_colour(2)]
    assert eno2.find("s:g[@class='warning-marker']", NS) is not None
    legend = " ".join(root.find(".//s:g[@id='legend']", NS).itertext())  # type: ignore[union-attr]
    assert "eno2 VF0 vlan 200" in legend and "eno2 VF1" in legend
    # Green's emulator threads float on the host CPUs of node 0: drawn there as a stripe in Green's colour
    host_cpu = root.find(".//s:g[@id='cpu-0']", NS)
    assert host_cpu is not None and "emulator threads of Green" in (host_cpu.findtext("s:title", namespaces=NS) or "")
    assert any(r.get("stroke") == vm_colour(2) for r in host_cpu.iterfind("s:rect", NS))


def test_large_picture_wraps_instead_of_growing_wide(large: tuple[HostTopology, Plan]) -> None:
    root = _svg(*large)
    width, height = int(root.get("width") or 0), int(root.get("height") or 0)
    assert width <= 1600 and height <= 1600, (width, height)
    assert root.find(".//s:g[@id='cpu-139']/s:text", NS).text == "139 · idle"  # type: ignore[union-attr]


def test_split_siblings_are_marked_and_listed() -> None:
    topo = synthetic(sockets=1, cores=4, threads=2)
    plan = make_plan(topo, spec_from_data({"vms": [{"name": "a", "vcpus": 2, "memory": "1GiB"}]}, "t"), origin="t")
    vm = plan.vms[0]
    # a VM that holds only one thread of a core (as a hand-edited or older plan could)
    half = dataclasses.replace(vm, vcpu_pins=(vm.vcpu_pins[0],), cores=(CpuSet.of(vm.vcpu_pins[0]),))
    plan = dataclasses.replace(plan, vms=(half,))
    pic = picture_map(topo, plan)
    assert any("split siblings" in w for w in pic.warnings)
    root = _svg(topo, plan)
    core = root.find(f".//s:g[@id='core-{vm.vcpu_pins[0]}']", NS)
    assert core is not None and core.find("s:g[@class='warning-marker']", NS) is not None


def test_render_is_deterministic_and_ignores_input_order(case: tuple[HostTopology, Plan]) -> None:
    topo, plan = case
    first = render_svg(topo, plan)
    assert render_svg(topo, plan) == first
    shuffled = dataclasses.replace(topo, cpus=tuple(reversed(topo.cpus)))
    assert render_svg(shuffled, plan) == first
    assert render_report(topo, plan, "spec") == render_report(topo, plan, "spec")


def test_roles_cover_every_thread(large: tuple[HostTopology, Plan]) -> None:
    pic = picture_map(*large)
    counts = {role: pic.count(role) for role in Role}
    assert sum(counts.values()) == 256
    assert counts[Role.SPARE] == 1 and counts[Role.VCPU] == 28 + 12 + 12 + 7 + 24 + 20


# --- HTML report ------------------------------------------------------------------------------------


def test_report_is_self_contained_with_the_plan_tables(server1: tuple[HostTopology, Plan]) -> None:
    topo, plan = server1
    data = render_report(topo, plan, "examples/server1/spec.yaml")
    assert data.startswith(b"<!DOCTYPE html>")
    doc = html.fromstring(data)
    assert doc.find(".//{*}svg") is not None or doc.find(".//svg") is not None
    for tag in ("script", "link", "img", "iframe", "object"):
        assert not doc.findall(f".//{tag}"), tag
    for el in doc.iter():
        for attr in ("src", "href"):
            value = el.get(attr)
            assert value is None or value.startswith("#"), (el.tag, attr, value)
    assert b"@import" not in data and b"url(http" not in data
    text = doc.text_content()
    assert "isolcpus=2-11,14-23" in text
    assert "Red_k8s_cluster_worker1" in text and "Blue_k8s_cluster_worker1" in text
    assert "cross-NUMA" in text
    pins = [[td.text_content() for td in tr.findall("td")] for tr in doc.findall(".//table[@class='pins']/tbody/tr")]
    assert ["vCPU 0", "4", "(4,16)"] in pins and ["emulator", "2,14", "dedicated"] in pins


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_report_renders_in_headless_chromium(server1: tuple[HostTopology, Plan], tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("BMSLICE_SKIP_CHROMIUM") == "1":
            pytest.skip("chromium not installed and BMSLICE_SKIP_CHROMIUM=1")
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (or set BMSLICE_SKIP_CHROMIUM=1)")
    from PIL import Image

    topo, plan = server1
    # the source as the docs command line gives it, not this checkout's absolute path
    topo = dataclasses.replace(topo, source="sysfs:examples/server1/host")
    report = tmp_path / "report.html"
    report.write_bytes(render_report(topo, plan, spec_name="examples/server1/spec.yaml"))
    png = tmp_path / "shot.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={png}",
        "--window-size=1400,1000",
        report.as_uri(),
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env, check=False)
    assert png.exists(), f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    data = png.read_bytes()
    assert _png_size(data) == (1400, 1000)
    with Image.open(png) as image:
        rgb = image.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50, "screenshot has almost no colours: blank page?"
        grey = rgb.convert("L").point(lambda v: 255 if v < 245 else 0)
        inked = grey.histogram()[255] / (1400 * 1000)
        assert inked > 0.05, f"only {inked:.1%} of the screenshot is not white"
        # the VMs' colours made it to the screen
        present = {colour for _, colour in colours}
        for i in range(len(plan.vms)):
            hexcolour = vm_colour(i)
            assert tuple(int(hexcolour[k : k + 2], 16) for k in (1, 3, 5)) in present
    if REGEN:
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, SCREENSHOT)


# --- terminal view and docs ----------------------------------------------------------------------------


def _terminal_text(topo: HostTopology, plan: Plan) -> str:
    console = Console(record=True, width=120, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(picture_view(topo, plan, console.width))
    text = console.export_text()
    console.file.close()
    return text


def test_terminal_view_shows_every_cpu_and_owner(case: tuple[HostTopology, Plan]) -> None:
    topo, plan = case
    text = _terminal_text(topo, plan)
    assert max(len(line) for line in text.splitlines()) <= 120
    grid = "\n".join(line for line in text.splitlines() if line.startswith("│") and "NIC " not in line)
    cells = re.findall(r"(\d+) (host\*?|[A-Z]+:(?:v\d+|emu|idle)|·|free)(?=\s|│)", grid)
    assert sorted(int(cpu) for cpu, _ in cells) == topo.online_cpus.sorted()
    for vm in plan.vms:
        assert vm.name in text


def test_terminal_view_of_server1(server1: tuple[HostTopology, Plan]) -> None:
    text = _terminal_text(*server1)
    assert " 4 A:v0 " in text and "14 A:emu" in text and " 5 B:v0 " in text
    assert_golden("picture/server1-terminal.txt", text)


def test_docs_show_the_current_terminal_view(server1: tuple[HostTopology, Plan]) -> None:
    text = _terminal_text(*server1)
    doc = DOC.read_text()
    begin, end = "<!-- terminal-view -->\n```text\n", "```\n<!-- /terminal-view -->"
    assert begin in doc and end in doc, f"{DOC} lost its terminal-view markers"
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    current = head + begin + text + end + tail
    if REGEN:
        DOC.write_text(current)
        doc = DOC.read_text()
    assert doc == current, f"{DOC} shows an old terminal view (BMSLICE_REGEN_GOLDEN=1 to update)"
    assert "images/server1-report.png" in doc and SCREENSHOT.exists()


# --- bmslice show ---------------------------------------------------------------------------------------

HOST_ARGS = [str(EXAMPLE / "spec.yaml"), "--host-root", str(EXAMPLE / "host")]


def test_show_writes_svg_and_html(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svg, report = tmp_path / "p.svg", tmp_path / "p.html"
    assert show_cmd.main(["show", *HOST_ARGS, "--svg", str(svg), "--html", str(report)]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(svg), str(report)]
    assert "warning: Blue_k8s_cluster_worker1" in err
    assert etree.fromstring(svg.read_bytes()).tag == f"{{{SVG_NS}}}svg"
    assert report.read_bytes().startswith(b"<!DOCTYPE html>")


def test_show_draws_the_terminal_view_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert show_cmd.main(["show", *HOST_ARGS]) == 0
    out = capsys.readouterr().out
    assert "NUMA node 0" in out and "A:v0" in out and "Red_k8s_cluster_worker1" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "missing.yaml", "--host-root", str(EXAMPLE / "host")], "error: missing.yaml: cannot read spec"),
        (["show", *HOST_ARGS, "--svg", "/nonexistent-dir/p.svg"], "error: --svg /nonexistent-dir: no such directory"),
        (["show", *HOST_ARGS, "--hwloc", "x.xml"], "error: bmslice show: argument --hwloc: not allowed with"),
    ],
)
def test_show_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = show_cmd.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
