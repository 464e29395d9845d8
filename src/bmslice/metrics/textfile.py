"""The exposition as a file for node_exporter's textfile collector, replaced atomically.

node_exporter reads every `*.prom` file of its `--collector.textfile.directory` at each scrape;
a file half written would be read half. So the text goes to a new file of a random name in
that directory (O_EXCL: never one that exists, never through a link) and is renamed over
`bmslice.prom`, which replaces whatever that name was (a link included) without following it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bmslice.apply.tree_files import FILE_MODE, write_atomic
from bmslice.errors import BmsliceError

TEXTFILE_NAME = "bmslice.prom"


def write_textfile(directory: Path, data: bytes) -> Path:
    """Replace DIRECTORY/bmslice.prom with `data`; the directory must be a real directory (not a link)."""
    try:
        mode = os.lstat(directory).st_mode
    except OSError as exc:
        raise BmsliceError(f"--textfile {directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"
        raise BmsliceError(f"--textfile {directory}: {what}; give node_exporter's textfile directory itself")
    path = directory / TEXTFILE_NAME
    try:
        write_atomic(path, data, FILE_MODE)
    except OSError as exc:
        raise BmsliceError(f"--textfile {directory}: cannot write {TEXTFILE_NAME}: {exc.strerror or exc}") from None
    return path
