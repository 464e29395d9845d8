"""Read the kernel's view of a process's threads: /proc/<pid>/task/<tid>/{comm,status}."""

from __future__ import annotations

from pathlib import Path

from bmslice.cpuset import CpuListError, CpuSet
from bmslice.model.live import ThreadAffinity


def read_threads(pid: int, proc: Path = Path("/proc")) -> list[ThreadAffinity]:
    out = []
    task_dir = proc / str(pid) / "task"
    try:
        tids = sorted(int(t) for t in (p.name for p in task_dir.iterdir()) if t.isdigit())
    except OSError:
        return []
    for tid in tids:
        try:
            comm = (task_dir / str(tid) / "comm").read_text().strip()
            status = (task_dir / str(tid) / "status").read_text()
        except OSError:
            continue  # the thread ended while we looked
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                try:
                    cpus = CpuSet.parse(line.split(":", 1)[1])
                except CpuListError:
                    break
                out.append(ThreadAffinity(tid, comm, cpus))
                break
    return out
