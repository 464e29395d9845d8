"""The systemd unit that runs `bmslice exporter` on the host: pure.

It runs on the host's reserved CPUs (CPUAffinity, and the exporter pins itself as well),
reads /proc, /sys and libvirt's socket, writes nothing, and is locked down to that
(`systemd-analyze security` rates it in the tests). host-config and host-apply write it;
nothing enables it but the operator (`systemctl enable --now bmslice-exporter.service`) or
the Ansible collection's `exporter` action.

Values reach the unit only after matching its grammar: absolute paths of plain characters
(no space, quote, `%` specifier or `$`), and a listen address the exporter itself accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bmslice.errors import SpecError
from bmslice.model.listen import DEFAULT_LISTEN, parse_listen
from bmslice.model.plan import Plan
from bmslice.render.systemd_units import HEADER, LIBVIRT_UNITS, UNIT_DIR
from bmslice.safe_text import shown

EXPORTER_UNIT = "bmslice-exporter.service"
EXPORTER_UNIT_PATH = f"{UNIT_DIR}/{EXPORTER_UNIT}"
_PATH_RE = re.compile(r"/[A-Za-z0-9_./+@-]*")  # what ExecStart= takes as one word without quoting or specifiers


@dataclass(frozen=True)
class ExporterUnit:
    """What the unit runs: the bmslice on the host (a program, or `python -m`), the spec, the address."""

    command: tuple[str, ...]  # ("/usr/local/bin/bmslice",) or ("/usr/bin/python3", "-m", "bmslice.cli.main")
    spec: str  # the spec's absolute path on the host
    listen: str = DEFAULT_LISTEN


def _checked_path(value: str, what: str) -> str:
    if not _PATH_RE.fullmatch(value) or "/../" in f"{value}/":
        raise SpecError(
            f"{what} {shown(value)}: the exporter unit takes an absolute path of letters, digits and _ . / + @ -"
        )
    return value


def exporter_unit(plan: Plan, unit: ExporterUnit) -> str:
    """The unit's text; a value outside its grammar is a SpecError naming it."""
    program, *module = unit.command
    words = [_checked_path(program, "exporter command"), *module]
    if module and module != ["-m", "bmslice.cli.main"]:
        raise SpecError(f"exporter command {shown(' '.join(unit.command))}: a program, or python -m bmslice.cli.main")
    spec = _checked_path(unit.spec, "spec")
    parse_listen(unit.listen)  # refused here as the exporter would refuse it
    reserved = plan.host.reserved_cpus.format()
    exec_start = " ".join([*words, "exporter", spec, "--connect", "qemu:///system", "--listen", unit.listen])
    return (
        HEADER + "# bmslice's Prometheus exporter for this host's slices: isolation, drift, hugepages and free room.\n"
        f"# Not enabled by bmslice: `systemctl enable --now {EXPORTER_UNIT}` (or the Ansible collection).\n"
        "[Unit]\n"
        "Description=bmslice exporter: isolation, drift and free room of the slices as Prometheus metrics\n"
        f"After=network.target {' '.join(LIBVIRT_UNITS)}\n"
        "\n[Service]\n"
        "Type=exec\n"
        f"ExecStart={exec_start}\n"
        "# The host's reserved CPUs: it never runs on a CPU it watches (it pins itself there too).\n"
        f"CPUAffinity={reserved}\n"
        "Restart=on-failure\n"
        "RestartSec=30s\n"
        "# It reads /proc, /sys and libvirt's socket, and answers HTTP; it writes nothing.\n"
        "ProtectSystem=strict\n"
        "ProtectHome=read-only\n"
        "PrivateTmp=yes\n"
        "PrivateDevices=yes\n"
        "ProtectKernelTunables=yes\n"
        "ProtectKernelModules=yes\n"
        "ProtectKernelLogs=yes\n"
        "ProtectControlGroups=yes\n"
        "ProtectClock=yes\n"
        "PrivateMounts=yes\n"
        "ProtectHostname=yes\n"
        "NoNewPrivileges=yes\n"
        "RestrictNamespaces=yes\n"
        "RestrictRealtime=yes\n"
        "RestrictSUIDSGID=yes\n"
        "LockPersonality=yes\n"
        "RemoveIPC=yes\n"
        "UMask=0077\n"
        "SystemCallArchitectures=native\n"
        "SystemCallFilter=@system-service\n"
        "SystemCallErrorNumber=EPERM\n"
        "# unix: libvirt; inet: Prometheus; netlink: VF settings from the PF's driver\n"
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n"
        "# read other users' /proc/<pid>/exe (kernel-thread evidence on old kernels)\n"
        "CapabilityBoundingSet=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH\n"
        "MemoryMax=512M\n"
        "TasksMax=32\n"
        "\n[Install]\n"
        "WantedBy=multi-user.target\n"
    )
