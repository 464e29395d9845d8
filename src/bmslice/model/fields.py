"""Validated fields shared by the spec, the fleet file and the records bmslice reads back.

The models are msgspec Structs, converted strictly from parsed data (`input_file.validated`).
msgspec checks types, ranges and unknown keys itself; a field with a grammar of its own (a VM
name, an interface, a PCI address canonicalised, a size such as "4G") has a *checked type*:
a class msgspec does not know, so it hands the raw value to `decode_hook`, which calls the
type's `parse` and reports a ValueError/TypeError at the field's own path.

A checked type is never instantiated: its metaclass answers `isinstance` for the plain value
it stands for (a `str`, an `int`, a `Path`), so the parsed value stays a plain `str` (msgspec
checks what the hook returns; a `str` subclass would not encode, dump as YAML or compare by
type). For mypy each checked type is the plain type it stands for (see the TYPE_CHECKING
blocks), so code builds models from already-typed values without a cast.

Each grammar refuses a bad value with "'<value>' is not <what>", which the loaders turn into
one line naming the file and the field. Every pattern must match the whole value
(fullmatch): with `re.match` and a `$`, "eno1\n" would pass and carry its newline into a file
name, an XML file or a generated config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import msgspec.json

from bmslice.model.grammar import canonical_pci, is_kernel_ifname, matches
from bmslice.model.topology import canonical_pci_address
from bmslice.safe_text import shown

# What a spec or fleet file may call an interface: the kernel's rule (grammar.is_kernel_ifname)
# narrowed to characters no generated file has to quote.
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")
CPU_FEATURE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

_KINDS = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null", list: "array", dict: "object"}


def kind(value: object) -> str:
    """What a parsed value is, in msgspec's words ("int", "str", "array", ...)."""
    return _KINDS.get(type(value), type(value).__name__)


def expect(value: object, base: type) -> None:
    """TypeError in msgspec's words unless `value` is exactly a `base` (True is no int)."""
    if type(value) is not base:
        raise TypeError(f"Expected `{_KINDS.get(base, base.__name__)}`, got `{kind(value)}`")


class CheckedType(type):
    """The metaclass of checked types: an instance is a plain value `parse` returned."""

    base: type
    parse: Callable[[Any], Any]

    def __instancecheck__(cls, value: object) -> bool:
        return isinstance(value, cls.base)


def checked(name: str, base: type, parse: Callable[[Any], Any]) -> Any:
    """A checked type whose values are `base` values; `parse` takes the raw value (any type)."""
    return CheckedType(name, (), {"base": base, "parse": staticmethod(parse)})


def text(name: str, check: Callable[[str], str]) -> Any:
    """A checked string: the raw value must be a `str`, and `check` returns it (normalised)."""

    def parse(value: object) -> str:
        expect(value, str)
        assert isinstance(value, str)
        return check(value)

    return checked(name, str, parse)


def matching(name: str, regex: re.Pattern[str], what: str) -> Any:
    """A checked string that must match all of `regex`."""
    return text(name, matches(regex, what))


PATH_MAX_BYTES = 4095  # Linux's PATH_MAX (4096) less the NUL
NAME_MAX_BYTES = 255  # Linux's NAME_MAX: one name of a path


def printable_path(value: object) -> Path:
    """A path from a file: a string with no control character (a newline in a path would start
    a new line of whatever generated file or message carries it), as long as `bounded_path` allows."""
    if isinstance(value, Path):
        value = str(value)
    expect(value, str)
    if not str(value).isprintable():
        raise ValueError(f"{shown(value)} holds a control character; refusing it as a path")
    return bounded_path(str(value))


def bounded_path(text: str) -> Path:
    """`text` as a path when the kernel takes it: a longer one failed as ENAMETOOLONG wherever
    it was first used (`Path.is_dir` raises it), a traceback. The command line's paths come here."""
    encoded = os.fsencode(text)
    if len(encoded) > PATH_MAX_BYTES:
        raise ValueError(f"{shown(text)} is {len(encoded)} bytes, longer than a path may be ({PATH_MAX_BYTES})")
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX_BYTES:
        raise ValueError(
            f"{shown(text)} holds a name of {len(longest)} bytes, longer than a file name may be ({NAME_MAX_BYTES})"
        )
    return Path(text)


def decode_hook(kind_: type, value: Any) -> Any:
    """msgspec's dec_hook: checked types parse their value; a Path comes from a string."""
    if isinstance(kind_, CheckedType):
        return kind_.parse(value)
    if kind_ is Path:
        return printable_path(value)
    raise NotImplementedError(kind_)


def as_data(model: object) -> Any:
    """A model as the plain data a file would hold (paths as strings), for `validated` again."""
    return msgspec.json.decode(msgspec.json.encode(model, enc_hook=_encode))


def _encode(value: object) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(type(value))


def ifname(value: str) -> str:
    if not (IFNAME_RE.fullmatch(value) and is_kernel_ifname(value)):
        raise ValueError(f"{shown(value)} is not an interface name")
    return value


def device_ref(value: str) -> str:
    """An interface name, or a PCI address (returned in canonical form)."""
    address = canonical_pci_address(value)
    if address:
        return address
    if not (IFNAME_RE.fullmatch(value) and is_kernel_ifname(value)):
        raise ValueError(f"{shown(value)} is neither an interface name nor a PCI address like 0000:01:00.0")
    return value


if TYPE_CHECKING:
    IfName = str
    CpuFeature = str
    DeviceRef = str
    CanonicalPci = str
else:
    IfName = text("IfName", ifname)
    CpuFeature = matching("CpuFeature", CPU_FEATURE_RE, "a CPU feature name")
    DeviceRef = text("DeviceRef", device_ref)
    CanonicalPci = text("CanonicalPci", canonical_pci)  # as bmslice writes it: no other form read back
