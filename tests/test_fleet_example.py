"""The design note's next step as a bundled example: four servers like server1, Red and Blue.

examples/fleet/fleet.yaml places one control-plane VM per cluster on control1 and one
worker per cluster on each of server1-3, with the VLANs on the switch ports the inventory
names. Rendered specs, Junos config, fabric data, cloud-init and the summary are compared
with golden files (BMSLICE_REGEN_GOLDEN=1 rewrites them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmslice.cli import fleet_cmd
from bmslice.errors import PlanError
from bmslice.fleet.check import check_host
from bmslice.fleet.fabric import fabric_data, junos_config
from bmslice.fleet.hosts import read_hosts
from bmslice.fleet.placement import place
from bmslice.fleet.render import render_fleet
from bmslice.model.fields import as_data
from bmslice.model.fleet import (
    Fleet,
    NicKind,
    Role,
    fleet_from_data,
    load_fleet,
    placement_from_dict,
    placement_to_dict,
)
from bmslice.model.topology import HostTopology
from golden import assert_golden
from test_discover_sysfs import snapshot
from treebuilder import FLEET_HOSTS, SPECS, write_tree

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fleet"
FLEET = EXAMPLE / "fleet.yaml"
TOKEN = "abcdef.0123456789abcdef"  # a made-up bootstrap token: it must never leave the join file


def example_data() -> dict[str, Any]:
    """The example fleet file as data, its paths made absolute (to write it elsewhere)."""
    data: dict[str, Any] = yaml.safe_load(FLEET.read_text())
    for host in data["inventory"]:
        host["host_root"] = str(EXAMPLE / host["host_root"])
    data["ssh_keys_file"] = str(EXAMPLE / data["ssh_keys_file"])
    for cluster in data["clusters"]:
        cluster.pop("kubeadm_join_file", None)
    return data


@pytest.fixture(scope="module")
def example() -> tuple[Fleet, dict[str, HostTopology]]:
    fleet = load_fleet(FLEET)
    return fleet, read_hosts(fleet)


@pytest.fixture(scope="module")
def files(example: tuple[Fleet, dict[str, HostTopology]]) -> dict[str, str]:
    fleet, topologies = example
    keys = [line for line in (EXAMPLE / "ssh_keys.pub").read_text().splitlines() if not line.startswith("#")]
    return render_fleet(fleet, place(fleet, topologies), keys, "fleet.yaml")


@pytest.mark.parametrize("host", FLEET_HOSTS)
def test_host_trees_are_generated_by_the_treebuilder(tmp_path: Path, host: str) -> None:
    """examples/fleet/hosts/<name> is `python tests/treebuilder.py <name> DIR`, byte for byte."""
    regenerated = write_tree(SPECS[host](), tmp_path / host)
    assert snapshot(regenerated) == snapshot(EXAMPLE / "hosts" / host)


def test_one_worker_per_cluster_per_worker_host_as_in_the_note(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    fleet, topologies = example
    placement = place(fleet, topologies)
    where = {vm.name: (vm.host, vm.numa_node, [n.pf for n in vm.nics]) for vm in placement.vms}
    assert where == {
        "red-control-1": ("control1", 0, ["eno1"]),
        "blue-control-1": ("control1", 1, ["eno2"]),
        "red-worker-1": ("server1", 0, ["eno1"]),
        "blue-worker-1": ("server1", 1, ["eno2"]),
        "red-worker-2": ("server2", 0, ["eno1"]),
        "blue-worker-2": ("server2", 1, ["eno2"]),
        "red-worker-3": ("server3", 0, ["eno1"]),
        "blue-worker-3": ("server3", 1, ["eno2"]),
    }
    assert all(n.kind is NicKind.PASSTHROUGH for vm in placement.vms for n in vm.nics)
    assert {vm.guest_threads for vm in placement.vms} == {2}  # 8 vCPUs on 4 sibling pairs
    # every worker node is full: 4 SMT cores for vCPUs + 1 emulator core, as on the note's server1
    assert {(u.cores_used, u.cores_free_before) for u in placement.usage if u.host != "control1"} == {(5, 5)}


def test_each_generated_spec_plans_on_its_host_like_the_note(
    example: tuple[Fleet, dict[str, HostTopology]], files: dict[str, str]
) -> None:
    """The host planner agrees: Red on 2,14 (emulator) + 4,16,6,18,8,20,10,22; Blue on the odd CPUs."""
    _, topologies = example
    for host in FLEET_HOSTS:
        data = yaml.safe_load(files[f"hosts/{host}/spec.yaml"])
        check = check_host(host, data, topologies[host], f"{host}/spec.yaml")
        assert check.plan is not None
        if host == "control1":
            continue
        red, blue = check.plan.vms
        assert red.vcpu_pins == (4, 16, 6, 18, 8, 20, 10, 22) and red.emulator_cpus.sorted() == [2, 14]
        assert blue.vcpu_pins == (5, 17, 7, 19, 9, 21, 11, 23) and blue.emulator_cpus.sorted() == [3, 15]
        assert red.guest_topology.threads == blue.guest_topology.threads == 2
        assert [d.interface for d in red.devices] == ["eno1"] and [d.interface for d in blue.devices] == ["eno2"]
        assert any("cross-NUMA" in w for w in check.warnings)  # eno2 sits on node 0, as in the note


@pytest.mark.parametrize(
    "path",
    [
        "hosts/control1/spec.yaml",
        "hosts/server1/spec.yaml",
        "hosts/server2/spec.yaml",
        "hosts/server3/spec.yaml",
        "hosts/server1/guests/red-worker-1.user-data.yaml",
        "hosts/server1/guests/blue-worker-1.user-data.yaml",
        "hosts/control1/guests/red-control-1.user-data.yaml",
        "fabric/fabric-switch.set",
        "fabric/fabric.json",
        "summary.txt",
        "placement.json",
    ],
)
def test_rendered_files_match_golden(files: dict[str, str], path: str) -> None:
    assert_golden(f"fleet/{path.replace('/', '__')}", files[path])


def test_vlans_on_the_right_switch_ports(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    fleet, topologies = example
    fabric = fabric_data(fleet, place(fleet, topologies))
    (switch,) = fabric["switches"]
    ports = {p["port"]: (p["host"], p["nic"], p["mode"], p["vlans"]) for p in switch["ports"]}
    assert ports["ge-0/0/9"] == ("server1", "eno1", "access", [100])  # the note's Red port
    assert ports["ge-0/0/8"] == ("server1", "eno2", "access", [200])  # the note's Blue port
    assert len(ports) == 8 and fabric["uncabled"] == []
    junos = junos_config(switch)
    assert "set vlans Red_Tenant_Network vlan-id 100\n" in junos
    assert "set interfaces ge-0/0/9 unit 0 family ethernet-switching vlan members Red_Tenant_Network\n" in junos


def test_sriov_port_is_a_trunk_with_every_tenant_vlan(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    """Red and Blue taking VFs of the same PF: its port carries both VLANs tagged."""
    fleet, topologies = example
    data = as_data(fleet)
    for cluster in data["clusters"]:
        cluster["workers"]["nic"] = {"kind": "sriov", "pf": "eno1"}
        cluster["workers"]["vcpus"] = 4
    sriov = fleet_from_data(data, "test")
    switch = fabric_data(sriov, place(sriov, topologies))["switches"][0]
    port = next(p for p in switch["ports"] if p["port"] == "ge-0/0/9")
    assert (port["mode"], port["vlans"], port["vms"]) == ("trunk", [100, 200], ["blue-worker-1", "red-worker-1"])
    assert (
        "set interfaces ge-0/0/9 unit 0 family ethernet-switching vlan members [ Red_Tenant_Network Blue_Tenant_Network ]"
        in junos_config(switch)
    )


def test_kubelet_config_reserves_the_first_whole_guest_core(files: dict[str, str]) -> None:
    user_data = yaml.safe_load(files["hosts/server1/guests/red-worker-1.user-data.yaml"])
    written = {f["path"]: f["content"] for f in user_data["write_files"]}
    kubelet = yaml.safe_load(written["/etc/bmslice/kubeadm-patches/kubeletconfiguration+merge.yaml"])
    assert kubelet == {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cpuManagerPolicy": "static",
        "cpuManagerPolicyOptions": {"full-pcpus-only": "true"},
        "reservedSystemCPUs": "0,1",  # guest threads=2: guest CPUs 0 and 1 are one host core
        "topologyManagerPolicy": "single-numa-node",
        "topologyManagerScope": "pod",
    }
    assert written["/etc/bmslice/node-labels"] == (
        "bmslice.io/cluster=red,bmslice.io/host=server1,bmslice.io/numa-node=0,bmslice.io/rack=rack1\n"
    )
    assert user_data["hostname"] == "red-worker-1" and user_data["runcmd"] == ["/usr/local/sbin/bmslice-kubeadm-join"]


def test_adding_a_worker_keeps_every_placed_vm_and_a_full_fleet_says_why(
    example: tuple[Fleet, dict[str, HostTopology]],
) -> None:
    fleet, topologies = example
    first = place(fleet, topologies)
    data = as_data(fleet)
    data["clusters"][1]["workers"]["count"] = 4
    data["clusters"][1]["spread"]["max_per_host"] = 2
    grown = fleet_from_data(data, "test")
    with pytest.raises(PlanError) as refused:
        place(grown, topologies, first)
    assert str(refused.value) == (
        "blue-worker-4: no worker host left with 5 free cores and 8GiB free on one NUMA node and a free NIC to "
        "pass through for VLAN 200 (server1: most free on one node: 0 cores, 22GiB; server2: most free on one "
        "node: 0 cores, 22GiB; server3: most free on one node: 0 cores, 22GiB)"
    )
    data["clusters"][1]["workers"]["count"] = 3
    data["inventory"].append(
        {
            **data["inventory"][3],
            "name": "server4",
            "uri": "qemu+ssh://root@server4/system",
            "rack": "rack4",
            "nics": {},
        }
    )
    topologies = {**topologies, "server4": topologies["server3"]}
    data["clusters"][1]["workers"]["count"] = 4
    bigger = fleet_from_data(data, "test")
    again = place(bigger, topologies, first)
    assert all(again.vm(vm.name) == vm for vm in first.vms)
    assert again.vm("blue-worker-4").host == "server4"


def test_placement_json_round_trip(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    fleet, topologies = example
    placement = place(fleet, topologies)
    back = placement_from_dict(json.loads(json.dumps(placement_to_dict(placement))), "test")
    assert back.vms == placement.vms


def test_no_generated_file_holds_the_join_token(tmp_path: Path) -> None:
    fleet_dir = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, fleet_dir, symlinks=True)
    secrets = fleet_dir / "secrets"
    secrets.mkdir()
    for cluster in ("red", "blue"):
        join = secrets / f"{cluster}.kubeadm-join"
        join.write_text(f"kubeadm join 10.0.0.1:6443 --token {TOKEN} --discovery-token-ca-cert-hash sha256:00ff\n")
        join.chmod(0o600)
    out = tmp_path / "out"
    assert fleet_cmd.main(["fleet", "ansible", str(fleet_dir / "fleet.yaml"), "--out", str(out)]) == 0
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(), path
    spec = yaml.safe_load((out / "hosts/server1/spec.yaml").read_text())
    assert spec["vms"][0]["cloud_init"]["seed_files"] == {"kubeadm-join": "secrets/red.kubeadm-join"}


def test_join_script_passes_the_token_in_a_file_never_on_a_command_line(tmp_path: Path, files: dict[str, str]) -> None:
    """Run the guest's join script with stand-ins for blkid, mount and kubeadm (paths moved under tmp)."""
    user_data = yaml.safe_load(files["hosts/server1/guests/red-worker-1.user-data.yaml"])
    script = next(f["content"] for f in user_data["write_files"] if f["path"].endswith("bmslice-kubeadm-join"))
    root = tmp_path / "root"
    (root / "etc/bmslice").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "etc/bmslice/node-labels").write_text("bmslice.io/cluster=red\n")
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "kubeadm-join").write_text(
        f"kubeadm join 10.0.0.1:6443 --token {TOKEN} \\\n    --discovery-token-ca-cert-hash sha256:00ff\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_log = tmp_path / "argv.log"
    stubs = {
        "blkid": "echo /dev/sr0",
        "mount": f'cp "{seed}"/* "$4"',
        "umount": 'rm -f "$1"/*',
        "kubeadm": f'cp "$3" "{tmp_path}/config-seen.yaml"',
    }
    for name, body in stubs.items():
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{argv_log}"\n{body}\n')
        stub.chmod(0o755)
    moved = script.replace("/etc/", f"{root}/etc/").replace("/run/", f"{root}/run/")
    run = subprocess.run(
        ["sh", "-c", moved],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert TOKEN not in argv_log.read_text()
    assert f"kubeadm join --config {root}/run/bmslice-kubeadm-join.yaml" in argv_log.read_text()
    config = yaml.safe_load((tmp_path / "config-seen.yaml").read_text())
    assert config["discovery"]["bootstrapToken"] == {
        "apiServerEndpoint": "10.0.0.1:6443",
        "token": TOKEN,
        "caCertHashes": ["sha256:00ff"],
    }
    assert config["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert config["nodeRegistration"]["kubeletExtraArgs"] == [
        {"name": "node-labels", "value": "bmslice.io/cluster=red"}
    ]
    assert not (root / "run/bmslice-kubeadm-join.yaml").exists()  # removed after the join


def test_cli_plan_writes_the_files_and_keeps_the_placement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert fleet_cmd.main(["fleet", "plan", str(FLEET), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "server1   rack1  red-worker-1" in printed.out and f"wrote 16 file(s) to {out}" in printed.out
    assert "kubeadm_join_file" in printed.err  # the example's join files are the operator's to create
    assert (out / "fabric/fabric-switch.set").read_text().startswith("# fabric-switch:")
    # second run: the placement of the first is kept
    assert fleet_cmd.main(["fleet", "plan", str(FLEET), "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr()
    data = json.loads(printed.out)
    assert set(data) == {"placement", "hosts", "fabric", "checks", "warnings"}
    assert data["warnings"][0] == f"kept 8 placed VM(s) where they are ({out / 'placement.json'})"
    assert data["checks"]["server1"].startswith("ok")


def test_cli_verify_on_host_trees(capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet_cmd.main(["fleet", "verify", str(FLEET), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert [(h["host"], h["status"]) for h in report["hosts"]] == [
        ("control1", "planned"),
        ("server1", "planned"),
        ("server2", "planned"),
        ("server3", "planned"),
    ]
    assert any(n.startswith("reboot pending") for n in report["hosts"][1]["notes"])


def test_cli_verify_reports_a_host_whose_tree_no_longer_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """server2 lost half its memory since the placement: verify says so, exit 1."""
    fleet_dir = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, fleet_dir, symlinks=True)
    assert fleet_cmd.main(["fleet", "plan", str(fleet_dir / "fleet.yaml"), "--out", str(tmp_path / "out")]) == 0
    meminfo = fleet_dir / "hosts/server2/sys/devices/system/node/node1/meminfo"
    meminfo.write_text(meminfo.read_text().replace("33554432", "9437184"))  # 32 GiB -> 9 GiB
    capsys.readouterr()
    code = fleet_cmd.main(
        ["fleet", "verify", str(fleet_dir / "fleet.yaml"), "--placement", str(tmp_path / "out/placement.json")]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "server2   refused" in out
    assert "blue-worker-2 needs 8192 MiB on NUMA node 1, only 7168 MiB are free" in out
    assert out.rstrip().endswith("fleet: 1 of 4 host(s) drift or fail: server2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["clusters"][0].update(vlan=200), "clusters: duplicate VLAN 200 (red and blue)"),
        (lambda d: d["clusters"][0].update(colour="red"), "clusters[0].colour: unknown key"),
        (
            lambda d: d["inventory"][1]["nics"].update(eno3={"switch": "fabric-switch", "port": "ge-0/0/1"}),
            "inventory: switch port fabric-switch ge-0/0/1 is cabled to both control1 eno1 and server1 eno3",
        ),
        (
            # a validator takes the whole value: a stray space is not trimmed away
            lambda d: d["clusters"][0]["workers"].update(nic={"kind": "sriov", "pf": "eno1 "}),
            "clusters[0].workers.nic.pf: 'eno1 ' is neither 'any', an interface name nor a PCI address",
        ),
        (lambda d: d["clusters"][0]["workers"].update(nic={"kind": "sriov", "pf": "eno1"}), None),
        (
            lambda d: d["clusters"][0]["workers"].update(count=True),
            "clusters[0].workers.count: Expected `int`, got `bool`",
        ),
        (
            lambda d: d["clusters"][0]["workers"].update(nic={"kind": "sriov", "pf": "not an if"}),
            "clusters[0].workers.nic.pf: 'not an if' is neither 'any', an interface name nor a PCI address",
        ),
        (lambda d: d["clusters"][0].update(vlan=4095), "clusters[0].vlan: Expected `int` <= 4094"),
        (
            lambda d: d["inventory"][0].update(role="storage"),
            "inventory[0].role: expected 'control' or 'worker', got 'storage'",
        ),
    ],
)
def test_fleet_file_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], change, message) -> None:  # type: ignore[no-untyped-def]
    data = example_data()
    change(data)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    code = fleet_cmd.main(["fleet", "plan", str(path), "--no-check"])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0
        return
    assert code == 2
    assert err.splitlines()[0] == f"error: {path}: {message}"
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_a_fleet_without_a_control_host_refuses_the_control_plane(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = example_data()
    data["inventory"] = data["inventory"][1:]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    assert fleet_cmd.main(["fleet", "plan", str(path)]) == 2
    assert capsys.readouterr().err == "error: red-control-1: the inventory has no control host\n"


def test_module_entry_point_runs() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bmslice.cli.fleet_cmd", "fleet", "plan", str(FLEET), "--no-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and "blue-worker-3" in run.stdout


def test_worker_roles(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    fleet, topologies = example
    for vm in place(fleet, topologies).vms:
        assert fleet.host(vm.host).role is vm.role
        assert (vm.role is Role.CONTROL) == vm.name.endswith("control-1")


def server2_with_violations(root: Path) -> Path:
    """server2's tree, booted with the planned kernel args, with two audit violations: a backup
    agent allowed on every CPU and IRQ 40 on isolated CPU 5."""
    from treebuilder import IrqSpec, ProcSpec, RuntimeSpec, fleet_host_spec

    booted = " ".join(["ro", "intel_iommu=on", "iommu=pt", "isolcpus=2-11,14-23", "nohz_full=2-11,14-23"])
    runtime = RuntimeSpec(
        isolated="2-11,14-23",
        nohz_full="2-11,14-23",
        irqs=(IrqSpec(40, "0-23", "5"),),
        procs=(ProcSpec(4242, "backup-agent", "0-23"),),
    )
    cmdline = booted + " rcu_nocbs=2-11,14-23 irqaffinity=0-1,12-13"
    return write_tree(replace(fleet_host_spec("server2"), runtime=runtime, cmdline=cmdline), root)


def test_cli_verify_audits_host_trees_and_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """server2's tree shows a backup agent allowed on every CPU and an IRQ on an isolated one:
    audit violations are drift; kernel args not booted yet are only a pending reboot."""
    tree = server2_with_violations(tmp_path / "server2")
    data = example_data()
    data["inventory"][2]["host_root"] = str(tree)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    assert fleet_cmd.main(["fleet", "verify", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    server2 = report["hosts"][2]
    assert (report["ok"], report["failed_hosts"], server2["status"]) == (False, ["server2"], "drift")
    assert len(server2["drift"]) == 2
    assert server2["drift"][0].startswith("audit: irq 40: ")
    assert server2["drift"][1] == (
        "audit: thread 4242: pid 4242 (backup-agent) may run on isolated CPU(s) 2-11,14-23 (Cpus_allowed_list 0-23)"
    )
    assert not any(n.startswith("reboot pending") for n in server2["notes"])  # this tree booted the args
    assert [h["status"] for h in report["hosts"]] == ["planned", "planned", "drift", "planned"]
