"""Host files for SR-IOV: what brings a slice's VFs back after a reboot, as {path: text}: pure.

- the udev rule that recreates each PF's VFs when its network interface appears;
- the VF settings libvirt does not restore (trust, spoofchk), one line per VF, and the libvirt
  qemu hook that sets them before each start of a slice (libvirt sets a VF's MAC and VLAN itself).

>>> print(udev_rules([PfPlan("0000:01:00.1", "eno2", 0, 4)]).splitlines()[-1])
ACTION=="add", SUBSYSTEM=="net", KERNELS=="0000:01:00.1", SUBSYSTEMS=="pci", ATTR{device/sriov_numvfs}="4"
"""

from __future__ import annotations

from collections.abc import Sequence

from bmslice.model.grammar import canonical_pci, in_file, matches
from bmslice.model.plan import PfPlan, Plan
from bmslice.model.spec import VM_NAME_RE
from bmslice.render.systemd_units import LIBVIRT_UNITS

UDEV_RULES_PATH = "etc/udev/rules.d/70-bmslice-sriov.rules"
VF_SETTINGS_PATH = "etc/bmslice/vf-settings"
# libvirt (6.5+) runs every executable in hooks/qemu.d/ besides hooks/qemu: an operator's own
# hooks/qemu stays theirs.
VF_HOOK_PATH = "etc/libvirt/hooks/qemu.d/50-bmslice-vf-settings"
EXECUTABLES = frozenset({VF_HOOK_PATH})
HOOK_RELOAD = (
    f"run `systemctl reload {LIBVIRT_UNITS[0]}` (or {LIBVIRT_UNITS[1]}): libvirt looks for hook scripts "
    f"only when it starts or reloads, and /{VF_HOOK_PATH} restores each VF's trust and spoofchk before its "
    "slice starts"
)

_VM_NAME = matches(VM_NAME_RE, "a domain name")
_WRITTEN = "# Written by bmslice from the slicing plan; bmslice apply and host-apply rewrite it."


def udev_rules(pfs: Sequence[PfPlan]) -> str:
    # The PF's network interface, not its PCI device: on the PCI "add" event the driver may not be
    # bound yet, and the kernel refuses sriov_numvfs without one (ENOENT). The interface exists only
    # once the driver runs; it is matched by the PF's PCI address (KERNELS: an ancestor of the
    # interface; names can change, the slot does not). A VF's own interface never matches: its
    # parent is the VF, not the PF. A repeated "add" (udevadm trigger) writes the same count: no-op.
    lines = [
        "# Written by bmslice: recreate the SR-IOV VFs its slices use, at boot.",
        "# Matched on each PF's network interface, which appears once the PF's driver is bound.",
    ]
    for pf in sorted(pfs, key=lambda p: p.address):
        address = in_file(UDEV_RULES_PATH, "PF", pf.address, canonical_pci)
        lines.append(
            f'ACTION=="add", SUBSYSTEM=="net", KERNELS=="{address}", SUBSYSTEMS=="pci", '
            f'ATTR{{device/sriov_numvfs}}="{int(pf.numvfs)}"'
        )
    return "\n".join(lines) + "\n"


def _on_off(value: bool | None, default: bool) -> str:
    return "on" if (default if value is None else value) else "off"


def vf_settings(plan: Plan) -> str:
    """One line per VF: domain, PF address, VF index, trust, spoofchk (defaults: off, on; faults.md 23)."""
    lines = [
        _WRITTEN,
        f"# The trust and spoofchk of each slice's VFs, set by /{VF_HOOK_PATH} before the slice starts.",
        "# domain PF VF trust spoofchk",
    ]
    for vm in plan.vms:
        for dev in vm.devices:
            if dev.type == "vf" and dev.pf is not None and dev.vf_index is not None:
                trust, spoofchk = _on_off(dev.trust, False), _on_off(dev.spoofchk, True)
                # The hook reads each line as five words: a name or PF with a space or a newline in it
                # would shift them (or start a line for another domain).
                name = in_file(VF_SETTINGS_PATH, "domain", vm.name, _VM_NAME)
                pf = in_file(VF_SETTINGS_PATH, "PF", dev.pf, canonical_pci)
                lines.append(f"{name} {pf} {int(dev.vf_index)} {trust} {spoofchk}")
    return "\n".join(lines) + "\n"


# POSIX sh. libvirt runs it with DOMAIN OPERATION SUB-OPERATION EXTRA (the domain XML on stdin) and
# waits for it: it must not call back into libvirt. It derives the host root from its own path, so
# the same script works on a copy of a host (the tests) and on "/".
VF_HOOK = f"""#!/bin/sh
{_WRITTEN}
# Before a slice starts (libvirt's "prepare begin"), set the trust and spoofchk of its SR-IOV VFs
# from /{VF_SETTINGS_PATH}: a fresh VF (after a reboot or a PF driver reload) has trust off and
# spoofchk on, and libvirt restores only a VF's MAC and VLAN. Their PF's link goes up first:
# libvirt sets the MAC and VLAN through it and refuses while it is down, as an unused port is
# after a boot. It talks to the kernel (ip) and never to libvirt, which waits for it. What it
# cannot set is reported on stderr (libvirtd's log) and does not stop the start: verify reports it.
set -u
[ "${{2:-}}" = prepare ] && [ "${{3:-}}" = begin ] || exit 0
root=${{0%/etc/libvirt/hooks/qemu.d/*}}
settings=$root/{VF_SETTINGS_PATH}
[ -r "$settings" ] || exit 0
PATH=$PATH:/usr/sbin:/sbin
while read -r domain pf vf trust spoofchk; do
    [ "$domain" = "$1" ] || continue
    ifname=
    for dev in "$root/sys/bus/pci/devices/$pf/net/"*; do
        if [ -e "$dev" ]; then
            ifname=${{dev##*/}}
            break
        fi
    done
    if [ -z "$ifname" ]; then
        echo "bmslice: $1: PF $pf has no network interface: VF $vf keeps its trust and spoofchk" >&2
        continue
    fi
    ip link set dev "$ifname" up || echo "bmslice: $1: could not set $ifname up for VF $vf" >&2
    if ! ip link set dev "$ifname" vf "$vf" trust "$trust" spoofchk "$spoofchk"; then
        echo "bmslice: $1: could not set trust $trust spoofchk $spoofchk on VF $vf of $ifname" >&2
    fi
done <"$settings"
exit 0
"""


def sriov_host_files(plan: Plan) -> dict[str, str]:
    """The SR-IOV files, when the plan gives any VM a VF."""
    if not plan.host.sriov:
        return {}
    return {
        UDEV_RULES_PATH: udev_rules(plan.host.sriov),
        VF_SETTINGS_PATH: vf_settings(plan),
        VF_HOOK_PATH: VF_HOOK,
    }
