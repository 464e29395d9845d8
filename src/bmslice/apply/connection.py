"""libvirt I/O for discovery: fetch the XML that `bmslice.topology.libvirt_xml` parses.

This is the only place discovery touches libvirt; the parser stays a pure function of text
so it can be tested on fixtures. Errors become one-line `TopologyError`s.
"""

from __future__ import annotations

from typing import Any

import libvirt

from bmslice.errors import BmsliceError, TopologyError
from bmslice.model.topology import HostTopology
from bmslice.topology.libvirt_xml import LibvirtHostInfo, cell_ids, page_sizes_kib, topology_from_libvirt


def read_libvirt_topology(uri: str) -> HostTopology:
    """Discover the host behind URI through a read-only connection (nothing is changed)."""
    conn = open_connection(uri, read_only=True, error=TopologyError)
    try:
        capabilities = conn.getCapabilities()
        devices = [device.XMLDesc(0) for device in conn.listAllDevices(0)]
        host_info = _host_info(conn, capabilities)
    except libvirt.libvirtError as exc:
        raise TopologyError(f"cannot read host topology from {uri}: {libvirt_error_text(exc)}") from None
    finally:
        conn.close()
    return topology_from_libvirt(capabilities, devices, source=f"libvirt:{uri}", host_info=host_info)


def open_connection(uri: str, read_only: bool, error: type[BmsliceError]) -> Any:
    """A libvirt connection, or `error` with one line saying why not."""
    quiet_libvirt_errors()
    try:
        conn = libvirt.openReadOnly(uri) if read_only else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise error(f"cannot connect to {uri}: {libvirt_error_text(exc)}") from None
    if conn is None:  # very old bindings returned None instead of raising
        raise error(f"cannot connect to {uri}: libvirt returned no connection")
    return conn


def quiet_libvirt_errors() -> None:
    # libvirt prints every error to stderr unless a handler is set; we report each failure
    # ourselves, as one line, so the default printout would only duplicate it.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def libvirt_error_text(exc: Any) -> str:
    message = exc.get_error_message() or str(exc)
    return " ".join(str(message).split())


def _host_info(conn: Any, capabilities: str) -> LibvirtHostInfo:
    """Optional extras; a host or driver that cannot answer them still yields a topology."""
    info = _node_info(conn)
    cells = cell_ids(capabilities)
    return LibvirtHostInfo(
        hostname=_optional(conn.getHostname) or "",
        cpus=info[2] if info else None,
        memory_mib=info[1] if info else None,
        cell_free_mib=_cell_free_mib(conn, cells),
        free_pages=_free_pages(conn, cells, page_sizes_kib(capabilities)),
    )


def _optional(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except libvirt.libvirtError:
        return None


def _node_info(conn: Any) -> list[Any] | None:
    # [model, memory MiB, active CPUs, MHz, nodes, sockets per node, cores, threads]
    info = _optional(conn.getInfo)
    return list(info) if info else None


def _cell_free_mib(conn: Any, cells: list[int]) -> dict[int, int]:
    # One cell per call: cell ids may have gaps, and a range call fails on the first gap.
    free: dict[int, int] = {}
    for cell in cells:
        result = _optional(conn.getCellsFreeMemory, cell, 1)
        if result:
            free[cell] = int(result[0]) // (1024 * 1024)  # the API answers in bytes
    return free


def _free_pages(conn: Any, cells: list[int], sizes_kib: list[int]) -> dict[tuple[int, int], int]:
    free: dict[tuple[int, int], int] = {}
    if not sizes_kib:
        return free
    for cell in cells:
        result = _optional(conn.getFreePages, sizes_kib, cell, 1) or {}
        for size, count in result.get(cell, {}).items():
            free[(cell, int(size))] = int(count)
    return free
