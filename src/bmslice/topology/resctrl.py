"""The kernel's resource control (resctrl) as sysfs shows it, read through FsRoot.

/sys/fs/resctrl exists when the kernel supports resctrl; /sys/fs/resctrl/info only once it
is mounted. info/L3 describes cache allocation (`cbm_mask` in hex: every way;
`min_cbm_bits`; `num_closids`; `shareable_bits`), info/MB memory bandwidth allocation
(`bandwidth_gran`, `min_bandwidth`, `num_closids`). Each group is a directory with a
`schemata` file ("L3:0=7f0;1=7f0", "MB:0=100;1=100") and a `tasks` file (thread ids); the
root is the default group, which every thread not moved elsewhere belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from bmslice.model.topology import Resctrl, ResctrlGroup, ResctrlL3, ResctrlMb
from bmslice.numbers import decimal, hexadecimal, is_decimal
from bmslice.safe_text import shown
from bmslice.topology.fsroot import FsRoot

RESCTRL_DIR = "sys/fs/resctrl"
NOT_GROUPS = ("info", "mon_groups", "mon_data")  # directories that are not allocation groups
ABSOLUTE_MB_VENDORS = ("AuthenticAMD", "HygonGenuine")  # MB takes multiples of 1/8 GB/s, not percent
_LIBVIRT_GROUP = re.compile(r"(qemu-[0-9]+-.*)-vcpus_[0-9,-]+")
_HOSTNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def machine_name(domain_id: int, name: str) -> str:
    """libvirt's machine name for a QEMU domain, which starts its resctrl group names: "qemu-ID-NAME"
    with NAME cut to hostname characters, runs of '.'/'-' kept once, none at either end, 64 at most.

    >>> machine_name(3, "Red_k8s_cluster_worker1"), machine_name(12, "-a..b+c-")
    ('qemu-3-Redk8sclusterworker1', 'qemu-12-a.bc')
    """
    out = f"qemu-{domain_id}-"
    skip = True
    for char in name:
        if len(out) >= 64:
            break
        if char in ".-":
            if not skip:
                out += char
            skip = True
        elif char in _HOSTNAME_CHARS:
            out += char
            skip = False
    return out.rstrip("-.")


def group_vm(group: str, names: Collection[str]) -> str | None:
    """The VM (of `names`) a resctrl group belongs to when libvirt made it, else None."""
    match = _LIBVIRT_GROUP.fullmatch(group)
    if match is None:
        return None
    domain_id = match.group(1).split("-")[1]
    return next((n for n in sorted(names) if machine_name(int(domain_id), n) == match.group(1)), None)


def parse_schemata(text: str) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """(L3 masks, MB values) of a schemata file; other resources (L2, SMBA, L3CODE) are skipped.

    The kernel pads names and values ("    MB:0= 60;1=100"), masks are hex without 0x.

    >>> parse_schemata("    L3:0=7f0;1=00f\\n    MB:0= 60;1=100\\n")
    (((0, 2032), (1, 15)), ((0, 60), (1, 100)))
    """
    l3: list[tuple[int, int]] = []
    mb: list[tuple[int, int]] = []
    for line in text.splitlines():
        name, sep, values = line.strip().partition(":")
        if not sep or name not in ("L3", "MB"):
            continue
        for item in values.split(";"):
            key, eq, value = item.partition("=")
            domain = decimal(key.strip())
            number = hexadecimal(value.strip()) if name == "L3" else decimal(value.strip())
            if eq and domain is not None and number is not None:
                (l3 if name == "L3" else mb).append((domain, number))
    return tuple(l3), tuple(mb)


def format_schemata(l3: dict[int, int], mb: dict[int, int] | None = None) -> str:
    """The lines to write to a group's schemata file (only the resources given).

    >>> format_schemata({0: 0x7f0, 2: 0xf}, {0: 40})
    'L3:0=7f0;2=f\\nMB:0=40\\n'
    """
    lines = []
    if l3:
        lines.append("L3:" + ";".join(f"{i}={mask:x}" for i, mask in sorted(l3.items())))
    if mb:
        lines.append("MB:" + ";".join(f"{i}={value}" for i, value in sorted(mb.items())))
    return "".join(f"{line}\n" for line in lines)


def _hex(fs: FsRoot, rel: str) -> int | None:
    text = fs.read_line(rel)
    if text is None:
        return None
    value = hexadecimal(text)
    if value is None:
        fs.warnings.append(f"{fs.display(rel)}: expected a hex mask, got {shown(text, 40)}; ignored")
    return value


def _read_l3(fs: FsRoot, rel: str) -> ResctrlL3 | None:
    mask = _hex(fs, f"{rel}/cbm_mask")
    closids = fs.read_int(f"{rel}/num_closids")
    if not mask or not closids:
        return None
    return ResctrlL3(
        cbm_mask=mask,
        min_cbm_bits=fs.read_int(f"{rel}/min_cbm_bits") or 1,
        num_closids=closids,
        shareable_bits=_hex(fs, f"{rel}/shareable_bits") or 0,
    )


def _mounted_mba_mbps(fs: FsRoot) -> bool:
    for line in (fs.read("proc/mounts") or "").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "resctrl":
            return "mba_MBps" in fields[3].split(",")
    return False


def _read_mb(fs: FsRoot, rel: str, vendor: str) -> ResctrlMb | None:
    closids = fs.read_int(f"{rel}/num_closids")
    if not closids:
        return None
    return ResctrlMb(
        bandwidth_gran=fs.read_int(f"{rel}/bandwidth_gran") or 1,
        min_bandwidth=fs.read_int(f"{rel}/min_bandwidth") or 0,
        num_closids=closids,
        percent=vendor not in ABSOLUTE_MB_VENDORS and not _mounted_mba_mbps(fs),
    )


def group_dir(name: str) -> str:
    return f"{RESCTRL_DIR}/{name}" if name else RESCTRL_DIR


def read_group(fs: FsRoot, name: str) -> ResctrlGroup | None:
    text = fs.read(f"{group_dir(name)}/schemata")
    if text is None:
        return None
    l3, mb = parse_schemata(text)
    return ResctrlGroup(name, l3, mb)


def read_group_tasks(fs: FsRoot, name: str) -> tuple[int, ...]:
    """Thread ids in a group's `tasks` file (one a line)."""
    text = fs.read(f"{group_dir(name)}/tasks") or ""
    return tuple(int(line) for line in text.split() if is_decimal(line))


def read_groups(fs: FsRoot) -> tuple[ResctrlGroup, ...]:
    """The default group, then every other allocation group by name."""
    names = ["", *(n for n in fs.listdir(RESCTRL_DIR) if n not in NOT_GROUPS and fs.is_dir(group_dir(n)))]
    return tuple(group for group in (read_group(fs, n) for n in names) if group is not None)


def read_resctrl(fs: FsRoot, vendor: str) -> Resctrl | None:
    """None without /sys/fs/resctrl (no kernel or hardware support); `mounted` False before mounting."""
    if not fs.is_dir(RESCTRL_DIR):
        return None
    info = f"{RESCTRL_DIR}/info"
    if not fs.is_dir(info):
        return Resctrl(mounted=False)
    return Resctrl(
        mounted=True,
        l3=_read_l3(fs, f"{info}/L3"),
        mb=_read_mb(fs, f"{info}/MB", vendor),
        l3_cdp=fs.is_dir(f"{info}/L3CODE"),
        groups=read_groups(fs),
    )
