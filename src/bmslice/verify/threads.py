"""The kernel's view of one process's threads: /proc/<pid>/task/<tid>/status (affinity) and
stat (scheduling policy and priority), read through the same reader the isolation audit uses."""

from __future__ import annotations

from pathlib import Path

from bmslice.model.live import ThreadAffinity
from bmslice.topology.fsroot import FsRoot
from bmslice.verify.host_state import read_process


def read_threads(pid: int, root: Path = Path("/")) -> list[ThreadAffinity]:
    """Each live thread's name, Cpus_allowed_list and scheduling; empty when the process is gone."""
    process = read_process(FsRoot(root), pid)
    return list(process.tasks) if process is not None else []
