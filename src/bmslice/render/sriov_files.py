"""Host files for SR-IOV: the udev rule that recreates each PF's VFs at boot.

>>> print(udev_rules([PfPlan("0000:01:00.1", "eno2", 0, 4)]), end="")
# Written by bmslice: recreate the SR-IOV VFs its slices use, at boot.
ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:01:00.1", ATTR{sriov_numvfs}="4"
"""

from __future__ import annotations

from collections.abc import Sequence

from bmslice.model.plan import PfPlan

UDEV_RULES_PATH = "etc/udev/rules.d/70-bmslice-sriov.rules"


def udev_rules(pfs: Sequence[PfPlan]) -> str:
    # Matched by PCI address, not interface name: names can change, the slot does not.
    lines = ["# Written by bmslice: recreate the SR-IOV VFs its slices use, at boot."]
    for pf in sorted(pfs, key=lambda p: p.address):
        lines.append(f'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="{pf.address}", ATTR{{sriov_numvfs}}="{pf.numvfs}"')
    return "\n".join(lines) + "\n"
