"""A lab's state on this machine: its directory and `lab.json`, read strictly.

`<state>/<name>/` holds `lab.json` (shape, the wrapper's pid, kernel args, versions),
`qemu.pid` (written by QEMU), `console.log` and `share/`. `lab.json` may be hand-edited,
cut short or written by another version of bmslice: it is read with strict types (a pid
is an integer, never `true` or `"123"`), unknown keys are refused, and any problem is one
`LabError` naming the file, the field and what is wrong — never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bmslice.errors import BmsliceError, LabError
from bmslice.lab.qemu_cmdline import BootOptions, qemu_name
from bmslice.lab.shape import LabShape, check_lab_name
from bmslice.model.input_file import parse_json, read_input_text, validated
from bmslice.safe_text import one_line

STATE_ROOT = Path(os.environ.get("BMSLICE_LAB_STATE", "/run/bmslice/lab"))
CONSOLE_TAIL_LINES = 25
CONSOLE_TAIL_BYTES = 64 * 1024
STATE_LIMIT = 256 * 1024  # a lab.json is about 1 KiB
PID_MAX = 1 << 22  # the kernel's highest pid_max


@dataclass(frozen=True)
class LabDir:
    name: str
    path: Path

    @classmethod
    def of(cls, name: str, state_root: Path = STATE_ROOT) -> LabDir:
        return cls(check_lab_name(name), state_root / name)

    @property
    def share(self) -> Path:
        return self.path / "share"

    @property
    def jobs(self) -> Path:
        return self.share / "jobs"

    @property
    def console(self) -> Path:
        return self.path / "console.log"

    @property
    def meta(self) -> Path:
        return self.path / "lab.json"

    @property
    def pidfile(self) -> Path:
        return self.path / "qemu.pid"

    @property
    def root_disk(self) -> Path:
        return self.path / "root.img"

    @property
    def qemu_name(self) -> str:
        """QEMU's `-name` value: the lab's name, whole, and the name its threads carry."""
        return qemu_name(self.name)

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        try:  # the last 64 KiB of a regular file: a FIFO or a link to /dev/zero must not hang or fill memory
            fd = os.open(self.console, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    return "(no console output)"
                handle.seek(max(0, info.st_size - CONSOLE_TAIL_BYTES))
                text = handle.read(CONSOLE_TAIL_BYTES).decode("utf-8", "replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:]) or "(no console output)"


@dataclass(frozen=True)
class LabInfo:
    name: str
    shape: LabShape
    kernel_args: str
    wrapper_pid: int
    started: float
    ttl_s: int
    versions: dict[str, str]
    scaled_down: tuple[str, ...] = field(default=())
    boot: BootOptions = field(default_factory=BootOptions)

    def __post_init__(self) -> None:
        check_lab_name(self.name)
        if not 1 < self.wrapper_pid < PID_MAX:  # never 0 (our own group) or 1 (init)
            raise LabError(f"wrapper_pid {self.wrapper_pid} is not a process bmslice starts")
        if not math.isfinite(self.started) or self.ttl_s < 1:
            raise LabError("started must be a finite time and ttl_s at least 1")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = self.shape.to_dict()
        data["scaled_down"] = list(self.scaled_down)
        data["boot"] = {**asdict(self.boot), "extra_kernel_args": list(self.boot.extra_kernel_args)}
        data["boot"]["wires"] = list(self.boot.wires)
        return data


def _unknown_key(data: Any) -> str | None:
    """The first key of lab.json its dataclasses do not have ("shape.x"): msgspec passes over them."""
    if not isinstance(data, dict):
        return None
    parts: list[tuple[str, Any, type]] = [("", data, LabInfo)]
    parts += [(f"{key}.", data.get(key), kind) for key, kind in (("shape", LabShape), ("boot", BootOptions))]
    for prefix, section, kind in parts:
        known = {f.name for f in fields(kind)}
        for key in section if isinstance(section, dict) else ():
            if key not in known:
                return f"{prefix}{key}"
    return None


class LabStateError(LabError):
    """A lab's lab.json is unusable; `problem` says where and why, without the advice."""

    def __init__(self, lab: LabDir, reason: str) -> None:
        self.problem = f"lab {lab.name}: {one_line(str(lab.meta))}: {reason}"
        super().__init__(f"{self.problem}; `bmslice lab down --name {lab.name}` clears it")


def read_info(lab: LabDir) -> LabInfo | None:
    """The lab's recorded state; None when it has none; LabStateError when the file is unusable."""
    if not lab.meta.exists() and not lab.meta.is_symlink():
        return None
    try:
        data = parse_json(read_input_text(lab.meta, "the lab's state", STATE_LIMIT, LabError), "lab.json")
        unknown = _unknown_key(data)
        if unknown is not None:
            raise LabError(f"lab.json: {one_line(unknown)}: unknown key")
        info = validated(data, LabInfo, "lab.json")
    except BmsliceError as exc:  # unreadable, not the types lab.json holds, or a value its own checks refuse
        reason = str(exc).removeprefix(f"{one_line(str(lab.meta))}: ").removeprefix("lab.json: ")
        raise LabStateError(lab, reason) from None
    if info.name != lab.name:
        raise LabStateError(lab, f"name: it records lab {info.name!r}")
    return info


def write_info(lab: LabDir, info: LabInfo) -> None:
    """Whole or not at all: a reader never sees half a file."""
    partial = lab.meta.with_suffix(".json.tmp")
    partial.write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    partial.replace(lab.meta)
