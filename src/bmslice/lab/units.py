"""The lab's own systemd units, for a lab that boots this machine's systemd as PID 1 (pure).

Such a lab boots `bmslice-lab.target` (`systemd.unit=` on its kernel command line), not the
machine's default target: the machine's own services (cloud-init, databases, ...) are not
part of the server under test. The target pulls in what a server of slices runs:
sysinit (udev with its rules, journald, modules-load, tmpfiles, mounts), libvirtd as a
server has it enabled, and two units of the lab's: `bmslice-lab-prepare.service` (the
fresh server's libvirt state on the first boot, hostname and management network at each)
and `bmslice-lab-jobs.service`, the job mailbox. Stage 1 puts them in the lab's `/run`, so
the server's `/etc` holds only what the server (and bmslice) writes there. A machine that
runs libvirtd without its package's units (started by hand, as on this project's machines)
gets Debian's own, from the lab's cache (`libvirt-daemon-system`), in the same place.
"""

from __future__ import annotations

SHARE = "/mnt/bmslice-lab"
TARGET = "bmslice-lab.target"
# libvirt-daemon-system's units: libvirtd and the sockets and log/lock daemons it requires
LIBVIRT_UNITS = (
    "libvirtd.service",
    "libvirtd.socket",
    "libvirtd-ro.socket",
    "libvirtd-admin.socket",
    "virtlogd.service",
    "virtlogd.socket",
    "virtlogd-admin.socket",
    "virtlockd.service",
    "virtlockd.socket",
    "virtlockd-admin.socket",
)


def lab_units(libvirtd: bool) -> dict[str, str]:
    """File name -> content of each unit."""
    # what libvirt-daemon-system's presets enable on a server: the daemon and its sockets
    server = " libvirtd.service libvirtd.socket libvirtd-ro.socket virtlogd.socket virtlockd.socket" if libvirtd else ""
    return {
        TARGET: (
            "[Unit]\n"
            "Description=bmslice lab: the server under test\n"
            "Requires=basic.target\n"
            "After=basic.target\n"
            f"Wants=bmslice-lab-prepare.service bmslice-lab-jobs.service{server}\n"
            "AllowIsolate=yes\n"
        ),
        "bmslice-lab-prepare.service": (
            "[Unit]\n"
            "Description=bmslice lab: a fresh server's libvirt state, hostname, management network\n"
            f"RequiresMountsFor={SHARE}\n"
            "After=systemd-udev-trigger.service local-fs.target\n"
            "Before=libvirtd.service virtlogd.service virtqemud.service bmslice-lab-jobs.service\n"
            "\n"
            "[Service]\n"
            "Type=oneshot\n"
            "RemainAfterExit=yes\n"
            f"ExecStart=/bin/sh {SHARE}/prepare.sh\n"
        ),
        "bmslice-lab-jobs.service": (
            "[Unit]\n"
            "Description=bmslice lab: the job mailbox on the lab share\n"
            f"RequiresMountsFor={SHARE}\n"
            f"After=bmslice-lab-prepare.service{' libvirtd.service' if libvirtd else ''}\n"
            "\n"
            "[Service]\n"
            "Type=simple\n"
            f"ExecStart=/bin/sh {SHARE}/jobs.sh\n"
        ),
    }
