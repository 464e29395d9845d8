"""Scenario 5: `host-apply` on the live lab (no --host-root) really reserves hugepages per NUMA node,
and a second run changes nothing."""

from __future__ import annotations

from pathlib import Path

from lab import labctl, specs
from lab.conftest import Lab

NR = "/sys/devices/system/node/node{}/hugepages/hugepages-2048kB/nr_hugepages"


def test_host_apply_reserves_hugepages_per_node(lab: Lab, tmp_path: Path) -> None:
    lab.ensure()
    spec = {
        "host": specs.HOST,
        "vms": [
            {"name": "lab-huge0", "vcpus": 2, "memory": "64MiB", "numa_node": 0, "hugepages": "2M"},
            {"name": "lab-huge1", "vcpus": 2, "memory": "128MiB", "numa_node": 1, "hugepages": "2M"},
        ],
    }
    path = specs.write(tmp_path, "hugepages.yaml", spec)
    plan = labctl.bmslice("plan", path.name, "--json", files=[path]).expect().json()
    want = {entry["node"]: entry["pages"] for entry in plan["host"]["hugepages"] if entry["size_kib"] == 2048}
    assert want == {0: 32, 1: 64}, plan["host"]["hugepages"]
    before = labctl.sh(f"cat {NR.format(0)} {NR.format(1)}").expect().out.split()

    first = labctl.bmslice("host-apply", path.name, files=[path]).expect()
    have = labctl.sh(f"cat {NR.format(0)} {NR.format(1)}").expect().out.split()
    assert [int(n) for n in have] == [want[0], want[1]], f"before {before}, after {have}\n{first.report()}"
    free = labctl.sh(f"cat {NR.format(1).replace('nr_hugepages', 'free_hugepages')}").expect().out.strip()
    assert int(free) == want[1], free
    labctl.say(f"checked: host-apply reserved {have[0]} and {have[1]} 2 MiB pages on nodes 0 and 1 (was {before})")

    second = labctl.bmslice("host-apply", path.name, files=[path]).expect()
    assert "no changes" in second.out, second.report()
    assert labctl.sh(f"cat {NR.format(0)} {NR.format(1)}").expect().out.split() == have
    labctl.say("checked: a second host-apply changes nothing")
