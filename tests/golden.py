"""Golden-file comparison; BMSLICE_REGEN_GOLDEN=1 rewrites the files instead of comparing."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def assert_golden(relpath: str, actual: str) -> None:
    path = GOLDEN / relpath
    if os.environ.get("BMSLICE_REGEN_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
    assert path.exists(), f"golden file {path} missing: run with BMSLICE_REGEN_GOLDEN=1 once and review it"
    assert actual == path.read_text(), f"{relpath} differs from its golden file (BMSLICE_REGEN_GOLDEN=1 to update)"
