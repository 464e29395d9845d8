"""Shared helpers for the benchmarks in bench/ (not part of the bmslice package).

The synthetic hosts come from tests/topologies.py (in-memory HostTopology builders) and
tests/treebuilder.py (sysfs/procfs trees), so the benchmarks plan on exactly the machines
the test suite uses.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for _p in (ROOT / "src", ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bmslice.model.topology import HostTopology  # noqa: E402
from topologies import nic, server1, synthetic  # noqa: E402

GIB = 1024


@dataclass(frozen=True)
class HostShape:
    """A single host: sockets x cores per socket x threads, split into NUMA nodes."""

    name: str
    sockets: int
    cores_per_socket: int
    threads: int = 2
    nodes_per_socket: int = 1
    memory_mib_per_node: int = 128 * GIB
    cores_per_l3: int | None = None  # EPYC-like: each socket's cores share an L3 in groups of this many

    @property
    def cpus(self) -> int:
        return self.sockets * self.cores_per_socket * self.threads

    @property
    def nodes(self) -> int:
        return self.sockets * self.nodes_per_socket

    @property
    def cores_per_node(self) -> int:
        return self.cores_per_socket // self.nodes_per_socket

    def topology(self, with_nics: bool = True) -> HostTopology:
        nics = [nic(f"0000:{0x10 + n:02x}:00.0", f"ens{n}", n, 100 + n) for n in range(self.nodes)] if with_nics else []
        return synthetic(
            sockets=self.sockets,
            cores=self.cores_per_socket,
            threads=self.threads,
            nodes_per_socket=self.nodes_per_socket,
            memory_mib_per_node=self.memory_mib_per_node,
            nics=nics,
            cores_per_l3=self.cores_per_l3,
        )

    def label(self) -> str:
        smt = f" x {self.threads}t" if self.threads > 1 else ""
        return f"{self.sockets}s x {self.cores_per_socket}c{smt}, {self.nodes} nodes"


# A mixed fleet: per 4 VMs 11 whole cores on an SMT host (2 vCPU + dedicated emulator core,
# 4, 6 and 8 vCPUs sharing the host's CPUs for their emulator threads).
FLEET_MIX: tuple[tuple[int, str], ...] = ((2, "dedicated"), (4, "host"), (6, "host"), (8, "host"))


def fleet_spec(shape: HostShape, vms: int, with_nics: bool = True, memory: str = "8GiB") -> dict[str, Any]:
    """`vms` VMs of FLEET_MIX, none pinned to a node; VM k < nodes gets the NIC of node k."""
    out = []
    for i in range(vms):
        vcpus, emulator = FLEET_MIX[i % len(FLEET_MIX)]
        vm: dict[str, Any] = {"name": f"vm{i:03d}", "vcpus": vcpus, "memory": memory, "emulator": emulator}
        if with_nics and i < shape.nodes:
            vm["nics"] = [{"passthrough": f"ens{(i * 7) % shape.nodes}"}]
        out.append(vm)
    return {"host": {"reserved_cores_per_node": 1}, "vms": out}


def design_note_host() -> HostTopology:
    return server1()


def design_note_spec_path() -> Path:
    return ROOT / "examples" / "server1" / "spec.yaml"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table; `align` is one char per column, 'l' or 'r' (default: first l, rest r)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=True))

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def run_limited(fn: Any, args: tuple[Any, ...], timeout: float) -> tuple[str, Any]:
    """Run fn(*args) in a forked child; ("ok", result), ("error", message) or ("timeout", None).

    Keeps a planner search that runs away from stalling the whole benchmark; the child is
    ours, so it is ended by its own pid when it overruns.
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)

    def target() -> None:
        try:
            child.send(("ok", fn(*args)))
        except Exception as exc:  # reported to the parent, not raised
            child.send(("error", f"{type(exc).__name__}: {exc}"))

    proc = ctx.Process(target=target, daemon=True)
    proc.start()
    try:
        if parent.poll(timeout):
            return parent.recv()  # type: ignore[no-any-return]
        return ("timeout", None)
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(5)
