"""Discovery speed in the number of CPUs: sysfs trees of 1,000 to 30,000 CPUs, read whole.

Run: .venv/bin/python bench/discovery_bench.py [--full N]

Two shapes:
- bare: `present` and `online` list the CPUs and no cpuN directory exists (a hostile or
  truncated tree; the shape that took 30 s and more while the package of each CPU was
  inferred by scanning every other CPU);
- full: a tree as tests/treebuilder.py writes a real machine (cpuN/topology, sibling lists,
  node cpulists), 2 sockets with SMT, --full CPUs (default 4,096; writing the tree takes longer
  than reading it).
Printed: seconds to read each tree (median of 3) and the time per CPU, so linear growth shows
as a flat column. Not a test: nothing is asserted about the times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "src", ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bmslice.topology.sysfs import read_host_tree  # noqa: E402
from treebuilder import HostSpec, cpu_layout, write_tree  # noqa: E402


def bare_tree(root: Path, cpus: int) -> Path:
    cpu = root / "sys/devices/system/cpu"
    cpu.mkdir(parents=True)
    (cpu / "present").write_text(f"0-{cpus - 1}\n")
    (cpu / "online").write_text(f"0-{cpus - 1}\n")
    (root / "proc").mkdir()
    (root / "proc/meminfo").write_text("MemTotal: 1048576000 kB\nMemFree: 1000000000 kB\n")
    return root


def timed(root: Path, cpus: int) -> tuple[float, int]:
    times = []
    found = 0
    for _ in range(3):
        start = time.perf_counter()
        topo = read_host_tree(root)
        times.append(time.perf_counter() - start)
        found = len(topo.cpus)
    assert found == cpus, (found, cpus)
    return statistics.median(times), found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", type=int, default=4096, help="CPUs of the full tree (a multiple of 4)")
    args = parser.parse_args()
    print(f"{'tree':<6} {'CPUs':>7} {'seconds':>9} {'us/CPU':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for cpus in (1000, 10000, 30000):
            seconds, found = timed(bare_tree(Path(tmp) / f"bare{cpus}", cpus), cpus)
            print(f"{'bare':<6} {found:>7} {seconds:>9.2f} {seconds / found * 1e6:>8.1f}")
        cores = args.full // 4
        spec = HostSpec(cpus=cpu_layout(2, cores, 2), hostname="full")
        root = write_tree(spec, Path(tmp) / "full")
        seconds, found = timed(root, args.full)
        print(f"{'full':<6} {found:>7} {seconds:>9.2f} {seconds / found * 1e6:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
