"""Reading the user's YAML files and turning validation errors into one line each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bmslice.errors import SpecError


def read_yaml(path: Path, what: str) -> Any:
    """Parsed YAML of `path`; SpecError names the file (and the line of a syntax error)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: YAML error{where}: {problem}") from None


def _location(loc: tuple[int | str, ...]) -> str:
    """("vms", 0, "vcpus") -> "vms[0].vcpus"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _reason(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    return str(error["msg"]).removeprefix("Value error, ")


def validation_error(origin: str, exc: ValidationError) -> SpecError:
    """The first problem as "FILE: FIELD: REASON" (the field is left out for the top level)."""
    first = exc.errors()[0]
    where = _location(tuple(first["loc"]))
    return SpecError(f"{origin}: {where + ': ' if where else ''}{_reason(first)}")
