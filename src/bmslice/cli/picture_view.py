"""The sliced server as a coloured grid in the terminal (rich), drawn from the same map as the SVG.

One panel per NUMA node; each column is a physical core, each line one of its hardware
threads, so siblings sit above each other as in the SVG. A cell reads "CPU owner" and
stays readable without colour: "4 A:v0" is vCPU 0 of VM A pinned to CPU 4, "2 A:emu" its
emulator/IOThread CPU, "0 host" host-reserved, "7 ·" isolated and free.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from bmslice.model.plan import Plan
from bmslice.model.sizes import format_mib
from bmslice.model.topology import HostTopology
from bmslice.plan.room import Room
from bmslice.render.picture_map import (
    CoreCell,
    Nic,
    NodeCell,
    PictureMap,
    Role,
    Thread,
    nic_notes,
    picture_map,
    room_text,
)
from bmslice.render.picture_svg import (
    CORES_PER_ROW,
    HOST_COLOUR,
    ISOLATED_COLOUR,
    is_dark,
    picture_title,
    tint,
    vm_colour,
)

WARN_STYLE = "bold black on #F0C020"


def _tag(t: Thread, pic: PictureMap) -> str:
    letter = pic.vms[t.vm].letter if t.vm is not None else ""
    return {
        Role.VCPU: f"{letter}:v{t.vcpu}",
        Role.EMULATOR: f"{letter}:emu",
        Role.SPARE: f"{letter}:idle",
        Role.HOST: "host*" if t.shared_emulators else "host",
        Role.ISOLATED: "·",
        Role.FREE: "free",
    }[t.role]


def _style(t: Thread) -> str:
    if t.vm is not None:
        colour = vm_colour(t.vm)
        if t.role is Role.VCPU:
            return f"{'#FFFFFF' if is_dark(colour) else '#000000'} on {colour}"
        if t.role is Role.EMULATOR:
            return f"#000000 on {tint(colour, 0.55)}"
        return f"bold {colour}"
    if t.role is Role.HOST:
        return f"#FFFFFF on {HOST_COLOUR}"
    if t.role is Role.ISOLATED:
        return f"#444444 on {ISOLATED_COLOUR}"
    return ""


def _nic_line(nic: Nic, pic: PictureMap) -> Text:
    line = Text("NIC ")
    line.append(f"{nic.name} {nic.address}", style="bold")
    if nic.vm is not None:
        line.append(" ")
        line.append(f" {pic.vms[nic.vm].letter} ", style=_style(Thread(0, Role.VCPU, nic.vm, 0)))
    elif nic.management:
        line.append(" ")
        line.append(" M ", style=_style(Thread(0, Role.HOST)))
    notes = nic_notes(nic, pic)
    cross = notes.pop() if nic.cross_vms else None
    line.append(" " + " · ".join(notes))
    if cross:
        line.append("  ")
        line.append(f"! {cross}", style=WARN_STYLE)
    return line


def _core_lines(cores: Sequence[CoreCell], pic: PictureMap, cell_w: int, per_row: int, digits: int) -> list[Text]:
    """Rows of cores, one line per hardware thread, siblings above each other."""
    lines: list[Text] = []
    for start in range(0, len(cores), per_row):
        row = cores[start : start + per_row]
        depth = max(len(core.threads) for core in row)
        for i in range(depth):
            line = Text()
            for core in row:
                line.append("!" if core.split else " ", style=WARN_STYLE if core.split else "")
                if i < len(core.threads):
                    t = core.threads[i]
                    label = f"{t.cpu:>{digits}} {_tag(t, pic)}"
                    line.append(f"{label:<{cell_w}}", style=_style(t))
                else:
                    line.append(" " * cell_w)
            lines.append(line)
        if start + per_row < len(cores):
            lines.append(Text())
    return lines


def _node_panel(node: NodeCell, pic: PictureMap, cell_w: int, per_row: int, room: Room | None = None) -> Panel:
    lines: list[Text | Panel] = []
    digits = max((len(str(t.cpu)) for core in node.cores for t in core.threads), default=1)
    if node.l3:  # several L3 caches in the node: a box each, titled with its id, size and ways held
        for l3 in node.l3:
            cores = [node.cores[i] for i in l3.cores]
            inner = _core_lines(cores, pic, cell_w, min(per_row, len(cores)), digits)
            lines.append(Panel(Group(*inner), title=l3.label(pic), title_align="left", expand=False, style="dim"))
    else:
        lines.extend(_core_lines(node.cores, pic, cell_w, per_row, digits))
    lines.extend(_nic_line(nic, pic) for nic in node.nics)
    free = next((n for n in room.nodes if n.node == node.id), None) if room is not None else None
    if free is not None:
        lines.append(Text(room_text(free, pic), style="italic"))
    cpus = sum(len(c.threads) for c in node.cores)
    title = f"NUMA node {node.id} · {len(node.cores)} cores, {cpus} CPUs · {format_mib(node.memory_mib)}"
    if node.offline:
        title += f" · offline {node.offline}"
    return Panel(Group(*lines) if lines else Text("no CPUs"), title=title, title_align="left", expand=False)


def _legend(pic: PictureMap) -> list[Text]:
    general = Text("legend: ")
    general.append(" host ", style=_style(Thread(0, Role.HOST)))
    general.append(f" host-reserved ({pic.count(Role.HOST)})  ")
    general.append(" · ", style=_style(Thread(0, Role.ISOLATED)))
    general.append(f" isolated, free ({pic.count(Role.ISOLATED)})")
    if pic.count(Role.FREE):
        general.append(f"  free not isolated ({pic.count(Role.FREE)})")
    if any(t.shared_emulators for t in pic.threads):
        general.append("  host*: host CPU also running VM emulator threads")
    general.append("  ")
    general.append("!", style=WARN_STYLE)
    general.append(" warning")
    out = [general]
    for vm in pic.vms:
        line = Text("  ")
        line.append(f" {vm.letter}:vN ", style=_style(Thread(0, Role.VCPU, vm.index, 0)))
        line.append(" ")
        line.append(f" {vm.letter}:emu ", style=_style(Thread(0, Role.EMULATOR, vm.index)))
        emu = "dedicated" if vm.emulator_policy == "dedicated" else "on host CPUs"
        line.append(
            f" {vm.letter} = {vm.name}: {vm.vcpus} vCPUs on {vm.where}, emulator + IOThreads {emu} "
            f"({vm.emulator_cpus or '-'})"
        )
        out.append(line)
    return out


def room_summary(room: Room, pic: PictureMap) -> list[str]:
    """One line per shape: how many more fit on the whole host and what runs out first."""
    from bmslice.plan.room import MIX
    from bmslice.render.picture_map import shape_label

    out = []
    for shape in room.shapes:
        limits = f"; runs out first: {', '.join(shape.limits)}" if shape.limits else ""
        what = "sets of one of each VM" if shape.shape == MIX else shape_label(shape.shape, pic)
        out.append(f"room: {shape.more} more {what} fit on the host{limits}")
    return out


def picture_view(topo: HostTopology, plan: Plan, width: int = 120, room: Room | None = None) -> Group:
    """The grid for a console `width` columns wide (cores per row shrink to fit, at most 8); `room`:
    each node's free room (bmslice capacity's answer) below its NICs, and each shape's count at the end."""
    pic = picture_map(topo, plan)
    cell_w = max((len(f"{t.cpu} {_tag(t, pic)}") for t in pic.threads), default=4) + 1
    per_row = max(1, min(CORES_PER_ROW, (width - 4) // (cell_w + 1)))
    parts: list[RenderableType] = [Text(picture_title(topo, pic), style="bold"), *_legend(pic)]
    for socket in pic.sockets:
        parts.append(Text(f"Socket {socket.id}", style="bold"))
        parts.extend(_node_panel(node, pic, cell_w, per_row, room) for node in socket.nodes)
    if pic.memory_only_nodes:
        parts.append(Text("NUMA nodes without CPUs", style="bold"))
        parts.extend(_node_panel(node, pic, cell_w, per_row) for node in pic.memory_only_nodes)
    if pic.unplaced_nics:
        parts.append(Text("NICs with no NUMA node reported", style="bold"))
        parts.extend(_nic_line(nic, pic) for nic in pic.unplaced_nics)
    if room is not None:
        parts.extend(Text(line) for line in room_summary(room, pic))
    for warning in pic.warnings:
        line = Text()
        line.append("!", style=WARN_STYLE)
        line.append(f" warning: {warning}", style="yellow")
        parts.append(line)
    return Group(*parts)
