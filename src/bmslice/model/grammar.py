r"""One validator per grammar: what a value read from outside must be before it reaches a file.

Values from host trees, hwloc and libvirt XML, fleet and placement files and switch tables end
up in modprobe.d, udev rules, Junos `set` lines, an Ansible inventory and summaries. Each
grammar is checked where the value is read (the caller names the file) and asserted again
where a generated file is rendered: a value is refused, never dropped or rewritten.

Every check matches the whole value (`fullmatch`): "8086\n" is not a vendor id.

>>> pci_id("0x8086"), pci_id("10DE")
('0x8086', '0x10de')
>>> kernel_ifname("eth0"), is_kernel_ifname("eth0:1"), is_kernel_ifname(".."), is_kernel_ifname("a\u00a0b")
('eth0', False, False, False)
>>> bool(JUNOS_PORT_RE.fullmatch("ge-0/0/9")), bool(JUNOS_PORT_RE.fullmatch("ge-0/0/9.0"))
(True, False)
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from bmslice.errors import RenderError
from bmslice.model.topology import canonical_pci_address
from bmslice.safe_text import shown

# A PCI vendor or device id: 16 bits, written by sysfs and libvirt as "0x8086".
_PCI_ID_RE = re.compile(r"(?:0x)?([0-9a-f]{4})")
# A PCI class code as sysfs writes it: class, subclass, programming interface.
PCI_CLASS_RE = re.compile(r"0x[0-9a-f]{6}")
# A driver's name, as /sys/bus/pci/drivers/<name> and libvirt's <driver><name> give it: kernel
# driver names are C identifiers with '-' (KBUILD_MODNAME and friends), a few with '.' or '+'.
DRIVER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")
# A module name as modprobe.d takes it (softdep, options): what a .ko file may be called,
# shorter than MODULE_NAME_LEN (56 bytes with its NUL).
MODULE_RE = re.compile(r"[A-Za-z0-9_-]{1,55}")
# A Junos physical interface, never a logical unit (ge-0/0/9.0): type-fpc/pic/port with an
# optional channel (et-0/0/48:1), or an aggregated Ethernet bundle (ae3).
JUNOS_PORT = r"(?:[a-z]{2,4}-[0-9]{1,3}/[0-9]{1,3}/[0-9]{1,3}(?::[0-9]{1,3})?|ae[0-9]{1,4})"
JUNOS_PORT_RE = re.compile(JUNOS_PORT)
# A Junos VLAN name as a switch reports it ("default" and "__juniper_private1__" too).
JUNOS_VLAN_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# A libvirt URI: a scheme, then only characters RFC 3986 allows unescaped. No whitespace,
# quotes, braces (Jinja's `{{`) or control characters: anything else must be %-escaped.
URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]*")

# A link-layer address as the kernel writes it (sysfs `address`, libvirt, hwloc): Ethernet's 6
# bytes, InfiniBand's 20, at most MAX_ADDR_LEN (32).
LINK_ADDRESS_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){0,31}")

IFNAMSIZ = 16  # the kernel's buffer for an interface name, its NUL included
# The kernel's isspace() on a byte (lib/ctype.c): \t \n \v \f \r, space and 0xa0.
_KERNEL_SPACE = frozenset(b"\t\n\v\f\r \xa0")


def pci_id(value: str) -> str:
    """A PCI vendor or device id in the form sysfs writes ("0x8086"); ValueError for anything else."""
    match = _PCI_ID_RE.fullmatch(value.lower()) if value.isascii() else None
    if match is None:
        raise ValueError(f"{shown(value)} is not a PCI id (4 hex digits)")
    return f"0x{match.group(1)}"


def pci_class(value: str) -> str:
    """A PCI class code ("0x020000"); ValueError for anything else."""
    lower = value.lower()
    if not (value.isascii() and PCI_CLASS_RE.fullmatch(lower)):
        raise ValueError(f"{shown(value)} is not a PCI class code (0x and 6 hex digits)")
    return lower


def driver_name(value: str) -> str:
    if not DRIVER_RE.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a kernel driver name (letters, digits, '_', '-', '.', '+')")
    return value


def is_module_name(value: str) -> bool:
    return MODULE_RE.fullmatch(value) is not None


def is_kernel_ifname(value: str) -> bool:
    """The kernel's own rule for a network interface name (net/core/dev.c, dev_valid_name):
    1 to 15 bytes, not "." or "..", no '/', ':' or whitespace byte."""
    data = os.fsencode(value) if "\0" not in value else b"/"  # a NUL can never be in a name
    if not 0 < len(data) < IFNAMSIZ or data in (b".", b".."):
        return False
    return not any(byte in b"/:" or byte in _KERNEL_SPACE for byte in data)


def kernel_ifname(value: str) -> str:
    if not is_kernel_ifname(value):
        raise ValueError(
            f"{shown(value)} is not an interface name (1-15 bytes, not '.' or '..', no '/', ':' or whitespace)"
        )
    return value


def link_address(value: str) -> str:
    """A hardware address in lower case ("02:00:00:00:00:01"); ValueError for anything else."""
    lower = value.lower()
    if not (value.isascii() and LINK_ADDRESS_RE.fullmatch(lower)):
        raise ValueError(f"{shown(value)} is not a link-layer address (hex bytes separated by ':')")
    return lower


def junos_port(value: str) -> str:
    if not JUNOS_PORT_RE.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a Junos physical port such as ge-0/0/9 or ae3 (no unit)")
    return value


def libvirt_uri(value: str) -> str:
    """A libvirt URI whose parts are what they say: its host and user go to ssh (libvirt's and
    Ansible's, which put the host before the command with no "--": a host "-oProxyCommand=..."
    would be an option), its port is a port, and no %-escape hides a control character that
    would reach a file path or the inventory."""
    if not URI_RE.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a libvirt URI such as qemu+ssh://root@server1/system "
            "(other characters must be %-escaped)"
        )
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{shown(value)} is not a libvirt URI: {exc}") from None
    if port == 0:
        raise ValueError(f"{shown(value)} is not a libvirt URI: port 0")
    for what, part in (("host", parts.hostname), ("user", parts.username)):
        if part and unquote(part).startswith("-"):
            raise ValueError(f"{shown(value)}: its {what} starts with '-' (an option to ssh); refused")
    if not unquote(value).isprintable():
        raise ValueError(f"{shown(value)}: a %-escape in it is a control character; refused")
    return value


MAX_TEXT = 256  # a host's name, kernel release or CPU model is at most 64 characters (48 for the model)


def printable_text(value: str) -> str:
    """A name or description a host reports (hostname, kernel release, CPU vendor and model):
    printed by `show` and `discover` and recorded in the plan, so one line of printable
    characters (an escape sequence in a tree's hostname recoloured the terminal), bounded."""
    if not value.isprintable():
        raise ValueError(f"{shown(value)} holds a control character")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{shown(value)} is longer than {MAX_TEXT} characters")
    return value


COMMAND_LINE_MAX = 4096  # the largest COMMAND_LINE_SIZE of any architecture (x86's is 2048)


def kernel_cmdline(value: str) -> str:
    """/proc/cmdline as the kernel writes it: one line (the kernel's parser also splits at tabs),
    no longer than a kernel takes. Printed by `discover`, matched by audit and preflight."""
    if not value.replace("\t", " ").isprintable():
        raise ValueError(f"{shown(value)} holds a control character")
    if len(value.encode(errors="surrogateescape")) > COMMAND_LINE_MAX:
        raise ValueError(f"{shown(value)} is longer than any kernel's command line ({COMMAND_LINE_MAX} bytes)")
    return value


def matches(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    """A grammar from a regex: `value` when `regex` matches all of it, else ValueError."""

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"{shown(value)} is not {what}")
        return value

    return check


def in_file(path: str, what: str, value: str, grammar: Callable[[str], str]) -> str:
    """The render edge: `value` goes into the generated file `path` only in its grammar.

    Every reader checks first; this is the second look, for values that came from a file
    bmslice wrote earlier (a plan recorded in libvirt metadata, a placement) or any path
    no reader covered. RenderError: nothing is written.
    """
    try:
        return grammar(value)
    except ValueError as exc:
        raise RenderError(f"refusing to write {path}: {what}: {exc}") from None


def canonical_pci(value: str) -> str:
    """A PCI address already in canonical form ("0000:01:00.0"), as every plan holds them."""
    if canonical_pci_address(value) != value:
        raise ValueError(f"{shown(value)} is not a PCI address like 0000:01:00.0")
    return value
