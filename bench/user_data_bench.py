"""What an 11 MB cloud-init user_data costs at apply time: the seed built from it, or its refusal.

Run: .venv/bin/python bench/user_data_bench.py

Three shapes of about 11 MB, each read, checked and built into a marked seed ISO as `apply`
does it (apply/seed.py), in a fresh process whose peak memory is printed too:
- write_files: one 8 MB file as base64 in a literal block (few values, much text): built;
- runcmd: 1.1 million short lists (millions of values): refused before a node is built
  (it took 152 s and 2.6 GB when PyYAML composed it in pure Python);
- packages: 99,000 package names, just under the 100,000-value limit: built.
Not a test: nothing is asserted about the times.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import resource, sys, time
from pathlib import Path
from bmslice.apply.ownership import Mark
from bmslice.apply.seed import read_seed
from bmslice.errors import BmsliceError
from bmslice.model.spec import CloudInitSpec
path = Path(sys.argv[1])
start = time.perf_counter()
try:
    seed = read_seed("vm", CloudInitSpec(user_data=path), path.parent)
    image = seed.image(Mark("vm", "uuid", "default", "vm-seed.iso"))
    result = f"built, ISO {len(image) / 2**20:.1f} MiB"
except BmsliceError as exc:
    result = "refused: " + str(exc).split(": ", 1)[1][:60]
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{seconds:.2f}\\t{peak:.0f}\\t{result}")
"""


def shapes(tmp: Path) -> dict[str, Path]:
    blob = base64.b64encode(os.urandom(8_000_000)).decode()
    lines = "".join(f"      {blob[i : i + 76]}\n" for i in range(0, len(blob), 76))
    texts = {
        "write_files": f"#cloud-config\nwrite_files:\n  - path: /opt/blob\n    encoding: b64\n    content: |\n{lines}",
        "runcmd": "#cloud-config\nruncmd:\n" + "  - [a, b]\n" * 1_100_000,
        "packages": "#cloud-config\npackages:\n" + "".join(f"  - pkg{i:05d}-{'x' * 100}\n" for i in range(99_000)),
    }
    out = {}
    for name, text in texts.items():
        path = tmp / f"{name}.yaml"
        path.write_text(text)
        out[name] = path
    return out


def main() -> int:
    print(f"{'shape':<12} {'MB':>6} {'seconds':>8} {'peak MiB':>9}  result")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in shapes(Path(tmp)).items():
            run = subprocess.run(
                [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True, cwd=ROOT
            )
            seconds, peak, result = run.stdout.strip().split("\t")
            size = path.stat().st_size / 1e6
            print(f"{name:<12} {size:>6.1f} {float(seconds):>8.2f} {float(peak):>9.0f}  {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
