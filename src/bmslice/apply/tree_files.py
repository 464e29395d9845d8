"""Writes below a host root (the live "/" or a tree), through the one safe writer (safe_dir.py).

A tree path is resolved once by FsRoot, which follows the tree's own links by hand and
never out of it; the write then walks the resolved path from the root one name at a time
without following any link, so a link swapped in after the resolution is refused, never
followed. Only regular files are written: a FIFO where a sysfs attribute should be would
block the write forever, a device node could be the host's disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bmslice.apply.safe_dir import TREE_RULE, SafeDir, open_dir
from bmslice.apply.transaction import Step
from bmslice.errors import ApplyError, TopologyError
from bmslice.topology.fsroot import FsRoot

FILE_MODE = 0o644
EXEC_MODE = 0o755  # a script another program runs (libvirt's hooks)


class HostTree:
    """The host below `root`: reads through FsRoot, writes through the safe writer.

    Paths given to the writing methods are `real` ones: resolved inside the tree, holding no link.
    """

    def __init__(self, root: Path) -> None:
        self.fs = FsRoot(root)

    def real(self, rel: str) -> str:
        """The tree path of `rel`; a symlink loop is a refusal, like any failed write."""
        try:
            return self.fs.real(rel)
        except TopologyError as exc:
            raise ApplyError(str(exc)) from None

    def shown(self, real: str) -> str:
        return self.fs.display(real)

    def read(self, rel: str) -> bytes | None:
        """What the host has at `rel` now (None: nothing); a directory there is a refusal."""
        try:
            return self.fs.read_bytes(rel)
        except IsADirectoryError:
            raise ApplyError(f"{self.fs.display(rel)} is a directory, not a file; remove it and run again") from None
        except TopologyError as exc:
            raise ApplyError(str(exc)) from None
        except OSError as exc:
            raise ApplyError(f"cannot read {self.fs.display(rel)}: {exc.strerror or exc}") from None

    def _do(self, what: str, real: str, action: Callable[[SafeDir], object]) -> None:
        try:
            with open_dir(self.fs.root, TREE_RULE, create=False) as top:
                assert top is not None  # TREE_RULE refuses a missing root
                action(top)
        except OSError as exc:
            raise ApplyError(f"cannot {what} {self.shown(real)}: {exc.strerror or exc}") from None

    def mode(self, real: str) -> int:
        """Permission bits of the file at `real`; FILE_MODE when there is none (what a new one gets)."""
        found: list[int | None] = []
        self._do("read", real, lambda top: found.append(top.mode(real)))
        return FILE_MODE if found[0] is None else found[0]

    def write(self, real: str, data: bytes, mode: int = FILE_MODE, created: list[str] | None = None) -> None:
        """Atomically, durably; directories made on the way are added to `created`, outermost first."""
        self._do("write", real, lambda top: top.write(real, data, mode, durable=True, created=created))

    def write_in_place(self, real: str, data: bytes) -> None:
        """One write to an existing file: how sysfs attributes take a value (they cannot be renamed over)."""
        value = data.decode(errors="replace").strip()
        self._do(f"write {value} to", real, lambda top: top.write_in_place(real, data))

    def remove(self, real: str) -> None:
        self._do("remove", real, lambda top: top.unlink(real))

    def remove_dirs(self, created: list[str]) -> None:
        """Undo of the directories `write` made: innermost first, only while empty."""

        def rmdirs(top: SafeDir) -> None:
            for path in reversed(created):
                top.rmdir(path)

        if created:
            self._do("remove", created[0], rmdirs)


@dataclass(frozen=True)
class FileWrite:
    """One host file bmslice owns whole, to be written as `data` with `mode`; `old`/`old_mode`: what is there."""

    tree: HostTree
    real: str
    data: bytes
    mode: int
    old: bytes | None
    old_mode: int

    @classmethod
    def of(cls, tree: HostTree, rel: str, data: bytes, mode: int) -> FileWrite:
        real = tree.real(rel)
        return cls(tree, real, data, mode, tree.read(rel), tree.mode(real))

    @property
    def changed(self) -> bool:
        return self.old != self.data or self.old_mode != self.mode

    def _now(self) -> tuple[int, bytes | None]:
        """Its mode and content now; the mode first, through the safe writer, which refuses a planted link."""
        return self.tree.mode(self.real), self.tree.read(self.real)

    def step(self, description: str, undo_description: str) -> Step:
        """Write atomically; undone to what was there, mode included, leaving no directory this run made."""
        created: list[str] = []

        def do() -> None:
            # what was read when the run was planned must still be there: else a write made
            # meanwhile (an operator, config management) would be overwritten, then "restored" stale
            if self._now() != (self.old_mode, self.old):
                raise ApplyError(
                    f"/{self.real} changed after bmslice read it (someone else writes it?); left as it is, "
                    "run again once it is quiet"
                )
            self.tree.write(self.real, self.data, self.mode, created)

        def undo() -> None:
            if self._now()[1] != self.data:  # changed since this run wrote it: theirs now
                raise ApplyError(f"/{self.real} changed after bmslice wrote it; left as it is")
            if self.old is not None:
                self.tree.write(self.real, self.old, self.old_mode)
                return
            self.tree.remove(self.real)
            self.tree.remove_dirs(created)

        return Step(description, do, undo, undo_description)
