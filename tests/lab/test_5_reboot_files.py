"""Scenario: what brings a slice's VFs back after a reboot, on the lab's real kernel, udevd and libvirtd.

`apply` of a slice with a VF (VLAN 100, trust on, spoofchk off) writes the udev rule, the VF
settings and libvirt's qemu hook. Then, the way a reboot would:
- libvirtd ignores the new hook until it reloads (SIGHUP, what `systemctl reload` sends): a
  trust changed behind its back survives a restart of the slice before, and is restored after;
- the PF's driver is reloaded (modprobe -r igb; modprobe igb): its VFs are gone with it, and the
  udev rule, matched on the PF's new network interface, makes them again;
- the slice starts on the fresh VF (trust off, spoofchk on, PF link down, as after a boot): the hook
  brings the PF up and sets trust and spoofchk, libvirt sets MAC and VLAN, verify exits 0.
`destroy` removes the rule, the settings and the hook.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lab import labctl, specs
from lab.conftest import Lab

QEMU = "qemu:///system"
VM = "lab-reboot"
RULES = "/etc/udev/rules.d/70-bmslice-sriov.rules"
SETTINGS = "/etc/bmslice/vf-settings"
HOOK = "/etc/libvirt/hooks/qemu.d/50-bmslice-vf-settings"


def spec() -> dict[str, Any]:
    vf = {"pf": specs.VF_PF, "vlan": 100, "trust": True, "spoofchk": False, "count": 1}
    return {"host": specs.HOST, "vms": [{"name": VM, "vcpus": 2, "memory": "128MiB", "nics": [{"sriov": vf}]}]}


def vf0() -> dict[str, Any]:
    shown = labctl.run("ip", "-j", "-d", "link", "show", specs.VF_PF).expect().json()
    found = [vf for vf in shown[0].get("vfinfo_list", []) if vf["vf"] == 0]
    assert found, f"{specs.VF_PF} has no VF 0: {json.dumps(shown)}"
    return dict(found[0])


def trust_spoofchk() -> tuple[bool, bool]:
    vf = vf0()
    return bool(vf["trust"]), bool(vf["spoofchk"])


def restart_slice() -> None:
    labctl.run("virsh", "-c", QEMU, "destroy", VM).expect()
    labctl.run("virsh", "-c", QEMU, "start", VM, timeout=600).expect()


def wait_for(script: str, want: str, seconds: int = 120) -> str:
    """Run `script` in the lab until it prints `want` (udev works asynchronously)."""
    deadline = time.monotonic() + seconds
    out = ""
    while time.monotonic() < deadline:
        out = labctl.sh(script).out.strip()
        if out == want:
            return out
        time.sleep(3)
    raise AssertionError(f"{script!r} printed {out!r}, not {want!r}, within {seconds} s\n{labctl.console_tail()}")


def test_vfs_and_their_settings_come_back(lab: Lab, tmp_path: Path) -> None:
    lab.ensure()
    path = specs.write(tmp_path, "reboot.yaml", spec())
    plan = labctl.bmslice("plan", path.name, "--json", files=[path]).expect().json()
    dev = plan["vms"][0]["devices"][0]
    pf = dev["pf"]
    numvfs = f"cat /sys/bus/pci/devices/{pf}/sriov_numvfs"
    applied = labctl.bmslice("apply", path.name, "--connect", QEMU, files=[path], timeout=1500)
    try:
        applied.expect()
        files = labctl.sh(f"cat {RULES} {SETTINGS}; test -x {HOOK} && echo hook-executable").expect().out
        rule = f'ACTION=="add", SUBSYSTEM=="net", KERNELS=="{pf}", SUBSYSTEMS=="pci", ATTR{{device/sriov_numvfs}}="1"'
        assert rule in files and f"{VM} {pf} 0 on off" in files and "hook-executable" in files, files
        assert trust_spoofchk() == (True, False)
        assert "warning: libvirt's VF hook is new here: run `systemctl reload libvirtd.service`" in applied.err, applied
        labctl.say("checked: apply wrote the udev rule, the VF settings and the hook (and said to reload libvirtd)")

        # libvirtd looked for hooks when it started, before apply wrote this one
        labctl.run("ip", "link", "set", specs.VF_PF, "vf", "0", "trust", "off", "spoofchk", "on").expect()
        restart_slice()
        assert trust_spoofchk() == (False, True), vf0()
        labctl.say("checked: before libvirtd reloads, a restart of the slice leaves the changed trust as it is")
        labctl.sh('kill -HUP "$(cat /run/libvirtd.pid)" && sleep 2 && virsh -c qemu:///system version').expect()
        restart_slice()
        assert trust_spoofchk() == (True, False), vf0()
        labctl.say("checked: after a reload (SIGHUP), the hook restores trust on, spoofchk off at the slice's start")

        # a reboot's worth: the PF's driver goes and comes back, its VFs with it
        labctl.run("virsh", "-c", QEMU, "destroy", VM).expect()
        labctl.sh("modprobe -r igb && modprobe igb && udevadm settle --timeout=60").expect()
        wait_for(numvfs, "1")
        wait_for(f"cat /sys/class/net/{specs.VF_PF}/operstate", "down")
        assert trust_spoofchk() == (False, True), vf0()  # a fresh VF: the kernel's defaults
        labctl.say(f"checked: igb reloaded, the udev rule made VF 0 of {specs.VF_PF} again (trust off, PF down)")

        labctl.run("virsh", "-c", QEMU, "start", VM, timeout=600).expect()
        vf = vf0()
        vlans = [v.get("vlan") for v in vf.get("vlan_list", [])]
        assert (vf["address"], vlans, vf["trust"], vf["spoofchk"]) == (dev["mac"], [100], True, False), vf
        labctl.bmslice("verify", path.name, "--connect", QEMU, files=[path]).expect()
        labctl.say(
            "checked: the slice starts on the fresh VF: PF up, trust and spoofchk by the hook, MAC and VLAN by libvirt"
        )
    finally:
        destroyed = labctl.bmslice("destroy", path.name, "--connect", QEMU, files=[path], timeout=900)
    destroyed.expect()
    left = labctl.sh(f"ls {RULES} {SETTINGS} {HOOK} 2>/dev/null; {numvfs}").expect().out.split()
    assert left == ["0"], left
    labctl.say("checked: destroy removed the rule, the settings and the hook, and the VFs")
