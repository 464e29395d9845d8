"""Reading the user's files, and turning validation errors into one line each.

Every file the user names (spec, fleet file, cloud-init inputs, SSH keys, password hash,
hwloc XML) is read through `read_input_bytes`: bmslice runs as root, and a path to a FIFO
would hang it, `/dev/zero` would fill its memory and a directory or a binary file would
end in a traceback. The reader opens without blocking, refuses anything but a regular
file before reading a byte, and never reads more than its limit plus one byte.

YAML and JSON are parsed strictly on top of it: a key given twice is an error (YAML keeps
the last one silently), and so are integers too long to be a count or a size, NaN and
Infinity, structures nested deeper than any spec or cloud-config is, and structures that
hold or expand (through YAML aliases) into more than MAX_NODES values. YAML is counted on
libyaml's event stream before a node is built, so an 11 MB list of a million short items is
refused in a fraction of a second instead of being built (two minutes and 2.6 GB in PyYAML's
pure-Python composer); libyaml parses, PyYAML only constructs.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import msgspec
import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode

from bmslice.errors import BmsliceError, SpecError
from bmslice.model.fields import decode_hook
from bmslice.safe_text import one_line, shown

MIB = 1024 * 1024
INPUT_LIMIT = 16 * MIB  # a spec, key file or hwloc XML of a 1,000-core machine is far below this
MAX_INT_DIGITS = 30  # no count, size or id bmslice takes has more digits
MAX_NODES = 100_000  # parsed YAML/JSON values, aliases counted each time they are used
MAX_DEPTH = 100  # nested collections; a spec is 5 deep, a cloud-config rarely 10
_READ_CHUNK = MIB


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _limit_text(limit: int) -> str:
    return f"{limit // MIB} MiB" if limit % MIB == 0 else f"{limit} bytes"


def read_input_bytes(path: Path, what: str, limit: int = INPUT_LIMIT, error: type[BmsliceError] = SpecError) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; else `error` naming file and reason."""

    def refuse(reason: str) -> BmsliceError:
        return error(f"{one_line(str(path))}: cannot read {what}: {reason}")

    try:
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in a path taken from a file
        raise refuse(getattr(exc, "strerror", None) or str(exc)) from None
    try:
        info = os.fstat(fd)  # the file we opened, not whatever the path names a moment later
        if not stat.S_ISREG(info.st_mode):
            raise refuse(f"{_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise refuse(f"{info.st_size} bytes, more than the {_limit_text(limit)} limit")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # a file that grows while we read stops at limit + 1 bytes
            chunk = os.read(fd, min(_READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if size > limit:
        raise refuse(f"more than the {_limit_text(limit)} limit")
    return b"".join(chunks)


def read_input_text(path: Path, what: str, limit: int = INPUT_LIMIT, error: type[BmsliceError] = SpecError) -> str:
    """`read_input_bytes` decoded as strict UTF-8 (a binary file is refused, never half-read)."""
    data = read_input_bytes(path, what, limit, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{one_line(str(path))}: cannot read {what}: not UTF-8 text "
            f"(byte 0x{data[exc.start]:02x} at line {line}, offset {exc.start})"
        ) from None


# --- YAML ---------------------------------------------------------------------------------


# libyaml's parser where PyYAML has it (Debian's python3-yaml and the wheels do): the same
# events and marks, fifty times faster than the pure-Python one.
if TYPE_CHECKING:  # both are a parser under PyYAML's SafeConstructor and Resolver
    _SafeLoader = yaml.SafeLoader
else:
    _SafeLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


class _StrictLoader(_SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and integers too long to mean anything."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *defaults" may be overridden by the mapping's own keys
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class refuses it
            line = key_node.start_mark.line + 1
            if first is not None:
                raise ConstructorError(
                    None, None, f"duplicate key {shown(key)} (first given at line {first})", key_node.start_mark
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        digits = sum(ch.isalnum() for ch in str(node.value))  # "0x" and sexagesimal ints too
        if digits > MAX_INT_DIGITS:
            raise ConstructorError(
                None, None, f"an integer of {digits} digits is too large for any value here", node.start_mark
            )
        return super().construct_yaml_int(node)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def check_size(data: Any, origin: str, limit: int = MAX_NODES) -> None:
    """Refuse data that expands into more than `limit` values (a YAML alias bomb).

    Counted with early exit, so a billion-laughs document is refused after `limit` steps.
    """
    count = 0
    stack = [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            raise SpecError(f"{origin}: more than {limit} values (aliases expanded); refusing to expand it")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """ "at line N: what" from any PyYAML error (a ReaderError, for a control character, has no mark)."""
    mark = getattr(exc, "problem_mark", None)
    position = getattr(exc, "position", None)
    line = mark.line + 1 if mark is not None else None
    if line is None and isinstance(position, int):
        line = text.count("\n", 0, position) + 1
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or "invalid YAML"
    return f"{f' at line {line}' if line is not None else ''}: {one_line(str(problem))}"


def _bounded(load: Callable[[], Any], origin: str, what: str) -> Any:
    """`load()`, refused when nested past Python's recursion limit or expanding past MAX_NODES."""
    try:
        data = load()
    except RecursionError:
        raise SpecError(f"{origin}: {what}: nested too deeply") from None
    check_size(data, origin)
    return data


_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _count_events(text: str, origin: str) -> None:
    """Refuse a document of more than MAX_NODES values or nested deeper than MAX_DEPTH, from
    the parser's events, before one node is built (aliases are counted once here, and again
    each time they are used by `check_size` once the cheap, shared structure exists)."""
    count = depth = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, _CLOSE):
            depth -= 1
            continue
        if isinstance(event, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(_too_deep(origin))
        elif not isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
            continue
        count += 1
        if count > MAX_NODES:
            raise SpecError(f"{origin}: more than {MAX_NODES} values; refusing to read it")


def _too_deep(origin: str) -> str:
    return f"{origin}: YAML error: nested too deeply (more than {MAX_DEPTH} levels)"


def _load_yaml(text: str, origin: str) -> Any:
    try:
        _count_events(text, origin)
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(getattr(exc, "problem", "")):  # libyaml's own limit, met first
            raise SpecError(_too_deep(origin)) from None
        raise SpecError(f"{origin}: YAML error{_yaml_problem(exc, text)}") from None


def parse_yaml(text: str, origin: str) -> Any:
    """Strict YAML of `text`; SpecError names `origin` and the line."""
    return _bounded(lambda: _load_yaml(text, origin), origin, "YAML error")


def read_yaml(path: Path, what: str) -> Any:
    """Parsed YAML of `path`; SpecError names the file (and the line of a syntax error)."""
    return parse_yaml(read_input_text(path, what), one_line(str(path)))


# --- JSON ---------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number bmslice accepts")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{shown(text)} is too large for any value here")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {shown(key)}")
        out[key] = value
    return out


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is too large for any value here")
    return int(text)


def _load_json(text: str, origin: str) -> Any:
    try:
        return json.loads(
            text,
            parse_constant=_no_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        raise SpecError(f"{origin}: not JSON: {exc.msg} at line {exc.lineno}") from None
    except ValueError as exc:
        raise SpecError(f"{origin}: not JSON bmslice accepts: {exc}") from None


def parse_json(text: str, origin: str) -> Any:
    """Strict JSON: no NaN or Infinity, no 4,000-digit integers, no key twice; SpecError names `origin`."""
    return _bounded(lambda: _load_json(text, origin), origin, "not JSON bmslice accepts")


def read_json(path: Path, what: str) -> Any:
    """Parsed strict JSON of `path` (for the fleet's placement file and the like)."""
    return parse_json(read_input_text(path, what), one_line(str(path)))


# --- validation -------------------------------------------------------------------------

_Model = TypeVar("_Model")
# "Expected `int`, got `bool` - at `$.vms[0].vcpus`"; "bad name - at `key` in `$.switches`"
_MESSAGE_RE = re.compile(r"(?P<reason>.*?)(?: - at `(?P<key>key` in `)?\$(?P<path>[^`]*)`)?", re.DOTALL)
_STEP_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_FIELD_RE = re.compile(r"Object (contains unknown|missing required) field `(.*)`", re.DOTALL)


def validated(data: Any, model: type[_Model], origin: str) -> _Model:
    """`data` converted strictly into `model`; SpecError names `origin`, the field and the reason."""
    try:
        return msgspec.convert(data, model, strict=True, dec_hook=decode_hook)
    except msgspec.ValidationError as exc:
        raise validation_error(origin, exc, model, data) from None


def _unwrap(kind: Any) -> Any:
    """The type inside Annotated[...] and Optional[...]."""
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind = get_args(kind)[0]
        elif origin in (Union, UnionType):
            kind = next(arg for arg in get_args(kind) if arg is not type(None))
        else:
            return kind


def _fails(value: Any, kind: Any) -> bool:
    try:
        msgspec.convert(value, kind, strict=True, dec_hook=decode_hook)
    except (msgspec.ValidationError, ValueError, TypeError):
        return True
    return False


def _field_type(model: Any, name: str) -> Any:
    """The type of field `name` of a Struct or dataclass; None when `model` is neither."""
    try:
        return get_type_hints(_unwrap(model), include_extras=True).get(name)
    except (TypeError, NameError):
        return None


def _walk(path: str, model: Any, data: Any) -> tuple[list[int | str], Any]:
    """msgspec's path ("$.vms[0].nics", "$.switches[...].junos") as parts, with the type there.

    msgspec writes a mapping's key as "[...]": the key is the first one whose value fails.
    """
    parts: list[int | str] = []
    kind: Any = model
    for step in _STEP_RE.finditer(path):
        name, index = step.group(1), step.group(2)
        if name is not None:
            kind = _field_type(kind, name)
            data = data.get(name) if isinstance(data, dict) else None
            parts.append(name)
        elif index is not None:
            args = get_args(_unwrap(kind))
            kind = args[0] if args else None
            data = data[int(index)] if isinstance(data, list | tuple) and int(index) < len(data) else None
            parts.append(int(index))
        else:
            args = get_args(_unwrap(kind))
            kind = args[1] if len(args) == 2 else None
            items = data.items() if isinstance(data, dict) and kind is not None else ()
            key, data = next(((k, v) for k, v in items if _fails(v, kind)), ("...", None))
            parts.append(str(key))
    return parts, kind


def _choices(kind: Any) -> list[Any] | None:
    kind = _unwrap(kind)
    if isinstance(kind, type) and issubclass(kind, Enum):
        return [member.value for member in kind]
    if get_origin(kind) is Literal:
        return list(get_args(kind))
    return None


def _location(parts: list[int | str]) -> str:
    """["vms", 0, "vcpus"] -> "vms[0].vcpus"."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _reason(message: str, parts: list[int | str], kind: Any) -> str:
    field = _FIELD_RE.fullmatch(message)
    if field:
        parts.append(field.group(2))
        return "unknown key" if field.group(1) == "contains unknown" else "required field is missing"
    choices = _choices(kind) if message.startswith("Invalid enum value") else None
    if choices:
        names = [repr(choice) for choice in choices]
        listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
        return f"expected {listed}, got {message.removeprefix('Invalid enum value ')}"
    return message


def validation_error(origin: str, exc: msgspec.ValidationError, model: Any, data: Any) -> SpecError:
    """The problem as "FILE: FIELD: REASON" (the field is left out for the top level)."""
    match = _MESSAGE_RE.fullmatch(str(exc))
    assert match is not None  # the pattern matches any text
    parts, kind = _walk(match.group("path") or "", model, data)
    reason = _reason(match.group("reason"), parts, kind)
    where = one_line(_location(parts))  # a key the user wrote may hold anything
    if len(where) > 120:
        where = where[:117] + "..."
    return SpecError(f"{origin}: {where + ': ' if where else ''}{one_line(reason)}")
