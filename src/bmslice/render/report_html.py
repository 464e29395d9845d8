"""A self-contained HTML report of a plan: the picture (inline SVG) and the plan's tables.

One file to attach to a change ticket: inline CSS, no scripts, no fonts, images or other
fetches. Pure and deterministic like the SVG (no clock), built as an lxml tree.
"""

from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

from bmslice.cpuset import CpuSet
from bmslice.model.plan import AT_APPLY, Plan, VmPlan
from bmslice.model.sizes import format_mib
from bmslice.model.topology import HostTopology
from bmslice.plan.room import MIX, Room
from bmslice.render.picture_map import node_text, picture_map, shape_label, vm_letter
from bmslice.render.picture_svg import plural, svg_element, vm_colour
from bmslice.safe_text import one_line

CSS = """
body { font-family: "DejaVu Sans", Verdana, Arial, sans-serif; color: #222; margin: 16px 24px; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
h2 { font-size: 16px; margin: 24px 0 8px 0; border-bottom: 1px solid #ccc; }
h3 { font-size: 14px; margin: 16px 0 6px 0; }
p.meta { color: #555; margin: 0 0 12px 0; }
figure { margin: 0; }
figure svg { max-width: 100%; height: auto; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 4px 0 8px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f4; }
td.num { text-align: right; }
code, pre { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 8px; white-space: pre-wrap; }
span.swatch { display: inline-block; width: 14px; height: 14px; margin-right: 6px; vertical-align: -2px;
  border-radius: 3px; }
ul.warnings li { margin: 2px 0; }
"""


def _el(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    node = etree.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        node.text = one_line(text)  # a file name or host name may hold bytes XML cannot carry
    return node


def _table(parent: etree._Element, head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> None:
    table = _el(parent, "table", class_=cls) if cls else _el(parent, "table")
    if head:
        tr = _el(_el(table, "thead"), "tr")
        for cell in head:
            _el(tr, "th", cell)
    body = _el(table, "tbody")
    for row in rows:
        tr = _el(body, "tr")
        for cell in row:
            _el(tr, "td", cell)


def _vm_cell(parent: etree._Element, index: int, name: str) -> None:
    _el(parent, "span", "", class_="swatch", style=f"background: {vm_colour(index)}")
    _el(parent, "span", f"{vm_letter(index)} · {name}")


def _vm_rows(plan: Plan) -> list[list[str]]:
    rows = []
    for vm in plan.vms:
        t = vm.guest_topology
        devices = ", ".join(f"{d.interface or '-'} {d.address or AT_APPLY} (node {d.numa_node})" for d in vm.devices)
        devices = devices or "none"
        rows.append(
            [
                vm.name,
                node_text(vm),
                str(vm.vcpus),
                f"{plural(t.sockets, 'socket')} × {t.cores} cores × {t.threads} threads",
                format_mib(vm.memory_mib) + (f" ({vm.hugepage_kib} KiB pages)" if vm.hugepage_kib else ""),
                f"{vm.emulator_cpus or '-'} ({vm.emulator_policy})",
                f"{vm.iothreads} on {vm.iothread_cpus}" if vm.iothreads else "none",
                devices,
            ]
        )
    return rows


def _nodes_text(vm: VmPlan) -> str:
    """ "NUMA node 1", or "NUMA nodes 0,1 (2 guest cells)" for a VM over several nodes."""
    if len(vm.numa_nodes) == 1:
        return f"NUMA node {vm.numa_nodes[0]}"
    return f"NUMA nodes {','.join(map(str, vm.numa_nodes))} ({len(vm.cells) or len(vm.numa_nodes)} guest cells)"


def _pin_rows(vm: VmPlan) -> list[list[str]]:
    rows = []
    for i, cpu in enumerate(vm.vcpu_pins):
        core = next((c for c in vm.cores if cpu in c), CpuSet.of(cpu))
        rows.append([f"vCPU {i}", str(cpu), f"({core})"])
    rows.append(["emulator", vm.emulator_cpus.format() or "-", vm.emulator_policy])
    if vm.iothreads:
        rows.append([f"IOThreads ×{vm.iothreads}", vm.iothread_cpus.format(), ""])
    return rows


def _room(body: etree._Element, room: Room, pic_labels: dict[str, str]) -> None:
    """Free room: per node what is left and what fits on it alone; per shape how many more fit."""
    _el(body, "h2", "Free room")
    _table(
        body,
        ("NUMA node", "free cores", "free memory", "more fit on it alone"),
        [
            [
                str(node.node),
                str(node.cores),
                format_mib(node.memory_mib) if node.memory_mib > 0 else "0MiB",
                ", ".join(f"{pic_labels.get(shape, shape)} {count}" for shape, count in node.fits) or "-",
            ]
            for node in room.nodes
        ],
        cls="room",
    )
    _table(
        body,
        ("shape", "more fit", "runs out first", "one more is refused"),
        [
            [
                "one of each VM" if r.shape == MIX else f"{pic_labels.get(r.shape, r.shape)} ({r.shape})",
                str(r.more),
                ", ".join(r.limits) or "-",
                r.refusal,
            ]
            for r in room.shapes
        ],
        cls="shapes",
    )


def render_report(topo: HostTopology, plan: Plan, spec_name: str = "", room: Room | None = None) -> bytes:
    """The HTML report as UTF-8 bytes (an HTML5 document); `room`: with the free room (bmslice capacity)."""
    pic = picture_map(topo, plan)
    host_name = topo.hostname or "host"
    html = etree.Element("html", lang="en")
    head = _el(html, "head")
    _el(head, "meta", charset="utf-8")
    _el(head, "title", f"bmslice: {host_name}" + (f" · {spec_name}" if spec_name else ""))
    _el(head, "style", CSS)
    body = _el(html, "body")
    _el(body, "h1", f"bmslice plan for {host_name}")
    meta = f"host read from {topo.source or 'unknown source'}" + (f"; spec {spec_name}" if spec_name else "")
    _el(body, "p", meta, class_="meta")
    figure = _el(body, "figure")
    figure.append(svg_element(topo, plan))

    _el(body, "h2", f"Warnings ({len(pic.warnings)})")
    if pic.warnings:
        ul = _el(body, "ul", class_="warnings")
        for warning in pic.warnings:
            _el(ul, "li", warning)
    else:
        _el(body, "p", "None.")

    _el(body, "h2", "VMs")
    table = _el(body, "table", class_="vms")
    tr = _el(_el(table, "thead"), "tr")
    for col in ("VM", "NUMA node", "vCPUs", "guest topology", "memory", "emulator", "IOThreads", "NICs"):
        _el(tr, "th", col)
    tbody = _el(table, "tbody")
    for index, row in enumerate(_vm_rows(plan)):
        tr = _el(tbody, "tr")
        _vm_cell(_el(tr, "td"), index, row[0])
        for cell in row[1:]:
            _el(tr, "td", cell)

    _el(body, "h2", "Host")
    host = plan.host
    _table(
        body,
        (),
        [
            ["reserved CPUs (host OS, IRQs)", host.reserved_cpus.format() or "-"],
            ["isolated CPUs", host.isolated_cpus.format() or "-"],
            ["reboot required", "yes" if host.reboot_required else "no"],
            ["missing kernel args", " ".join(host.missing_kernel_args) or "none"],
            [
                "hugepages",
                ", ".join(f"node {h.node}: {h.pages} × {h.size_kib} KiB" for h in host.hugepages) or "none",
            ],
        ],
    )
    _el(body, "h3", "Kernel args")
    _el(body, "pre", " ".join(host.kernel_args))

    if room is not None:
        _room(body, room, {shape.shape: shape_label(shape.shape, pic) for shape in room.shapes})

    _el(body, "h2", "Pins")
    for index, vm in enumerate(plan.vms):
        h3 = _el(body, "h3")
        _vm_cell(h3, index, f"{vm.name} ({_nodes_text(vm)})")
        _table(body, ("guest", "host CPU", "host core"), _pin_rows(vm), cls="pins")
    return etree.tostring(html, method="html", doctype="<!DOCTYPE html>", encoding="UTF-8", pretty_print=True)
