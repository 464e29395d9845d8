"""The exposition as a file for node_exporter's textfile collector, replaced atomically.

node_exporter reads every `*.prom` file of its `--collector.textfile.directory` at each scrape;
a file half written would be read half. So the text goes to a new file of a random name in
that directory (O_EXCL: never one that exists, never through a link) and is renamed over
`bmslice.prom`; a link, FIFO or directory at that name is refused, never followed.
"""

from __future__ import annotations

from pathlib import Path

from bmslice.apply.safe_dir import Owner, Rule, write_out

TEXTFILE_NAME = "bmslice.prom"
# node_exporter's textfile directory: it must exist, be root's (or ours) and replaceable by no one else
TEXTFILE_RULE = Rule(
    "--textfile", Owner.OURS, None, "give node_exporter's own textfile directory, writable by root alone"
)


def write_textfile(directory: Path, data: bytes) -> Path:
    """Replace DIRECTORY/bmslice.prom with `data` through the one safe writer (no link followed)."""
    write_out(directory, {TEXTFILE_NAME: data}, TEXTFILE_RULE)
    return directory / TEXTFILE_NAME
