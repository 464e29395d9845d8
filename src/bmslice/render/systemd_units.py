"""What every host file bmslice renders for systemd shares: the header, the unit directory, the
libvirt daemons whose start a slice's boot-time needs come before, and the drop-ins that order them.

>>> libvirt_dropin_path("virtqemud.service", "resctrl")
'etc/systemd/system/virtqemud.service.d/50-bmslice-resctrl.conf'
"""

from __future__ import annotations

HEADER = "# Written by bmslice from the slicing plan; bmslice host-apply rewrites it.\n"
UNIT_DIR = "etc/systemd/system"
LIBVIRT_UNITS = ("libvirtd.service", "virtqemud.service")  # the monolithic daemon, and the modular one


def libvirt_dropin_path(unit: str, what: str) -> str:
    """bmslice's drop-in `what` for one of LIBVIRT_UNITS."""
    return f"{UNIT_DIR}/{unit}.d/50-bmslice-{what}.conf"


def libvirt_dropin(why: str, needs: list[str]) -> str:
    """A drop-in that has libvirt want, and start after, the units in `needs`; `why` is its comment."""
    return HEADER + f"{why}[Unit]\nWants={' '.join(needs)}\nAfter={' '.join(needs)}\n"
