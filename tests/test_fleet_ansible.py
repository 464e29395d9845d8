"""`ansible-playbook` runs the playbook `bmslice fleet ansible` writes, for real.

- check mode over the example's four servers, each an inventory host with a local
  connection pointed at its own host tree: every action there is a plan, nothing is written;
- the join files are copied with mode 0600 and the token never shows in Ansible's output;
- a server never applied (libvirt's test driver from a file, test:///FILE): check mode goes
  green, with the join files not placed yet, apply's dry run listing what the real run would
  do and verify counting the undefined slice as a change; the real run places the join file
  and the bundle and then fails cleanly where the test driver stops (it cannot upload a
  volume), without `changed: true`;
- the module on its own: bmslice's warnings as Ansible warnings, wrong-typed arguments, an
  audit failure that names its violations;
- one fleet applied for real on this machine's libvirtd (qemu:///system): a 1-vCPU worker,
  verified, re-applied without change, verified by `bmslice fleet verify`, then destroyed.

The collection is used from the repository (ANSIBLE_COLLECTIONS_PATH), never from Galaxy.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmslice.cli import fleet_cmd
from bmslice.model import spec as spec_model
from inventory_yaml import load_inventory
from libvirt_fixtures import HAS_KVM, kill_leftover_qemu, open_qemu, purge

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fleet"
BIN = Path(sys.executable).parent
TOKEN = "abcdef.0123456789abcdef"
RESULT = re.compile(r"^(ok|changed|skipping|fatal): \[([^\]]+)\](?: => \(item=.*?\))?(?:: FAILED!)? => (\{.*\})$")


@pytest.fixture(autouse=True)
def _ansible_installed() -> None:
    if not (BIN / "ansible-playbook").exists():
        pytest.fail(f"ansible-playbook is not in {BIN}: pip install -e '.[fleet]' (scripts/setup-host.sh does)")


def _fleet_data(tmp_path: Path, join_files: bool) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLE / "fleet.yaml").read_text())
    for host in data["inventory"]:
        host["host_root"] = str(EXAMPLE / host["host_root"])
    data["ssh_keys_file"] = str(EXAMPLE / data["ssh_keys_file"])
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    for cluster in data["clusters"]:
        if not join_files:
            del cluster["kubeadm_join_file"]
            continue
        join = secrets_dir / f"{cluster['name']}.kubeadm-join"
        join.write_text(f"kubeadm join 10.0.0.1:6443 --token {TOKEN} --discovery-token-ca-cert-hash sha256:00ff\n")
        join.chmod(0o600)
        cluster["kubeadm_join_file"] = str(join)
    return data


def _generate(tmp_path: Path, data: dict[str, Any]) -> Path:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(data))
    out = tmp_path / "ansible"
    assert fleet_cmd.main(["fleet", "ansible", str(fleet), "--out", str(out)]) == 0
    return out


def _ansible_env(work: Path, **extra: str) -> dict[str, str]:
    """Ansible from this repository's collection, its state under `work`, no colours."""
    return {
        **os.environ,
        "ANSIBLE_COLLECTIONS_PATH": str(REPO),
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        **extra,
    }


def _playbook(
    out: Path, base: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, tuple[str, dict[str, Any]]]]]:
    """Run site.yml; results per task name and host: (status, result JSON) from the -v output."""
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "inventory.yml",
            "site.yml",
            "-v",
            "-e",
            f"bmslice_command={BIN / 'bmslice'}",
            "-e",
            f"bmslice_base_dir={base}",
            *args,
        ],
        cwd=out,
        env=_ansible_env(out.parent, ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="json", **(env or {})),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    results: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
    task = ""
    for line in proc.stdout.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK [") : line.index("]")]
            continue
        match = RESULT.match(line)
        if match:
            results.setdefault(task, {})[match.group(2)] = (match.group(1), json.loads(match.group(3)))
    return proc, results


def test_check_mode_over_four_host_trees_plans_and_writes_nothing(tmp_path: Path) -> None:
    # Until the spec has cloud_init.seed_files, a spec naming the join file is refused by bmslice itself.
    with_joins = "seed_files" in spec_model.CloudInitSpec.__struct_fields__
    out = _generate(tmp_path, _fleet_data(tmp_path, join_files=with_joins))
    base = tmp_path / "hosts-base"
    proc, results = _playbook(out, base, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    apply = results["Apply the slices of this server"]
    verify = results["Verify the live slices match the plan"]
    assert sorted(apply) == ["control1", "server1", "server2", "server3"]
    for host, (status, result) in apply.items():
        assert status == "changed"  # the spec bundle would be placed
        assert result["files_changed"][-1] == "spec.yaml"
        assert result["msg"] == (
            "check mode on a host tree: planned 2 slice(s); what apply would change is not known without the live host"
        )
        names = [vm["name"] for vm in result["plan"]["vms"]]
        assert names == (
            ["red-control-1", "blue-control-1"]
            if host == "control1"
            else [f"red-worker-{host[-1]}", f"blue-worker-{host[-1]}"]
        )
        assert verify[host][0] == "ok"
    server1 = apply["server1"][1]["plan"]["vms"][0]
    assert server1["vcpu_pins"] == [4, 16, 6, 18, 8, 20, 10, 22]  # the note's Red worker
    assert not base.exists()  # check mode placed nothing
    assert TOKEN not in proc.stdout + proc.stderr


def test_join_files_are_copied_0600_and_never_logged(tmp_path: Path) -> None:
    out = _generate(tmp_path, _fleet_data(tmp_path, join_files=True))
    inventory = load_inventory((out / "inventory.yml").read_text())
    workers = inventory["all"]["children"]["bmslice_fleet"]["children"]["bmslice_worker"]["hosts"]
    assert [j["name"] for j in workers["server1"]["bmslice_join_files"]] == [
        "secrets/blue.kubeadm-join",
        "secrets/red.kubeadm-join",
    ]
    base = tmp_path / "hosts-base"
    proc, results = _playbook(out, base, "--tags", "secrets")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert results["Place the kubeadm join files (secrets; never logged)"]["server1"][1]["censored"].startswith(
        "the output has been hidden"
    )
    for host in ("server1", "server2", "server3"):
        for cluster in ("red", "blue"):
            placed = base / host / "secrets" / f"{cluster}.kubeadm-join"
            assert stat.S_IMODE(placed.stat().st_mode) == 0o600
            assert TOKEN in placed.read_text()
    assert not (base / "control1" / "secrets").exists()  # control-plane hosts do not join workers
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(), path


# libvirt's test driver loaded from this file: a server with 4 SMT cores and a storage pool
# 'default', where no slice was ever defined. Each process that opens it starts afresh.
NEVER_APPLIED_NODE = """\
<node>
  <cpu><mhz>2000</mhz><model>x86_64</model><active>8</active><total>8</total><nodes>1</nodes>
    <sockets>1</sockets><cores>4</cores><threads>2</threads></cpu>
  <memory>16777216</memory>
  <pool type='dir'>
    <name>default</name>
    <uuid>35bb2ad9-388a-cdfe-461a-b8907f6e53fe</uuid>
    <capacity unit='GiB'>100</capacity><allocation unit='GiB'>0</allocation><available unit='GiB'>100</available>
    <target><path>/var/lib/libvirt/images</path></target>
  </pool>
</node>
"""
APPLY = "Apply the slices of this server"
VERIFY = "Verify the live slices match the plan"


def _never_applied(tmp_path: Path) -> Path:
    """`fleet ansible` for one worker host behind test:///FILE, with a join file for its cluster."""
    node = tmp_path / "node.xml"
    node.write_text(NEVER_APPLIED_NODE)
    join = tmp_path / "secrets" / "tiny.kubeadm-join"
    join.parent.mkdir()
    join.write_text(f"kubeadm join 10.0.0.1:6443 --token {TOKEN} --discovery-token-ca-cert-hash sha256:00ff\n")
    join.chmod(0o600)
    worker = {"count": 1, "vcpus": 2, "memory": "256MiB", "emulator": "host", "iothreads": 1}
    data = {
        "inventory": [
            {
                "name": "never-applied",
                "uri": f"test://{node}",
                "role": "worker",
                "host": {"reserved_cores_per_node": 1, "reserved_memory_per_node": "512MiB"},
            }
        ],
        "clusters": [{"name": "tiny", "vlan": 10, "kubeadm_join_file": str(join), "workers": worker}],
    }
    return _generate(tmp_path, data)


def test_check_mode_on_a_server_never_applied_goes_green(tmp_path: Path) -> None:
    out = _never_applied(tmp_path)
    base = tmp_path / "hosts-base"
    proc, results = _playbook(out, base, "--check", env={"BMSLICE_LOCK_DIR": str(tmp_path / "lock")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status, applied = results[APPLY]["never-applied"]
    assert status == "changed"
    assert applied["steps"] == [
        "define tiny-worker-1",  # first, so a killed run leaves a domain that names its volumes
        "create cloud-init seed default/tiny-worker-1-seed.iso",  # built from an empty stand-in for the join file
        "start tiny-worker-1",
        "set autostart on tiny-worker-1",
    ]
    assert applied["msg"] == "check mode: secrets/tiny.kubeadm-join not placed yet; the real run places them first"
    status, verified = results[VERIFY]["never-applied"]
    assert (status, verified["not_applied"]) == ("changed", ["tiny-worker-1"])
    assert verified["msg"] == "not yet applied: tiny-worker-1 (apply would define them)"
    # bmslice's warnings are Ansible's: the test driver's capabilities name no CPU vendor
    assert "libvirt capabilities name no host CPU vendor" in applied["bmslice_warnings"]
    assert "[WARNING]: libvirt capabilities name no host CPU vendor" in proc.stderr
    assert not base.exists()  # check mode placed nothing
    assert TOKEN not in proc.stdout + proc.stderr


def test_real_run_on_a_server_never_applied_places_secrets_then_fails_cleanly(tmp_path: Path) -> None:
    """Not check mode: the join file and the bundle are placed, then apply stops where the test
    driver does (it cannot upload the seed volume) and rolls back; the task fails with bmslice's
    error line and `changed: false`, and the play stops before verify."""
    out = _never_applied(tmp_path)
    base = tmp_path / "hosts-base"
    proc, results = _playbook(out, base, env={"BMSLICE_LOCK_DIR": str(tmp_path / "lock")})
    assert proc.returncode == 2, proc.stdout + proc.stderr  # a host failed
    status, applied = results[APPLY]["never-applied"]
    assert (status, applied["changed"]) == ("fatal", False)
    assert applied["msg"].startswith("error: create cloud-init seed default/tiny-worker-1-seed.iso: ")
    assert "virStorageVolUpload" in applied["msg"]
    assert applied["files_changed"] == ["guests/tiny-worker-1.user-data.yaml", "spec.yaml"]
    placed = base / "never-applied"
    assert stat.S_IMODE((placed / "spec.yaml").stat().st_mode) == 0o600
    join = placed / "secrets" / "tiny.kubeadm-join"
    assert stat.S_IMODE(join.stat().st_mode) == 0o600 and TOKEN in join.read_text()
    assert VERIFY not in results
    assert TOKEN not in proc.stdout + proc.stderr


def _module(
    tmp_path: Path,
    args: dict[str, Any],
    *flags: str,
    inventory: tuple[str, ...] = ("-i", "localhost,", "-c", "local"),
    cwd: Path | None = None,
    timeout: int = 120,
    **env: str,
) -> tuple[str, dict[str, Any], str]:
    """`ansible all -m bmslice.slicing.bmslice -a JSON` (on localhost unless `inventory` says
    otherwise): (status, result, stderr)."""
    proc = subprocess.run(
        [
            str(BIN / "ansible"),
            "all",
            *inventory,
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-m",
            "bmslice.slicing.bmslice",
            "-a",
            json.dumps(args),
            *flags,
        ],
        cwd=cwd or tmp_path,
        env=_ansible_env(
            tmp_path, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.minimal", **env
        ),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    head, _, body = proc.stdout.partition(" => ")
    assert body, proc.stdout + proc.stderr
    return head.partition(" | ")[2].strip(), json.loads(body), proc.stderr


def test_module_refuses_wrong_typed_arguments_cleanly(tmp_path: Path) -> None:
    spec = str(tmp_path / "spec.yaml")
    status, result, _ = _module(tmp_path, {"action": "plan", "spec": spec, "files": {"spec.yaml": 5}})
    assert status == "FAILED!" and result["changed"] is False
    assert result["msg"] == "files: the value of 'spec.yaml' must be the file's text, not int"
    status, result, _ = _module(tmp_path, {"action": "apply", "spec": spec, "allow_move": "maybe"})
    assert status == "FAILED!" and result["changed"] is False
    assert result["msg"].startswith("argument 'allow_move' is of type str and we were unable to convert to bool")
    status, result, _ = _module(tmp_path, {"action": "plan", "spec": spec, "files": {"../etc/passwd": "x"}})
    assert (
        status == "FAILED!"
        and result["msg"] == "files: '../etc/passwd' is not a relative path inside the spec's directory"
    )
    status, result, _ = _module(tmp_path, {"action": "plan", "spec": spec, "pending_files": {"a": 1}})
    assert status == "FAILED!" and result["changed"] is False
    assert "pending_files" in result["msg"] and "list" in result["msg"]


def test_module_audit_failure_names_the_violations(tmp_path: Path) -> None:
    """server2's tree runs a backup agent allowed on every CPU and an IRQ on an isolated CPU."""
    from test_fleet_example import server2_with_violations

    tree = server2_with_violations(tmp_path / "server2")
    spec = tmp_path / "spec.yaml"
    spec.write_text("vms:\n  - {name: red-worker-2, vcpus: 8, memory: 8GiB, numa_node: 0, emulator: dedicated}\n")
    status, result, _ = _module(
        tmp_path, {"action": "audit", "spec": str(spec), "host_root": str(tree), "command": str(BIN / "bmslice")}
    )
    assert status == "FAILED!" and result["changed"] is False
    assert result["msg"].startswith("audit: 2 violation(s): irq 40: ")
    assert result["msg"].endswith(
        "; thread 4242: pid 4242 (backup-agent) may run on isolated CPU(s) 2-11,14-23 (Cpus_allowed_list 0-23)"
    )
    assert len(result["violations"]) == 2 and result["msg"] == "audit: 2 violation(s): " + "; ".join(
        result["violations"]
    )


@pytest.mark.libvirtd
def test_apply_for_real_on_this_machine_then_verify_and_destroy(tmp_path: Path) -> None:
    conn = open_qemu()  # fails with how to start libvirtd (BMSLICE_SKIP_LIBVIRTD=1 skips)
    prefix = f"bmslice-test-fleet-{secrets.token_hex(3)}-"
    host: dict[str, Any] = {"reserved_cores_per_node": 1, "reserved_memory_per_node": "512MiB"}
    if not HAS_KVM:
        host["domain_type"] = "qemu"
    worker: dict[str, Any] = {"count": 1, "vcpus": 1, "memory": "128MiB", "emulator": "host", "iothreads": 1}
    if HAS_KVM:  # nested virtualisation here: host-passthrough needs IA32_ARCH_CAPABILITIES off
        worker["disable_cpu_features"] = ["arch-capabilities"]
    data = {
        "vm_prefix": prefix,
        "inventory": [{"name": "this-machine", "uri": "qemu:///system", "role": "worker", "host": host}],
        "clusters": [{"name": "tiny", "vlan": 10, "workers": worker}],
    }
    out = _generate(tmp_path, data)
    base = tmp_path / "hosts-base"
    env = {"BMSLICE_LOCK_DIR": str(tmp_path / "lock")}
    name = f"{prefix}tiny-worker-1"
    spec = base / "this-machine" / "spec.yaml"
    try:
        proc, results = _playbook(out, base, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        status, applied = results["Apply the slices of this server"]["this-machine"]
        assert status == "changed"
        assert applied["steps"][-4:] == [
            f"define {name}",  # the domain first: it names the volumes a killed run would leave
            f"create cloud-init seed default/{name}-seed.iso",
            f"start {name}",
            f"set autostart on {name}",
        ]
        assert results["Verify the live slices match the plan"]["this-machine"][0] == "ok"
        assert conn.lookupByName(name).isActive()
        assert stat.S_IMODE(spec.stat().st_mode) == 0o600

        proc, results = _playbook(out, base, env=env)  # nothing to do the second time: changed=false
        assert proc.returncode == 0, proc.stdout + proc.stderr
        status, again = results["Apply the slices of this server"]["this-machine"]
        assert (status, again["files_changed"], again["steps"]) == ("ok", [], [])

        proc, results = _playbook(out, base, "--check", env=env)  # a dry run sees no change either
        assert results["Apply the slices of this server"]["this-machine"][0] == "ok"

        fleet_verify = subprocess.run(
            [
                sys.executable,
                "-m",
                "bmslice.cli.fleet_cmd",
                "fleet",
                "verify",
                str(tmp_path / "fleet.yaml"),
                "--placement",
                str(out / "placement.json"),
                "--json",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=False,
        )
        report = json.loads(fleet_verify.stdout)
        assert (fleet_verify.returncode, report["ok"]) == (0, True), fleet_verify.stdout + fleet_verify.stderr
        assert report["hosts"][0]["status"] == "ok"
    finally:
        if spec.exists():
            subprocess.run(
                [str(BIN / "bmslice"), "destroy", str(spec)],
                capture_output=True,
                text=True,
                env={**os.environ, **env},
                check=False,
            )
        leftovers = purge(conn, prefix)
        kill_leftover_qemu(prefix)
        conn.close()
        shutil.rmtree(base, ignore_errors=True)
    assert leftovers == []  # bmslice destroy removed the domain and its seed volume


def test_the_module_writes_through_no_planted_link(tmp_path: Path) -> None:
    """Issue 19, class 1, on the managed server: a link planted where the module places a file
    is replaced by the file (its target untouched); a link in place of a directory fails the
    task before anything is written through it."""
    spec_dir = tmp_path / "host"
    spec_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("root's own file\n")
    victim.chmod(0o644)
    os.symlink(victim, spec_dir / "spec.yaml")
    text = "vms: []\n"
    args = {
        "action": "apply",
        "spec": str(spec_dir / "spec.yaml"),
        "uri": "test:///default",
        "command": str(BIN / "bmslice"),
        "files": {"spec.yaml": text},
    }
    _status, result, _ = _module(tmp_path, args)
    assert result["files_changed"] == ["spec.yaml"]
    assert victim.read_text() == "root's own file\n" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    placed = spec_dir / "spec.yaml"
    assert not placed.is_symlink() and placed.read_text() == text
    assert stat.S_IMODE(placed.stat().st_mode) == 0o600

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, spec_dir / "guests")
    args["files"] = {"spec.yaml": text, "guests/w1.user-data.yaml": "#cloud-config\n"}
    status, result, _ = _module(tmp_path, args)
    assert (
        status == "FAILED!"
        and result["msg"] == f"{spec_dir / 'guests'} is a symbolic link: bmslice writes through no link it did not make"
    )
    assert list(elsewhere.iterdir()) == []
