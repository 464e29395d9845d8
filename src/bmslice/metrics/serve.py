"""Serving /metrics over HTTP (prometheus-client's own server), from the host's reserved CPUs.

The exporter pins itself before its HTTP thread exists: a thread inherits its creator's CPUs,
so every thread it ever starts (the server's, one per request) runs on the CPUs the host
keeps, and none of its work, page faults or TLB shootdowns lands on an isolated CPU.

>>> parse_listen("127.0.0.1:9963"), parse_listen("[::1]:9963"), parse_listen(":9963")
(('127.0.0.1', 9963), ('::1', 9963), ('0.0.0.0', 9963))
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from bmslice.cpuset import CpuSet
from bmslice.errors import BmsliceError, SpecError
from bmslice.safe_text import shown

DEFAULT_LISTEN = "127.0.0.1:9963"  # loopback: the metrics name processes; expose them on purpose
_LISTEN_RE = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]*)):([0-9]{1,5})")


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT with a literal IPv4 or [IPv6] address; an empty address is every IPv4 one."""
    match = _LISTEN_RE.fullmatch(text)
    port = int(match.group(3)) if match else 0
    if not match or not 1 <= port <= 65535:
        raise SpecError(f"--listen {shown(text)}: expected ADDRESS:PORT such as 127.0.0.1:9963 or [::1]:9963")
    address = match.group(1) or match.group(2) or "0.0.0.0"
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise SpecError(f"--listen {shown(text)}: {shown(address)} is not an IP address") from None
    return address, port


def pin_to(cpus: CpuSet) -> CpuSet:
    """Run this thread (and every thread it starts later) on `cpus`, as far as this process may;
    the CPUs it now runs on."""
    allowed = CpuSet.from_iter(os.sched_getaffinity(0))
    target = cpus & allowed
    if not target:
        raise BmsliceError(
            f"the host's reserved CPUs {cpus or 'none'} are not among the CPUs this process may use ({allowed}); "
            "the exporter runs on the reserved CPUs only"
        )
    os.sched_setaffinity(0, target.sorted())
    return target


def serve(registry: CollectorRegistry, address: str, port: int) -> tuple[Any, threading.Thread]:
    """Serve /metrics of `registry` in a daemon thread; (server, thread)."""
    try:
        return start_http_server(port, address, registry)
    except OSError as exc:
        raise BmsliceError(f"--listen {address}:{port}: cannot listen: {exc.strerror or exc}") from None
