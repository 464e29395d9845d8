"""Scenario 3: a failure after a real detach and real VF creation rolls everything back.

The VM's disk is an overlay on a base image that is damaged (a qcow2 header and nothing
after it), so creating its volume fails only after apply has created the VFs and moved
the NIC to vfio-pci. Everything must be undone: the NIC on igb again, the VF count as
before, no domain, no volume.
"""

from __future__ import annotations

from pathlib import Path

from lab import labctl, specs
from lab.conftest import Lab
from lab.test_2_slices import host_state

BROKEN_IMAGE = "/var/lib/bmslice-lab-test/broken-base.qcow2"


def test_failure_after_detach_rolls_back(lab: Lab, tmp_path: Path) -> None:
    lab.ensure()
    spec = specs.slices()
    spec["vms"][0]["disk"] = {"size": "64MiB", "image": BROKEN_IMAGE, "pool": "default"}
    path = specs.write(tmp_path, "rollback.yaml", spec)
    # A damaged base image: qcow2 magic and version, then nothing (a copy cut short).
    labctl.sh(
        f"mkdir -p {Path(BROKEN_IMAGE).parent} && printf 'QFI\\373\\000\\000\\000\\003' > {BROKEN_IMAGE}"
        " && virsh -c qemu:///system pool-info default >/dev/null"
    ).expect()
    before = host_state()
    failed = labctl.bmslice("apply", path.name, "--connect", "qemu:///system", files=[path], timeout=1500)
    errors = [line for line in failed.err.splitlines() if line.startswith("error:")]
    assert failed.rc == 2 and len(errors) == 1 and "Traceback" not in failed.err, failed.report()
    steps = failed.out
    for done in ("create 2 VFs on", "detach 0000:61:00.0 from its host driver to vfio-pci", "create volume"):
        assert done in steps, f"the failure came before '{done}':\n{failed.report()}"
    for undone in ("reattach 0000:61:00.0 to its host driver", f"set sriov_numvfs of {specs.VF_PF} back to 0"):
        assert undone in steps, failed.report()
    assert "rolled back" in errors[0] and "ROLLBACK INCOMPLETE" not in errors[0], failed.report()
    labctl.say(f"checked: apply failed at its volume step after a real detach: {errors[0][:120]}...")
    after = host_state()
    strip = lambda text: [ln for ln in text.splitlines() if not ln.startswith(f"link {specs.VF_PF} ")]  # noqa: E731
    assert strip(after) == strip(before), f"--- before\n{before}\n--- after\n{after}"
    volumes = labctl.run("virsh", "-c", "qemu:///system", "vol-list", "default", "--details").expect().out
    assert "lab-pt" not in volumes, volumes
    labctl.say("checked: NIC back on igb, VF count as before, no domain, no volume: the lab is as it was")
