"""`bmslice capacity SPEC`: how many more VMs of each shape fit beside the running slices, where, and
what runs out first.

    bmslice capacity SPEC [--host-root DIR | --hwloc FILE] [--connect URI] [--vm VCPUS:MEMORY[:NICS]]... [--json]

Through --connect the slices libvirt runs stay where they are (their recorded plans; with
--host-root, a tree stands for the host as `verify` reads it); without it the spec's own plan
stands for them. The planner answers (plan/room.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bmslice.cli.common import EXIT_OK, path_arg, print_json, run, standalone_parser
from bmslice.cli.sources import read_topology
from bmslice.errors import SpecError

if TYPE_CHECKING:
    from bmslice.model.plan import Plan
    from bmslice.model.spec import Spec
    from bmslice.model.topology import HostTopology
    from bmslice.plan.room import Room, ShapeRoom

SHOWN_VMS = 8  # copies listed one by one before "and N more"


def base_plan(args: argparse.Namespace, spec: Spec) -> tuple[HostTopology, Plan]:
    """The host and what runs on it: through --connect the live slices kept, else the spec's plan."""
    from bmslice.plan.planner import make_plan

    origin = str(args.spec)
    if args.connect:
        from bmslice.apply.context import load_context
        from bmslice.apply.libvirt_conn import connected, libvirt_errors

        if args.hwloc is not None:
            raise SpecError("--connect reads the running slices from libvirt; give --host-root or nothing with it")
        with libvirt_errors(args.connect), connected(args.connect) as conn:
            ctx = load_context(spec, origin, args.connect, conn, args.host_root, allow_move=False)
        return ctx.topology, ctx.plan
    topo = read_topology(args)
    return topo, make_plan(topo, spec, origin=origin)


def cmd_capacity(args: argparse.Namespace) -> int:
    from bmslice.cli.spec_input import load_spec_for, reads_this_machine
    from bmslice.model.shapes import parse_vm_shape
    from bmslice.plan.room import asked_shapes, free_room, room_to_dict, spec_shapes

    asked = [parse_vm_shape(text) for text in args.vm]  # before the host is read: bad input changes nothing
    spec = load_spec_for(args.spec, local_host=reads_this_machine(args))
    topo, base = base_plan(args, spec)
    origin = str(args.spec)
    shapes = asked_shapes(asked) if asked else spec_shapes(spec)
    room = free_room(topo, spec, base, shapes, origin, per_node=True)
    if args.json:
        print_json({"host": topo.hostname or topo.source, "kept": [vm.name for vm in base.vms], **room_to_dict(room)})
    else:
        for line in room_lines(topo, base, room, origin):
            print(line)
    return EXIT_OK


def room_lines(topo: HostTopology, base: Plan, room: Room, spec_name: str) -> list[str]:
    from bmslice.model.sizes import format_mib
    from bmslice.plan.capacity import plural

    kept = ", ".join(vm.name for vm in base.vms) or "none"
    lines = [f"capacity of {topo.hostname or topo.source or 'the host'} for {spec_name} (kept where they are: {kept})"]
    for node in room.nodes:
        fits = ", ".join(f"{count} × {shape}" for shape, count in node.fits)
        lines.append(
            f"  node {node.node}: {plural(node.cores, 'free core')}, {format_mib(node.memory_mib) if node.memory_mib else '0MiB'}"
            + (f"; alone on it fit {fits}" if fits else "")
        )
    for shape in room.shapes:
        lines.extend(_shape_lines(shape))
    return lines


def _shape_lines(shape: ShapeRoom) -> list[str]:
    from bmslice.plan.room import MIX, device_text

    what = "sets of one of each VM" if shape.shape == MIX else "more"
    out = [
        f"{shape.shape}: {shape.more} {what} fit"
        + (f"; runs out first: {', '.join(shape.limits)}" if shape.limits else "")
    ]
    for vm in shape.vms[:SHOWN_VMS]:
        where = f"node {','.join(map(str, vm.numa_nodes))}"
        if vm.l3_domains:
            where += f", L3 {','.join(map(str, vm.l3_domains))}"
        nics = ", ".join(device_text(d) for d in vm.devices)
        out.append(f"  {vm.name}: {where}, cores {' '.join(str(c) for c in vm.cores)}" + (f", {nics}" if nics else ""))
    if len(shape.vms) > SHOWN_VMS:
        out.append(f"  and {len(shape.vms) - SHOWN_VMS} more (--json lists them all)")
    for pages in shape.hugepages:
        size = f"{pages.size_kib // 1024} MiB" if pages.size_kib < 1048576 else f"{pages.size_kib // 1048576} GiB"
        state = "free now" if pages.free >= pages.pages else "free now: host-apply reserves them (1 GiB: at boot)"
        out.append(f"  hugepages node {pages.node}: they need {pages.pages} × {size}, {pages.free} {state}")
    out.append(f"  one more is refused: {shape.refusal}")
    return out


def register(sub: argparse._SubParsersAction[Any]) -> None:
    capacity = sub.add_parser(
        "capacity", help="how many more VMs of each shape fit beside the running slices, where, and what runs out first"
    )
    capacity.add_argument("spec", type=path_arg, metavar="SPEC")
    source = capacity.add_mutually_exclusive_group()
    source.add_argument("--host-root", type=path_arg, metavar="DIR", help="read DIR/sys and DIR/proc (default /)")
    source.add_argument("--hwloc", type=path_arg, metavar="FILE", help="read an `lstopo --of xml` file")
    capacity.add_argument(
        "--connect", metavar="URI", help="keep the slices libvirt runs there where they are (e.g. qemu:///system)"
    )
    capacity.add_argument(
        "--vm",
        action="append",
        default=[],
        metavar="VCPUS:MEMORY[:NICS]",
        help="a shape to count instead of the spec's VMs, e.g. 8:8GiB:vf or 4:8GiB:pt=eno1 (repeatable)",
    )
    capacity.add_argument("--json", action="store_true", help="print the answer as JSON")
    capacity.set_defaults(handler=cmd_capacity)


def main(argv: Sequence[str] | None = None) -> int:
    return run(standalone_parser(register), argv)


if __name__ == "__main__":
    sys.exit(main())
