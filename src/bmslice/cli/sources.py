"""Where the CLI reads a host from: a sysfs tree, a libvirt connection or an hwloc XML file."""

from __future__ import annotations

import argparse
from pathlib import Path

from bmslice.cli.common import path_arg
from bmslice.errors import TopologyError
from bmslice.model.topology import HostTopology
from bmslice.safe_text import one_line


def add_source_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--host-root", type=path_arg, metavar="DIR", help="read DIR/sys and DIR/proc (default /)")
    group.add_argument("--connect", metavar="URI", help="read the host through libvirt (e.g. qemu+ssh://host/system)")
    group.add_argument("--hwloc", type=path_arg, metavar="FILE", help="read an `lstopo --of xml` file")


def read_topology(args: argparse.Namespace) -> HostTopology:
    if getattr(args, "hwloc", None) is not None:
        from bmslice.model.input_file import read_input_bytes
        from bmslice.topology.hwloc import topology_from_hwloc

        path: Path = args.hwloc
        data = read_input_bytes(path, "hwloc XML", error=TopologyError)
        try:
            return topology_from_hwloc(data, source=one_line(str(path)))
        except TopologyError as exc:
            raise TopologyError(f"{one_line(str(path))}: {exc}") from None
    if getattr(args, "connect", None):
        from bmslice.apply.connection import read_libvirt_topology

        return read_libvirt_topology(args.connect)
    from bmslice.topology.sysfs import read_host_tree

    root: Path = args.host_root or Path("/")
    if not root.is_dir():
        raise TopologyError(f"--host-root {root}: no such directory")
    topo = read_host_tree(root)
    if args.host_root is None:
        from bmslice.topology.netlink import with_live_network

        topo = with_live_network(topo)
    return topo
