"""Host files for slices that reserve L3 ways or memory bandwidth: resctrl mounted at boot, the
host's (default group's) ways narrowed before libvirt starts, pure text.

libvirt reads resctrl when it starts and puts a <cachetune> VM's ways only where no group
holds any, the default group included, so: mount resctrl (a systemd mount unit), write the
plan's host masks into /sys/fs/resctrl/schemata (a oneshot service reading
/etc/bmslice/resctrl-default-schemata), and order libvirtd and virtqemud after both.

>>> from bmslice.cpuset import CpuSet
>>> from bmslice.model.plan import HostPlan, Plan
>>> host = HostPlan(CpuSet.of(0), CpuSet(), (), False, l3_host_masks=((0, 0x3F), (2, 0xFF)))
>>> resctrl_files(Plan(host, ()))[DEFAULT_SCHEMATA]
'L3:0=3f;2=ff\\n'
"""

from __future__ import annotations

from bmslice.model.plan import Plan
from bmslice.render.systemd_units import HEADER, LIBVIRT_UNITS, UNIT_DIR, libvirt_dropin, libvirt_dropin_path
from bmslice.topology.resctrl import format_schemata

MOUNT_UNIT = f"{UNIT_DIR}/sys-fs-resctrl.mount"  # systemd names a mount unit after its path
DEFAULT_SCHEMATA = "etc/bmslice/resctrl-default-schemata"
SCHEMATA_SERVICE = f"{UNIT_DIR}/bmslice-resctrl.service"


def _mount() -> str:
    return (
        HEADER + "# resctrl: cache (CAT / L3 QoS) and memory bandwidth (MBA) allocation for the slices.\n"
        "[Unit]\n"
        "Description=resctrl filesystem for bmslice's cache and bandwidth reservations\n"
        "ConditionPathIsDirectory=/sys/fs/resctrl\n"
        "DefaultDependencies=no\n"
        "Before=local-fs.target\n\n"
        "[Mount]\n"
        "What=resctrl\n"
        "Where=/sys/fs/resctrl\n"
        "Type=resctrl\n\n"
        "[Install]\n"
        "WantedBy=local-fs.target\n"
    )


def _service() -> str:
    return (
        HEADER + "[Unit]\n"
        "Description=bmslice: the host keeps only its own L3 ways (resctrl default group)\n"
        "Requires=sys-fs-resctrl.mount\n"
        "After=sys-fs-resctrl.mount\n"
        f"Before={' '.join(LIBVIRT_UNITS)}\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=/bin/sh -c 'cat /{DEFAULT_SCHEMATA} > /sys/fs/resctrl/schemata'\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _libvirt_dropin(with_schemata: bool) -> str:
    units = ["sys-fs-resctrl.mount"] + (["bmslice-resctrl.service"] if with_schemata else [])
    return libvirt_dropin("# libvirt reads resctrl at start: mount it (and narrow the host's ways) first.\n", units)


def dropin_path(unit: str) -> str:
    return libvirt_dropin_path(unit, "resctrl")


def resctrl_files(plan: Plan) -> dict[str, str]:
    """{path: text}; empty when no slice reserves cache ways or memory bandwidth."""
    masks = dict(plan.host.l3_host_masks)
    if not masks and not any(vm.cache is not None for vm in plan.vms):
        return {}
    files = {MOUNT_UNIT: _mount()}
    if masks:
        files[DEFAULT_SCHEMATA] = format_schemata(masks)
        files[SCHEMATA_SERVICE] = _service()
    for unit in LIBVIRT_UNITS:
        files[dropin_path(unit)] = _libvirt_dropin(bool(masks))
    return files
