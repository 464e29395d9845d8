"""The sliced server as an SVG picture: sockets, NUMA nodes, cores, threads and NICs, coloured by owner.

Pure and deterministic: (topology, plan) -> the same bytes every time (no clock, ids from
plan order, integer coordinates), built as an lxml tree, never by pasting strings.

Layout: a machine holds socket boxes, a socket holds its NUMA node boxes, a node holds a
grid of core tiles (at most `CORES_PER_ROW` a row) and below them its NICs. Boxes flow left
to right and wrap at `MAX_WIDTH`, so a 2 x 64-core, 8-node server stays about as wide as
a screen. Each core tile stacks its hardware threads; each thread shows "CPU · owner"
("4 · v0" is guest vCPU 0 pinned to host CPU 4).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from lxml import etree

from bmslice.model.plan import Plan
from bmslice.model.sizes import format_mib
from bmslice.model.topology import HostTopology
from bmslice.render.picture_map import (
    CoreCell,
    Nic,
    NodeCell,
    PictureMap,
    Role,
    SocketCell,
    Thread,
    nic_notes,
    picture_map,
)
from bmslice.safe_text import one_line

SVG_NS = "http://www.w3.org/2000/svg"

# Paul Tol's "muted" scheme: distinguishable with the common colour-vision deficiencies.
VM_PALETTE = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933", "#AA4499")
HOST_COLOUR = "#6E6E6E"
ISOLATED_COLOUR = "#F0F0F0"
FREE_COLOUR = "#FFFFFF"
WARN_FILL = "#F0C020"
INK = "#222222"

MAX_WIDTH = 1480  # wrap sockets and nodes past this many pixels: two 8-core-wide nodes fit a row
CORES_PER_ROW = 8
FONT = 11  # thread labels
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
SANS = "DejaVu Sans, Verdana, Arial, sans-serif"

THREAD_H, CORE_PAD, GAP, BOX_PAD, HEADER_H = 22, 3, 6, 10, 26
L3_PAD, L3_HEAD = 6, 20  # an L3 domain's box: padding, and the height of its label line
MARGIN = 16

STYLE = f"""
text {{ font-family: {SANS}; fill: {INK}; }}
.thread {{ font-family: {MONO}; font-size: {FONT}px; }}
.halo {{ paint-order: stroke; stroke: #FFFFFF; stroke-width: 3px; stroke-linejoin: round; }}
.light {{ fill: #FFFFFF; }}
.title {{ font-size: 17px; font-weight: bold; }}
.box-head {{ font-size: 13px; font-weight: bold; }}
.small {{ font-size: {FONT}px; }}
.mono {{ font-family: {MONO}; font-size: {FONT}px; }}
.legend {{ font-size: 12px; }}
"""


def vm_colour(index: int) -> str:
    return VM_PALETTE[index % len(VM_PALETTE)]


def tint(colour: str, white: float = 0.6) -> str:
    """Mix `colour` with white.

    >>> tint("#000000", 0.5)
    '#808080'
    """
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * white):02X}" for c in rgb)


def is_dark(colour: str) -> bool:
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5


def text_width(text: str, size: int = FONT, mono: bool = True) -> int:
    """A generous estimate (DejaVu is wide): boxes are sized from it, so overflow is worse than slack."""
    return int(len(text) * size * (0.61 if mono else 0.58)) + 1


# --- the tree -------------------------------------------------------------------------------


class _Canvas:
    def __init__(self) -> None:
        # lxml-stubs type nsmap keys as str; None is lxml's documented key for the default namespace
        self.root = etree.Element(f"{{{SVG_NS}}}svg", nsmap={None: SVG_NS})  # type: ignore[dict-item]
        self.defs = etree.SubElement(self.root, f"{{{SVG_NS}}}defs")
        style = etree.SubElement(self.defs, f"{{{SVG_NS}}}style")
        style.text = STYLE

    @staticmethod
    def el(parent: etree._Element, tag: str, attrs: dict[str, object], text: str | None = None) -> etree._Element:
        node = etree.SubElement(parent, f"{{{SVG_NS}}}{tag}", {k: str(v) for k, v in attrs.items()})
        if text is not None:
            node.text = one_line(text)  # names read from a host or a spec: no control character reaches XML
        return node

    def group(self, parent: etree._Element, gid: str | None = None, cls: str | None = None) -> etree._Element:
        attrs: dict[str, object] = {}
        if gid:
            attrs["id"] = gid
        if cls:
            attrs["class"] = cls
        return self.el(parent, "g", attrs)

    def rect(
        self, parent: etree._Element, x: int, y: int, w: int, h: int, fill: str, **extra: object
    ) -> etree._Element:
        attrs: dict[str, object] = {"x": x, "y": y, "width": w, "height": h, "fill": fill}
        attrs.update({k.rstrip("_").replace("_", "-"): v for k, v in extra.items()})
        return self.el(parent, "rect", attrs)

    def text(self, parent: etree._Element, x: int, y: int, text: str, cls: str, **extra: object) -> etree._Element:
        attrs: dict[str, object] = {"x": x, "y": y, "class": cls}
        attrs.update({k.rstrip("_").replace("_", "-"): v for k, v in extra.items()})
        return self.el(parent, "text", attrs, text)

    def tooltip(self, parent: etree._Element, text: str) -> None:
        self.el(parent, "title", {}, text)

    def warning_marker(self, parent: etree._Element, x: int, y: int, size: int = 14) -> None:
        """A yellow triangle with "!" whose top-left corner is (x, y)."""
        g = self.group(parent, cls="warning-marker")
        half = size // 2
        points = f"{x + half},{y} {x + size},{y + size} {x},{y + size}"
        self.el(g, "polygon", {"points": points, "fill": WARN_FILL, "stroke": INK, "stroke-width": 1})
        self.text(g, x + half, y + size - 2, "!", "small", text_anchor="middle", font_weight="bold")

    def hatch(self, index: int, colour: str) -> str:
        """A pattern for a VM's emulator/IOThread CPUs: its colour, lighter, with diagonal stripes."""
        pid = f"emu-{index}"
        pattern = self.el(
            self.defs,
            "pattern",
            {
                "id": pid,
                "patternUnits": "userSpaceOnUse",
                "width": 8,
                "height": 8,
                "patternTransform": "rotate(45)",
            },
        )
        self.el(pattern, "rect", {"width": 8, "height": 8, "fill": tint(colour, 0.65)})
        self.el(pattern, "rect", {"width": 3, "height": 8, "fill": colour, "fill-opacity": "0.55"})
        return f"url(#{pid})"


# --- layout: sizes first, then absolute positions ------------------------------------------


@dataclass(frozen=True)
class _Placed:
    x: int
    y: int
    w: int
    h: int


def _flow(sizes: Sequence[tuple[int, int]], max_w: int, gap: int) -> tuple[list[tuple[int, int]], int, int]:
    """Place boxes left to right, wrapping at `max_w`: (positions, total width, total height)."""
    positions: list[tuple[int, int]] = []
    x = y = row_h = width = 0
    for w, h in sizes:
        if x and x + w > max_w:
            y += row_h + gap
            x = row_h = 0
        positions.append((x, y))
        x += w + gap
        row_h = max(row_h, h)
        width = max(width, x - gap)
    return positions, width, (y + row_h if sizes else 0)


def thread_width(pic: PictureMap) -> int:
    """Wide enough for the longest "CPU · owner" label (DejaVu Sans Mono advances 0.602 em)."""
    longest = max((len(t.label) for t in pic.threads), default=1)
    return max(56, math.ceil(longest * FONT * 0.602) + 8)


def _core_size(core: CoreCell, tw: int) -> tuple[int, int]:
    n = len(core.threads)
    return tw + 2 * CORE_PAD, n * THREAD_H + (n - 1) * 2 + 2 * CORE_PAD


def _nic_lines(nic: Nic, pic: PictureMap) -> list[str]:
    return [f"{nic.name}  {nic.address}", *nic_notes(nic, pic)]


def _nic_size(nic: Nic, pic: PictureMap) -> tuple[int, int]:
    lines = _nic_lines(nic, pic)
    w = max(text_width(line) for line in lines) + 32
    return max(w, 180), len(lines) * 15 + 10


@dataclass(frozen=True)
class _NodeLayout:
    node: NodeCell
    w: int
    h: int
    cores: list[_Placed]
    nics: list[_Placed]
    header: str
    l3: list[_Placed] = field(default_factory=list)  # one box per L3 domain (nodes with several)


def _grid(sizes: Sequence[tuple[int, int]], tw: int) -> tuple[list[tuple[int, int]], int, int]:
    """Core tiles in rows of at most CORES_PER_ROW: (positions, width, height)."""
    per_row = min(len(sizes), CORES_PER_ROW)
    grid_w = per_row * (tw + 2 * CORE_PAD + GAP) - GAP if per_row else 0
    return _flow(sizes, grid_w, GAP)


def _l3_grid(
    node: NodeCell, pic: PictureMap, sizes: Sequence[tuple[int, int]], tw: int
) -> tuple[list[tuple[int, int]], list[_Placed], int, int]:
    """Core positions inside one labelled box per L3 domain, the boxes flowing two to a row."""
    boxes: list[tuple[int, int]] = []
    inner: list[list[tuple[int, int]]] = []
    for l3 in node.l3:
        pos, w, h = _grid([sizes[i] for i in l3.cores], tw)
        inner.append(pos)
        boxes.append((max(w, text_width(l3.label(pic), FONT, mono=False)) + 2 * L3_PAD, L3_HEAD + h + L3_PAD))
    widest = max(w for w, _ in boxes)
    box_pos, total_w, total_h = _flow(boxes, 2 * widest + GAP, GAP)
    positions: list[tuple[int, int]] = [(0, 0)] * len(sizes)
    for l3, (bx, by), pos in zip(node.l3, box_pos, inner, strict=True):
        for i, (x, y) in zip(l3.cores, pos, strict=True):
            positions[i] = (bx + L3_PAD + x, by + L3_HEAD + y)
    placed = [_Placed(x, y, w, h) for (x, y), (w, h) in zip(box_pos, boxes, strict=True)]
    return positions, placed, total_w, total_h


def _node_layout(node: NodeCell, pic: PictureMap, tw: int) -> _NodeLayout:
    header = f"NUMA node {node.id}"
    cpus = sum(len(c.threads) for c in node.cores)
    details = f"{len(node.cores)} cores, {cpus} CPUs" if node.cores else "no CPUs"
    header += f" · {details} · {format_mib(node.memory_mib)}"
    if node.offline:
        header += f" · offline {node.offline}"
    core_sizes = [_core_size(c, tw) for c in node.cores]
    l3_boxes: list[_Placed] = []
    if node.l3:
        core_pos, l3_boxes, cores_w, cores_h = _l3_grid(node, pic, core_sizes, tw)
        grid_w = cores_w
    else:
        core_pos, cores_w, cores_h = _grid(core_sizes, tw)
        grid_w = cores_w
    nic_sizes = [_nic_size(n, pic) for n in node.nics]
    nic_pos, nics_w, nics_h = _flow(nic_sizes, max(grid_w, *(w for w, _ in nic_sizes), 0) if nic_sizes else 0, GAP)
    inner_w = max(cores_w, nics_w, text_width(header, 13, mono=False))
    top = HEADER_H
    cores = [_Placed(BOX_PAD + x, top + y, w, h) for (x, y), (w, h) in zip(core_pos, core_sizes, strict=True)]
    nic_top = top + cores_h + (GAP * 2 if cores_h else 0)
    nics = [_Placed(BOX_PAD + x, nic_top + y, w, h) for (x, y), (w, h) in zip(nic_pos, nic_sizes, strict=True)]
    height = nic_top + nics_h + BOX_PAD if nics else top + cores_h + BOX_PAD
    l3 = [_Placed(BOX_PAD + b.x, top + b.y, b.w, b.h) for b in l3_boxes]
    return _NodeLayout(node, inner_w + 2 * BOX_PAD, height, cores, nics, header, l3)


@dataclass(frozen=True)
class _GroupLayout:
    """A socket box (or the box of memory-only nodes / unplaced NICs) with its nodes placed."""

    gid: str
    header: str
    w: int
    h: int
    nodes: list[tuple[_Placed, _NodeLayout]]
    nics: list[tuple[_Placed, Nic]]


def _group_layout(
    gid: str, header: str, nodes: Sequence[NodeCell], nics: Sequence[Nic], pic: PictureMap, tw: int
) -> _GroupLayout:
    layouts = [_node_layout(n, pic, tw) for n in nodes]
    sizes = [(lay.w, lay.h) for lay in layouts] + [_nic_size(n, pic) for n in nics]
    pos, w, h = _flow(sizes, MAX_WIDTH - 2 * BOX_PAD, GAP * 2)
    placed = [_Placed(BOX_PAD + x, HEADER_H + y, sw, sh) for (x, y), (sw, sh) in zip(pos, sizes, strict=True)]
    inner_w = max(w, text_width(header, 13, mono=False))
    return _GroupLayout(
        gid,
        header,
        inner_w + 2 * BOX_PAD,
        HEADER_H + h + BOX_PAD,
        list(zip(placed[: len(layouts)], layouts, strict=True)),
        list(zip(placed[len(layouts) :], nics, strict=True)),
    )


# --- drawing ------------------------------------------------------------------------------------


class _Painter:
    def __init__(self, pic: PictureMap) -> None:
        self.pic = pic
        self.tw = thread_width(pic)
        self.c = _Canvas()
        self.fills = {vm.index: vm_colour(vm.index) for vm in pic.vms}
        self.hatches = {vm.index: self.c.hatch(vm.index, vm_colour(vm.index)) for vm in pic.vms}

    def thread_fill(self, t: Thread) -> tuple[str, str, str]:
        """(fill, stroke, text class) of one hardware thread."""
        if t.role is Role.VCPU and t.vm is not None:
            colour = self.fills[t.vm]
            return colour, colour, "thread light" if is_dark(colour) else "thread"
        if t.role is Role.EMULATOR and t.vm is not None:
            return self.hatches[t.vm], self.fills[t.vm], "thread halo"
        if t.role is Role.SPARE and t.vm is not None:
            return FREE_COLOUR, self.fills[t.vm], "thread"
        if t.role is Role.HOST:
            return HOST_COLOUR, HOST_COLOUR, "thread light"
        if t.role is Role.ISOLATED:
            return ISOLATED_COLOUR, "#BBBBBB", "thread"
        return FREE_COLOUR, "#BBBBBB", "thread"

    def describe(self, t: Thread, core: CoreCell, node: NodeCell) -> str:
        where = f"CPU {t.cpu} · core ({core.cpus}) · NUMA node {node.id}"
        vm = self.pic.vms[t.vm].name if t.vm is not None else ""
        what = {
            Role.VCPU: f"{vm} vCPU {t.vcpu}",
            Role.EMULATOR: f"{vm} emulator threads and IOThreads",
            Role.SPARE: f"owned by {vm}, idle (sibling of its vCPU)",
            Role.HOST: "host-reserved (host OS, IRQs)",
            Role.ISOLATED: "isolated, free for a later slice",
            Role.FREE: "free, not isolated",
        }[t.role]
        if t.shared_emulators:
            what += "; emulator threads of " + ", ".join(self.pic.vms[i].name for i in t.shared_emulators)
        return f"{where}: {what}"

    def core(self, parent: etree._Element, p: _Placed, core: CoreCell, node: NodeCell) -> None:
        g = self.c.group(parent, f"core-{core.cpus.min()}", "core")
        stroke: dict[str, object] = {"stroke": "#999999", "stroke_width": 1}
        if core.split:
            stroke = {"stroke": INK, "stroke_width": 2, "stroke_dasharray": "4 2"}
        self.c.rect(g, p.x, p.y, p.w, p.h, "#FAFAFA", rx=4, **stroke)
        for i, t in enumerate(core.threads):
            ty = p.y + CORE_PAD + i * (THREAD_H + 2)
            tg = self.c.group(g, f"cpu-{t.cpu}", "cpu")
            self.c.tooltip(tg, self.describe(t, core, node))
            fill, edge, cls = self.thread_fill(t)
            width = 2 if t.role is Role.SPARE else 1
            self.c.rect(tg, p.x + CORE_PAD, ty, self.tw, THREAD_H, fill, rx=3, stroke=edge, stroke_width=width)
            # VMs whose emulator threads float on this host CPU: a bar each along the bottom, below the label
            seg = (self.tw - 6) // max(1, len(t.shared_emulators))
            for k, vm in enumerate(t.shared_emulators):
                bx = p.x + CORE_PAD + 3 + k * seg
                self.c.rect(tg, bx, ty + THREAD_H - 5, seg, 3, self.fills[vm], stroke=self.fills[vm], stroke_width=0.5)
            self.c.text(tg, p.x + CORE_PAD + 4, ty + THREAD_H - 8, t.label, cls)
        if core.split:
            self.c.warning_marker(g, p.x + p.w - 9, p.y - 6, 12)

    def nic(self, parent: etree._Element, p: _Placed, nic: Nic) -> None:
        g = self.c.group(parent, "nic-" + nic.address.replace(":", "-").replace(".", "-"), "nic")
        owner = self.fills[nic.vm] if nic.vm is not None else HOST_COLOUR
        edge: dict[str, object] = {"stroke": owner, "stroke_width": 1.5}
        if nic.cross_numa:
            edge = {"stroke": INK, "stroke_width": 2, "stroke_dasharray": "5 3"}
        self.c.rect(g, p.x, p.y, p.w, p.h, "#FFFFFF", rx=4, **edge)
        stripe = owner if nic.vm is not None or nic.management else "#DDDDDD"
        self.c.rect(g, p.x + 2, p.y + 2, 12, p.h - 4, stripe, rx=2)
        # the VMs given VFs of this PF: one band of the stripe each, in their colours
        band = (p.h - 4) // max(1, len(nic.vf_users))
        for k, (vm, _) in enumerate(nic.vf_users):
            self.c.rect(g, p.x + 6, p.y + 2 + k * band, 8, band, self.fills[vm], class_="vf-user")
        if nic.management:
            self.c.text(g, p.x + 8, p.y + p.h // 2 + 4, "M", "small light", text_anchor="middle", font_weight="bold")
        for i, line in enumerate(_nic_lines(nic, self.pic)):
            weight = {"font_weight": "bold"} if i == 0 else {}
            self.c.text(g, p.x + 20, p.y + 17 + 15 * i, line, "mono", **weight)
        if nic.cross_numa:
            self.c.warning_marker(g, p.x + p.w - 20, p.y + 5)

    def node(self, parent: etree._Element, x: int, y: int, lay: _NodeLayout) -> None:
        g = self.c.group(parent, f"node-{lay.node.id}", "numa-node")
        self.c.rect(g, x, y, lay.w, lay.h, "#FFFFFF", rx=6, stroke="#555555", stroke_width=1.5)
        self.c.text(g, x + BOX_PAD, y + 18, lay.header, "box-head")
        for box, l3 in zip(lay.l3, lay.node.l3, strict=True):
            lg = self.c.group(g, f"l3-{l3.id}", "l3")
            self.c.rect(
                lg, x + box.x, y + box.y, box.w, box.h, "#F7F9FB", rx=5, stroke="#8899AA", stroke_dasharray="5 3"
            )
            self.c.text(lg, x + box.x + L3_PAD, y + box.y + L3_HEAD - 6, l3.label(self.pic), "small")
        for p, core in zip(lay.cores, lay.node.cores, strict=True):
            self.core(g, _Placed(x + p.x, y + p.y, p.w, p.h), core, lay.node)
        for p, nic in zip(lay.nics, lay.node.nics, strict=True):
            self.nic(g, _Placed(x + p.x, y + p.y, p.w, p.h), nic)

    def group_box(self, parent: etree._Element, x: int, y: int, lay: _GroupLayout) -> None:
        g = self.c.group(parent, lay.gid, "socket")
        self.c.rect(g, x, y, lay.w, lay.h, "#F4F6F8", rx=8, stroke="#333333", stroke_width=2)
        self.c.text(g, x + BOX_PAD, y + 18, lay.header, "box-head")
        for p, node in lay.nodes:
            self.node(g, x + p.x, y + p.y, node)
        for p, nic in lay.nics:
            self.nic(g, _Placed(x + p.x, y + p.y, p.w, p.h), nic)

    def general_entries(self) -> list[tuple[str, str, str]]:
        """(fill, stroke, text) of the owners that are not VMs."""
        pic = self.pic
        entries = [(HOST_COLOUR, HOST_COLOUR, f"host-reserved (host OS, IRQs): {pic.count(Role.HOST)}")]
        entries.append((ISOLATED_COLOUR, "#BBBBBB", f"isolated, free for later slices: {pic.count(Role.ISOLATED)}"))
        if pic.count(Role.FREE):
            entries.append((FREE_COLOUR, "#BBBBBB", f"free, not isolated: {pic.count(Role.FREE)}"))
        if pic.count(Role.SPARE):
            entries.append((FREE_COLOUR, INK, f"idle sibling in a VM's core: {pic.count(Role.SPARE)}"))
        return entries

    def vm_columns(self, index: int) -> tuple[str, str, str]:
        vm = self.pic.vms[index]
        where = "dedicated" if vm.emulator_policy == "dedicated" else "on host CPUs"
        return (
            f"{vm.letter} · {vm.name}: {vm.vcpus} vCPUs, {vm.where}",
            f"emulator + IOThreads ({where}): {vm.emulator_cpus or '-'}",
            "NICs: " + (", ".join(vm.nics) or "none"),
        )

    def legend(self, parent: etree._Element, x: int, y: int, max_w: int) -> int:
        g = self.c.group(parent, "legend")
        self.c.text(g, x, y + 14, "Legend", "box-head")
        entries = self.general_entries()
        nic_text, warn_text = "host NIC (M: management, default route)", "warning"
        texts = [text for _, _, text in entries] + [nic_text, warn_text]
        pos, _, h = _flow([(34 + text_width(t, 12, mono=False), 20) for t in texts], max_w, 16)
        top = y + 24
        for (fill, stroke, text), (px, py) in zip(entries, pos, strict=False):
            self._swatch(g, x + px, top + py, fill, stroke)
            self.c.text(g, x + px + 32, top + py + 13, text, "legend")
        mx, my = pos[-2]
        self._swatch(g, x + mx, top + my, "#FFFFFF", HOST_COLOUR)
        self.c.rect(g, x + mx + 2, top + my + 2, 10, 12, HOST_COLOUR, rx=2)
        self.c.text(g, x + mx + 32, top + my + 13, nic_text, "legend")
        wx, wy = pos[-1]
        self.c.warning_marker(g, x + wx + 6, top + wy + 1)
        self.c.text(g, x + wx + 32, top + wy + 13, warn_text, "legend")
        rows = [self.vm_columns(vm.index) for vm in self.pic.vms]
        widths = [max((text_width(r[i], 12, mono=False) for r in rows), default=0) + 54 for i in range(3)]
        vy = top + h + 10
        for vm, row in zip(self.pic.vms, rows, strict=True):
            vg = self.c.group(g, f"legend-vm-{vm.index}", "legend-vm")
            colour = self.fills[vm.index]
            self._swatch(vg, x, vy, colour, colour)
            self.c.text(vg, x + 32, vy + 13, row[0], "legend")
            self._swatch(vg, x + widths[0], vy, self.hatches[vm.index], colour)
            self.c.text(vg, x + widths[0] + 32, vy + 13, row[1], "legend")
            self.c.text(vg, x + widths[0] + widths[1], vy + 13, row[2], "legend")
            vy += 22
        return vy - y

    def _swatch(self, parent: etree._Element, x: int, y: int, fill: str, stroke: str) -> None:
        self.c.rect(parent, x, y, 26, 16, fill, rx=3, stroke=stroke, stroke_width=1, class_="swatch")

    def warnings(self, parent: etree._Element, x: int, y: int, max_w: int) -> int:
        g = self.c.group(parent, "warnings")
        if not self.pic.warnings:
            self.c.text(g, x, y + 14, "No warnings.", "box-head")
            return 20
        self.c.text(g, x, y + 14, f"Warnings ({len(self.pic.warnings)})", "box-head")
        dy = 24
        chars = max(40, (max_w - 24) * 100 // (12 * 64))
        for warning in self.pic.warnings:
            self.c.warning_marker(g, x, y + dy)
            for line in textwrap.wrap(warning, chars, break_on_hyphens=False):
                self.c.text(g, x + 22, y + dy + 12, line, "legend")
                dy += 16
            dy += 4
        return dy


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def picture_title(topo: HostTopology, pic: PictureMap) -> str:
    """ "server1: 2 sockets, 2 NUMA nodes, 12 cores, 24 CPUs · 2 VMs: 16 vCPUs, 4 emulator, 4 host, 0 free" """
    return (
        f"{pic.hostname or 'host'}: {plural(len(pic.sockets), 'socket')}, {plural(len(pic.nodes), 'NUMA node')}, "
        f"{plural(len(topo.cores), 'core')}, {plural(len(pic.threads), 'CPU')} · {plural(len(pic.vms), 'VM')}: "
        f"{plural(pic.count(Role.VCPU), 'vCPU')}, {pic.count(Role.EMULATOR)} emulator, "
        f"{pic.count(Role.HOST)} host, {pic.count(Role.ISOLATED) + pic.count(Role.FREE)} free"
    )


def render_svg(topo: HostTopology, plan: Plan) -> bytes:
    """The picture of `plan` on `topo` as a standalone SVG document (UTF-8 bytes)."""
    return etree.tostring(svg_element(topo, plan), xml_declaration=True, encoding="UTF-8", pretty_print=True)


def svg_element(topo: HostTopology, plan: Plan) -> etree._Element:
    """The picture as an lxml element, for embedding (the HTML report inlines it)."""
    pic = picture_map(topo, plan)
    painter = _Painter(pic)
    c = painter.c
    title = picture_title(topo, pic)
    groups = [_group_layout(f"socket-{s.id}", _socket_header(s), s.nodes, (), pic, painter.tw) for s in pic.sockets]
    if pic.memory_only_nodes:
        groups.append(
            _group_layout("memory-only", "NUMA nodes without CPUs", pic.memory_only_nodes, (), pic, painter.tw)
        )
    if pic.unplaced_nics:
        groups.append(
            _group_layout("no-node", "NICs with no NUMA node reported", (), pic.unplaced_nics, pic, painter.tw)
        )
    pos, machine_w, machine_h = _flow([(g.w, g.h) for g in groups], MAX_WIDTH, GAP * 3)
    content_w = max(machine_w, text_width(title, 17, mono=False), 720)
    body = c.group(c.root, "picture")
    c.text(body, MARGIN, MARGIN + 16, title, "title")
    top = MARGIN + 34
    top += painter.legend(body, MARGIN, top, content_w) + 16
    machine = c.group(body, "machine")
    for (gx, gy), lay in zip(pos, groups, strict=True):
        painter.group_box(machine, MARGIN + gx, top + gy, lay)
    y = top + machine_h + 20
    y += painter.warnings(body, MARGIN, y, content_w)
    width, height = content_w + 2 * MARGIN, y + MARGIN
    for key, value in (("width", width), ("height", height), ("viewBox", f"0 0 {width} {height}")):
        c.root.set(key, str(value))
    c.root.set("role", "img")
    c.root.set("font-size", str(FONT))
    c.root.insert(0, _background(width, height))
    heading = etree.Element(f"{{{SVG_NS}}}title")
    heading.text = one_line(f"bmslice: {title}")
    c.root.insert(0, heading)
    return c.root


def _socket_header(socket: SocketCell) -> str:
    ids = ", ".join(str(n.id) for n in socket.nodes)
    return f"Socket {socket.id} · NUMA node{'s' if len(socket.nodes) > 1 else ''} {ids}"


def _background(width: int, height: int) -> etree._Element:
    return etree.Element(
        f"{{{SVG_NS}}}rect", {"x": "0", "y": "0", "width": str(width), "height": str(height), "fill": "#FFFFFF"}
    )
