"""Which Linux distribution family a host runs, read from /etc/os-release, and what follows from it.

A family is known by ID and ID_LIKE (os-release(5)): Ubuntu says `ID=ubuntu ID_LIKE=debian`,
Rocky says `ID="rocky" ID_LIKE="rhel centos fedora"`, SLES says `ID="sles" ID_LIKE="suse"`.

>>> os_ids('NAME="Ubuntu"\\nID=ubuntu\\nID_LIKE=debian\\n')
('ubuntu', 'debian')
>>> distro_of(("rocky", "rhel", "centos", "fedora"))
<Distro.RHEL: 'rhel'>
>>> qemu_binaries(Distro.DEBIAN), qemu_binaries(Distro.RHEL)
(('qemu-system-x86_64',), ('qemu-kvm',))
>>> initramfs_command(Distro.SUSE)
'dracut -f --regenerate-all'
"""

from __future__ import annotations

import re
from enum import StrEnum

_ASSIGNMENT = re.compile(r"([A-Z_]+)=(.*)")


class Distro(StrEnum):
    DEBIAN = "debian"  # Debian, Ubuntu and their derivatives
    RHEL = "rhel"  # RHEL, CentOS, Rocky, Alma, Fedora
    SUSE = "suse"  # SLES, openSUSE
    UNKNOWN = "unknown"


_FAMILIES = {
    "debian": Distro.DEBIAN,
    "ubuntu": Distro.DEBIAN,
    "rhel": Distro.RHEL,
    "fedora": Distro.RHEL,
    "centos": Distro.RHEL,
    "suse": Distro.SUSE,
    "opensuse": Distro.SUSE,
    "sles": Distro.SUSE,
}


def os_ids(text: str) -> tuple[str, ...]:
    """ID, then the words of ID_LIKE, lower-cased, from the text of an os-release file."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _ASSIGNMENT.fullmatch(line.strip())
        if match:
            values[match.group(1)] = match.group(2).strip().strip("\"'")
    ids = [values.get("ID", ""), *values.get("ID_LIKE", "").split()]
    return tuple(dict.fromkeys(i.lower() for i in ids if i))


def distro_of(ids: tuple[str, ...]) -> Distro:
    """The first ID (the distribution itself before what it is like) that names a known family."""
    for os_id in ids:
        family = _FAMILIES.get(os_id)
        if family is not None:
            return family
    return Distro.UNKNOWN


def qemu_binaries(distro: Distro) -> tuple[str, ...]:
    """The names QEMU's x86 system emulator runs under: RHEL ships /usr/libexec/qemu-kvm,
    Debian, Ubuntu and SUSE /usr/bin/qemu-system-x86_64. Unknown: both."""
    if distro is Distro.RHEL:
        return ("qemu-kvm",)
    if distro is Distro.UNKNOWN:
        return ("qemu-system-x86_64", "qemu-kvm")
    return ("qemu-system-x86_64",)


def initramfs_command(distro: Distro) -> str | None:
    """The command that rebuilds every installed kernel's initramfs (the next boot may start any
    of them); None when the family is unknown."""
    if distro is Distro.DEBIAN:
        return "update-initramfs -u -k all"
    if distro in (Distro.RHEL, Distro.SUSE):
        return "dracut -f --regenerate-all"
    return None
