"""Plain-text tables for the terminal (pure): columns padded to their widest cell, two spaces
apart, no trailing blanks. A cell with several lines continues on the lines below its row.

>>> print("\\n".join(text_table(["VM", "NICs"], [["red", "eno1\\neno2"], ["blue", "-"]])))
VM    NICs
red   eno1
      eno2
blue  -
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import zip_longest


def text_table(header: Sequence[str] | None, rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a table; `header` None for a table of label/value rows."""
    split = [[str(cell).split("\n") for cell in row] for row in ([header] if header else []) + [list(r) for r in rows]]
    if not split:
        return []
    widths = [max(len(line) for row in split for line in row[i]) for i in range(len(split[0]))]
    out = []
    for row in split:
        for parts in zip_longest(*row, fillvalue=""):
            out.append("  ".join(part.ljust(w) for part, w in zip(parts, widths, strict=True)).rstrip())
    return out
