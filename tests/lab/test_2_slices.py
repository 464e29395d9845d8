"""Scenario 2: apply / verify / destroy with a whole NIC and VFs on the lab's real kernel.

One VM takes the whole igb NIC of node 1, another takes two VFs of node 0's igb (VLAN,
MAC, trust, spoofchk set). The VMs run, the devices sit on vfio-pci, the VF settings read
back through netlink match, verify exits 0 and catches a VF changed behind bmslice's
back; destroy gives the NIC back to igb and sets the VF count back. Asking for the
management NIC is refused and changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from lab import labctl, specs
from lab.conftest import Lab

QEMU = "qemu:///system"

# What a change to the host would show: PCI network functions and their drivers, VF counts,
# interfaces, domains, bmslice's udev rule.
STATE_SCRIPT = r"""
for dev in /sys/bus/pci/devices/*; do
    case $(cat "$dev/class") in 0x02*) ;; *) continue ;; esac
    echo "pci ${dev##*/} driver=$(basename "$(readlink "$dev/driver" 2>/dev/null)") numvfs=$(cat "$dev/sriov_numvfs" 2>/dev/null)"
done
ip -br link | awk '{print "link", $1, $2}'
virsh -c qemu:///system list --all --name | sed '/^$/d; s/^/domain /'
ls /etc/udev/rules.d 2>/dev/null | sed 's/^/udev /'
"""


def host_state() -> str:
    """Sorted: interfaces list in index order, which changes when a NIC comes back from vfio-pci."""
    return "\n".join(sorted(labctl.sh(STATE_SCRIPT).expect().out.splitlines())) + "\n"


def _vf_settings(pf: str) -> list[dict[str, object]]:
    shown = labctl.run("ip", "-j", "-d", "link", "show", pf).expect().json()
    return list(shown[0].get("vfinfo_list", []))


def test_management_nic_is_refused_and_nothing_changes(lab: Lab, tmp_path: Path) -> None:
    lab.ensure()
    topo = labctl.bmslice("discover", "--json").expect().json()
    mgmt = topo["default_route_interface"]
    before = host_state()
    spec = {
        "host": specs.HOST,
        "vms": [{"name": "lab-mgmt", "vcpus": 2, "memory": "128MiB", "nics": [{"passthrough": mgmt}]}],
    }
    path = specs.write(tmp_path, "mgmt.yaml", spec)
    refused = labctl.bmslice("apply", path.name, "--connect", QEMU, files=[path])
    errors = [line for line in refused.err.splitlines() if line.startswith("error:")]
    assert refused.rc == 2 and len(errors) == 1 and "default route" in errors[0], refused.report()
    assert "Traceback" not in refused.err, refused.report()
    after = host_state()
    assert after == before, f"the refused apply changed the lab:\n--- before\n{before}\n--- after\n{after}"
    labctl.say(f"checked: passing {mgmt} through is refused ({errors[0][:90]}...), the lab is unchanged")


def test_apply_verify_destroy(lab: Lab, tmp_path: Path) -> None:
    lab.ensure()
    path = specs.write(tmp_path, "slices.yaml", specs.slices())
    before = host_state()
    plan = labctl.bmslice("plan", path.name, "--json", files=[path]).expect().json()
    devices = {dev["address"]: (vm["name"], dev) for vm in plan["vms"] for dev in vm["devices"]}
    assert len(devices) == 3, plan

    applied = labctl.bmslice("apply", path.name, "--connect", QEMU, files=[path], timeout=1500)
    try:
        applied.expect()
        labctl.say("checked: apply exit 0")
        states = labctl.sh("for d in lab-pt lab-vf; do virsh -c qemu:///system domstate $d; done").expect().out.split()
        assert states == ["running", "running"], states
        labctl.say("checked: lab-pt and lab-vf run")

        drivers = labctl.sh(
            "for a in "
            + " ".join(devices)
            + '; do echo "$a $(basename "$(readlink /sys/bus/pci/devices/$a/driver)")"; done'
        ).expect()
        bound = dict(line.split() for line in drivers.out.splitlines())
        assert all(driver == "vfio-pci" for driver in bound.values()), drivers.report()
        labctl.say(f"checked: {', '.join(bound)} on vfio-pci")

        live = {vf["vf"]: vf for vf in _vf_settings(specs.VF_PF)}
        for _vm, dev in devices.values():
            if dev["type"] != "vf":
                continue
            got = live[dev["vf_index"]]
            vlans = [v.get("vlan") for v in got.get("vlan_list", [])]
            want = (dev["mac"], [dev["vlan"]], dev["trust"], dev["spoofchk"])
            have = (got["address"], vlans, got["trust"], got["spoofchk"])
            assert have == want, f"VF {dev['vf_index']}: netlink says {have}, plan says {want}\n{json.dumps(got)}"
            labctl.say(f"checked: VF {dev['vf_index']} of {specs.VF_PF} mac/vlan/trust/spoofchk {have} as planned")

        labctl.bmslice("verify", path.name, "--connect", QEMU, files=[path]).expect()
        labctl.say("checked: verify exit 0")

        vf0 = next(dev for _vm, dev in devices.values() if dev["type"] == "vf" and dev["vf_index"] == 0)
        flipped = "off" if vf0["trust"] else "on"
        labctl.run("ip", "link", "set", specs.VF_PF, "vf", "0", "trust", flipped).expect()
        drift = labctl.bmslice("verify", path.name, "--connect", QEMU, files=[path]).expect(1)
        assert f"VF 0 of {specs.VF_PF}: trust is {flipped}" in drift.out, drift.report()
        labctl.say(f"checked: verify reports VF 0's trust changed to {flipped} behind bmslice's back (exit 1)")
        labctl.run("ip", "link", "set", specs.VF_PF, "vf", "0", "trust", "on" if vf0["trust"] else "off").expect()
    finally:
        destroyed = labctl.bmslice("destroy", path.name, "--connect", QEMU, files=[path], timeout=900)
    destroyed.expect()
    after = host_state()
    assert "domain " not in after, after
    pt = next(address for address, (_vm, dev) in devices.items() if dev["type"] == "passthrough")
    assert f"pci {pt} driver=igb" in after and f"link {specs.PT_NIC} " in after, after
    pf = next(dev["pf"] for _vm, dev in devices.values() if dev["type"] == "vf")
    assert f"pci {pf} driver=igb numvfs=0" in after, after
    labctl.say(f"checked: destroy gave {pt} back to igb as {specs.PT_NIC}, VF count back to 0, no domain left")
    # The PF's link may stay up (apply brought it up for its VFs); everything else is as before.
    strip = lambda text: [ln for ln in text.splitlines() if not ln.startswith(f"link {specs.VF_PF} ")]  # noqa: E731
    assert strip(after) == strip(before), f"--- before\n{before}\n--- after\n{after}"
    labctl.say("checked: the lab is as before apply (but for the PF link state)")
