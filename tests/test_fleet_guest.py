"""Inside the cluster VMs: the kubelet aligned with the slice, something to boot from, and
cloud-init's own schema check on every user-data bmslice writes.

- reservedSystemCPUs is the VM's first whole host core as guest CPUs: a 3-vCPU worker on an
  SMT host (told threads=1, since 3 is odd) still has vCPUs 0 and 1 on one host core, so
  both are reserved; on a host without SMT, vCPU 0 alone;
- a worker whose reserved core is all it has gets a warning saying no CPU is left for pods;
- the static CPU manager with full-pcpus-only, the topology manager's scope, and the static
  memory manager with reservedMemory when the VM's memory is hugepages;
- a VM without a disk image gets a loud warning; the example's VMs boot from a cloud image;
- a realtime worker isolates its realtime vCPUs with tuned's realtime-virtual-guest profile,
  reboots once for the profile's kernel args, and its kubelet reserves the housekeeping vCPUs;
  housekeeping that splits a guest core is refused by the host planner the fleet runs;
- `cloud-init schema --config-file` (Debian's cloud-init, installed by scripts/setup-host.sh)
  passes on every user-data file of the example and of the variants here, and on the seed
  user-data apply builds; it fails on a broken one (the check bites). A missing cloud-init
  fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmslice.errors import PlanError
from bmslice.fleet.guest import (
    JOIN_SCRIPT,
    KUBELET_PATCH,
    TUNED_GUEST_VARIABLES,
    guest_warnings,
    reserved_guest_cpus,
)
from bmslice.fleet.hosts import read_hosts
from bmslice.fleet.placement import place
from bmslice.fleet.render import render_fleet
from bmslice.model.fields import as_data
from bmslice.model.fleet import Fleet, Placement, fleet_from_data, load_fleet, placement_from_dict, placement_to_dict
from bmslice.model.topology import HostTopology
from bmslice.render.cloud_init import user_data
from fleetgen import SHAPES

REPO = Path(__file__).resolve().parents[1]
FLEET = REPO / "examples" / "fleet" / "fleet.yaml"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHKe test@bmslice"


@pytest.fixture(scope="module")
def example() -> tuple[Fleet, dict[str, HostTopology]]:
    fleet = load_fleet(FLEET)
    return fleet, read_hosts(fleet)


def _variant(fleet: Fleet, **workers: Any) -> Fleet:
    """The example with every cluster's workers changed (one per worker host, as in the example)."""
    data = as_data(fleet)
    for cluster in data["clusters"]:
        cluster["workers"].update(workers)
    return fleet_from_data(data, "variant")


def _kubelet(files: dict[str, str], host: str, vm: str) -> dict[str, Any]:
    user = yaml.safe_load(files[f"hosts/{host}/guests/{vm}.user-data.yaml"])
    patch = next(f["content"] for f in user["write_files"] if f["path"] == KUBELET_PATCH)
    result: dict[str, Any] = yaml.safe_load(patch)
    return result


def test_three_vcpu_worker_reserves_both_threads_of_its_first_host_core(
    example: tuple[Fleet, dict[str, HostTopology]],
) -> None:
    fleet, topologies = example
    odd = _variant(fleet, vcpus=3)
    placement = place(odd, topologies)
    vm = placement.vm("red-worker-1")
    assert vm.guest_threads == 1  # 3 is odd: the guest is told one thread per core ...
    assert vm.guest_cores == ((0, 1), (2,))  # ... but vCPUs 0 and 1 share host core 4,16
    kubelet = _kubelet(render_fleet(odd, placement, []), "server1", "red-worker-1")
    assert kubelet["reservedSystemCPUs"] == "0,1"
    assert kubelet["cpuManagerPolicyOptions"] == {"full-pcpus-only": "true"}
    assert guest_warnings(odd, placement) == []  # vCPU 2 is left for pods


def test_without_smt_the_first_core_is_one_vcpu() -> None:
    """A 1-socket AMD server without SMT: every vCPU is a core of its own."""
    topo = SHAPES["amd1x32"]()
    fleet = fleet_from_data(
        {
            "inventory": [{"name": "amd", "uri": "qemu+ssh://root@amd/system", "role": "worker"}],
            "clusters": [{"name": "red", "vlan": 100, "workers": {"count": 1, "vcpus": 3, "memory": "4GiB"}}],
        },
        "test",
    )
    placement = place(fleet, {"amd": topo})
    vm = placement.vm("red-worker-1")
    assert vm.guest_cores == ((0,), (1,), (2,))
    assert reserved_guest_cpus(vm) == (0,)
    assert _kubelet(render_fleet(fleet, placement, []), "amd", "red-worker-1")["reservedSystemCPUs"] == "0"


def test_a_worker_of_one_host_core_is_warned_that_pods_get_no_cpu(
    example: tuple[Fleet, dict[str, HostTopology]],
) -> None:
    fleet, topologies = example
    small = _variant(fleet, vcpus=2)
    placement = place(small, topologies)
    assert placement.vm("red-worker-1").guest_cores == ((0, 1),)
    warnings = [w for w in guest_warnings(small, placement) if "kubelet" in w]
    assert warnings == [
        f"{cluster}: the kubelet of {cluster}-worker-1, {cluster}-worker-2, {cluster}-worker-3 keeps guest CPU(s) 0,1 "
        "(the VM's first host core) for the system, which is every vCPU the VM has: no CPU is left for pods; give "
        "the workers more vCPUs than one host core holds"
        for cluster in ("red", "blue")
    ]


def test_hugepage_workers_get_the_static_memory_manager(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    fleet, topologies = example
    huge = _variant(fleet, hugepages="2M")
    kubelet = _kubelet(render_fleet(huge, place(huge, topologies), []), "server2", "blue-worker-2")
    assert kubelet["memoryManagerPolicy"] == "Static"
    # the kubelet's default hard eviction threshold, the only memory reserved, all on the guest's one node
    assert kubelet["reservedMemory"] == [{"numaNode": 0, "limits": {"memory": "100Mi"}}]
    assert (kubelet["topologyManagerPolicy"], kubelet["topologyManagerScope"]) == ("single-numa-node", "pod")
    plain = _kubelet(render_fleet(fleet, place(fleet, topologies), []), "server2", "blue-worker-2")
    assert "memoryManagerPolicy" not in plain and "reservedMemory" not in plain


def test_a_vm_with_nothing_to_boot_from_is_warned_loudly(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    fleet, topologies = example
    assert guest_warnings(fleet, place(fleet, topologies)) == []  # the example's VMs boot from a cloud image
    data = as_data(fleet)
    del data["clusters"][0]["workers"]["disk"]
    data["clusters"][1]["control_plane"][0]["disk"] = {"size": "20GiB"}
    bare = fleet_from_data(data, "test")
    assert guest_warnings(bare, place(bare, topologies)) == [
        "red: red-worker-1, red-worker-2, red-worker-3: no disk, NOTHING TO BOOT FROM: give workers a root disk "
        "from a cloud image (disk: {size: 40GiB, image: /var/lib/libvirt/images/<cloud image>.qcow2})",
        "blue: blue-control-1: a blank disk, NOTHING TO BOOT FROM: give control_plane a root disk from a cloud "
        "image (disk: {size: 40GiB, image: /var/lib/libvirt/images/<cloud image>.qcow2})",
    ]


def test_a_placement_file_without_guest_cores_still_reserves_a_whole_core(
    example: tuple[Fleet, dict[str, HostTopology]],
) -> None:
    """Placement files written before guest cores were recorded: sibling pairs are whole cores."""
    fleet, topologies = example
    data = placement_to_dict(place(fleet, topologies))
    for vm in data["vms"]:
        del vm["guest_cores"]
    old: Placement = placement_from_dict(data, "old placement.json")
    assert old.vm("red-worker-1").guest_cores == ()
    assert reserved_guest_cpus(old.vm("red-worker-1")) == (0, 1)
    assert reserved_guest_cpus(replace(old.vm("red-worker-1"), guest_threads=1)) == (0,)


REALTIME = {"hugepages": "1G", "realtime": {"housekeeping_vcpus": 2, "priority": 1}}


def test_a_realtime_worker_isolates_its_realtime_vcpus_in_the_guest(
    example: tuple[Fleet, dict[str, HostTopology]],
) -> None:
    fleet, topologies = example
    rt = _variant(fleet, **REALTIME)
    files = render_fleet(rt, place(rt, topologies), [KEY])
    spec = yaml.safe_load(files["hosts/server1/spec.yaml"])
    assert {vm["name"]: vm.get("realtime") for vm in spec["vms"]} == {
        "red-worker-1": {"housekeeping_vcpus": 2, "priority": 1},
        "blue-worker-1": {"housekeeping_vcpus": 2, "priority": 1},
    }
    user = yaml.safe_load(files["hosts/server1/guests/red-worker-1.user-data.yaml"])
    tuned = next(f for f in user["write_files"] if f["path"] == TUNED_GUEST_VARIABLES)
    assert tuned["content"].endswith("isolated_cores=2,3,4,5,6,7\nisolate_managed_irq=Y\n")
    assert user["runcmd"] == [["tuned-adm", "profile", "realtime-virtual-guest"], JOIN_SCRIPT]
    assert user["power_state"]["mode"] == "reboot"
    assert _kubelet(files, "server1", "red-worker-1")["reservedSystemCPUs"] == "0,1"
    control = yaml.safe_load(files["hosts/control1/guests/red-control-1.user-data.yaml"])
    assert "power_state" not in control and "realtime" not in files["hosts/control1/spec.yaml"]


def test_housekeeping_that_splits_a_guest_core_is_refused_by_the_host_planner(
    example: tuple[Fleet, dict[str, HostTopology]],
) -> None:
    """The placement asks the host planner about every host's share (H8): on these SMT servers it
    refuses every worker, so the fleet is refused with the planner's reason, per server."""
    fleet, topologies = example
    odd = _variant(fleet, hugepages="1G", realtime={"housekeeping_vcpus": 1})
    with pytest.raises(PlanError) as caught:
        place(odd, topologies)
    text = str(caught.value)
    assert text.startswith("red-worker-1: no worker host left with 5 free cores and 8GiB free on one NUMA node")
    assert (
        "server1: the host planner refuses it there (server1/spec.yaml: vms[0].realtime.housekeeping_vcpus: 1 splits "
        "host core"
    ) in text


# --- cloud-init's own schema check -----------------------------------------------------------


def _cloud_init_schema(path: Path) -> subprocess.CompletedProcess[str]:
    cloud_init = shutil.which("cloud-init")
    if cloud_init is None:
        pytest.fail("cloud-init is not installed: apt-get install cloud-init (scripts/setup-host.sh does)")
    return subprocess.run(
        [cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_cloud_init_schema_accepts_every_generated_user_data(
    tmp_path: Path, example: tuple[Fleet, dict[str, HostTopology]]
) -> None:
    fleet, topologies = example
    texts: dict[str, str] = {}
    variants = {
        "example": fleet,
        "hugepages": _variant(fleet, hugepages="1G", vcpus=3),
        "realtime": _variant(fleet, **REALTIME),
    }
    for name, variant in variants.items():
        for path, text in render_fleet(variant, place(variant, topologies), [KEY]).items():
            if path.endswith(".user-data.yaml"):
                texts[f"{name}/{path}"] = text
    # the seed's own user-data, as apply builds it (keys, a hashed password, the fleet's user-data merged in)
    merged = yaml.safe_load(texts["example/hosts/server1/guests/red-worker-1.user-data.yaml"])
    texts["seed/user-data"] = user_data("red-worker-1", [KEY], "$6$salt$hash", merged)
    assert len(texts) == 3 * 8 + 1
    for name, text in texts.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        run = _cloud_init_schema(path)
        assert run.returncode == 0 and "Valid cloud-config" in run.stdout, f"{name}: {run.stdout}{run.stderr}"


def test_cloud_init_schema_check_bites(tmp_path: Path, example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    """The same user-data with write_files permissions as a number is refused by the schema."""
    fleet, topologies = example
    text = render_fleet(fleet, place(fleet, topologies), [KEY])["hosts/server1/guests/red-worker-1.user-data.yaml"]
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace("permissions: '0644'", "permissions: 644", 1))
    run = _cloud_init_schema(path)
    assert run.returncode != 0
    assert "write_files.0.permissions: 644 is not of type 'string'" in run.stdout + run.stderr


def test_fleet_plan_prints_the_boot_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bmslice.cli import fleet_cmd
    from test_fleet_example import example_data

    data = example_data()
    for cluster in data["clusters"]:
        del cluster["workers"]["disk"]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    assert fleet_cmd.main(["fleet", "plan", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: red: red-worker-1, red-worker-2, red-worker-3: no disk, NOTHING TO BOOT FROM" in err
    assert "warning: blue: blue-worker-1, blue-worker-2, blue-worker-3: no disk, NOTHING TO BOOT FROM" in err
