"""Serving /metrics over HTTP (prometheus-client's own server), from the host's reserved CPUs.

The exporter pins itself before its HTTP thread exists: a thread inherits its creator's CPUs,
so every thread it ever starts (the server's, one per request) runs on the CPUs the host
keeps, and none of its work, page faults or TLB shootdowns lands on an isolated CPU.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from bmslice.cpuset import CpuSet
from bmslice.errors import BmsliceError


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
