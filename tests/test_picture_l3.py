"""The picture draws L3 cache domains: a box per L3 inside each NUMA node that has several,
labelled with its id, size and the ways slices hold there (SVG and terminal)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from lxml import etree
from rich.console import Console

from bmslice.cli.picture_view import picture_view
from bmslice.model.plan import Plan
from bmslice.model.spec import load_spec
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan
from bmslice.render.picture_map import picture_map
from bmslice.render.picture_svg import SVG_NS, render_svg
from bmslice.topology.sysfs import read_host_tree
from golden import assert_golden
from topologies import server1
from treebuilder import epyc_spec, write_tree

SPEC = Path(__file__).parent / "data" / "cache" / "epyc1-spec.yaml"


@pytest.fixture(scope="module")
def epyc(tmp_path_factory: pytest.TempPathFactory) -> tuple[HostTopology, Plan]:
    topo = read_host_tree(write_tree(epyc_spec(), tmp_path_factory.mktemp("epyc") / "host"))
    return topo, make_plan(topo, load_spec(SPEC), "epyc1-spec.yaml")


def test_map_groups_each_nodes_cores_by_l3(epyc: tuple[HostTopology, Plan]) -> None:
    topo, plan = epyc
    pic = picture_map(topo, plan)
    for node in pic.nodes:
        assert [cell.id for cell in node.l3] == [4 * node.id, 4 * node.id + 2]
        assert sorted(i for cell in node.l3 for i in cell.cores) == list(range(len(node.cores)))
        for cell in node.l3:
            domain = next(d for d in topo.l3_domains if d.id == cell.id)
            assert all(node.cores[i].cpus.issubset(domain.cpus) for i in cell.cores)
    node1 = next(n for n in pic.nodes if n.id == 1)
    assert node1.l3[1].label(pic) == "L3 6 · 32MiB · ways A 4"
    assert pic.vms[0].where == "node 1, L3 6"
    plain = picture_map(*_server1())
    assert all(node.l3 == () for node in plain.nodes)  # one L3 per node (or none known): no boxes


def _server1() -> tuple[HostTopology, Plan]:
    topo = server1()
    return topo, make_plan(topo, load_spec(Path(__file__).parents[1] / "examples/server1/spec.yaml"), "spec.yaml")


def test_svg_draws_a_box_per_l3_around_its_cores(epyc: tuple[HostTopology, Plan]) -> None:
    svg = render_svg(*epyc)
    assert_golden("picture/epyc1.svg", svg.decode())
    root = etree.fromstring(svg)
    ns = {"s": SVG_NS}
    node0 = root.find(".//s:g[@id='node-0']", ns)
    assert node0 is not None
    boxes = node0.findall("s:g[@class='l3']", ns)
    assert [b.get("id") for b in boxes] == ["l3-0", "l3-2"]
    topo, _ = epyc
    for box in boxes:
        rect = box.find("s:rect", ns)
        assert rect is not None
        x, y, w, h = (int(rect.get(k, "0")) for k in ("x", "y", "width", "height"))
        cache = next(d for d in topo.l3_domains if f"l3-{d.id}" == box.get("id"))
        for core in node0.findall("s:g[@class='core']", ns):
            first = int(core.get("id", "core-0").removeprefix("core-"))
            tile = core.find("s:rect", ns)
            assert tile is not None
            inside = x <= int(tile.get("x", "0")) < x + w and y <= int(tile.get("y", "0")) < y + h
            assert inside == (first in cache.cpus), f"core {first} and box {box.get('id')}"
    labels = [t.text for t in node0.iterfind(".//s:g[@class='l3']/s:text", ns)]
    assert labels == ["L3 0 · 32MiB · ways C 2", "L3 2 · 32MiB · ways B 6"]


def test_terminal_draws_an_l3_panel_per_domain(epyc: tuple[HostTopology, Plan]) -> None:
    console = Console(file=io.StringIO(), width=120, record=True, color_system=None)
    console.print(picture_view(*epyc, width=120))
    text = console.export_text()
    assert "╭─ L3 6 · 32MiB · ways A 4 " in text and "╭─ L3 20 · 32MiB · ways D 8 " in text
    assert "A = du1: 6 vCPUs on node 1, L3 6, emulator + IOThreads dedicated (12,76)" in text
    grid = "\n".join(line for line in text.splitlines() if line.startswith("│ │"))  # inside the L3 panels
    cells = re.findall(r"(\d+) (host\*?|[A-Z]+:(?:v\d+|emu|idle)|·|free)(?=\s|│)", grid)
    assert sorted(int(cpu) for cpu, _ in cells) == epyc[0].online_cpus.sorted()
