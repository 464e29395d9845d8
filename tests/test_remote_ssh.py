# ruff: noqa: F811 - test parameters take the names of the fixtures imported from libvirt_fixtures
"""The remote path for real (issue 13): bmslice through `qemu+ssh://` and the fleet playbook
through Ansible's ssh, against a private sshd on this machine's loopback (tests/sshd_server.py).

The "remote" host is this machine reached through ssh, so what bmslice did there can be
checked from here with the kernel's and libvirt's own answers:

- the sshd is key-only and a sshd that cannot start fails the test with its reason;
- `discover --connect qemu+ssh://...` reads the host through libvirt (capabilities and node
  devices) and finds the same CPUs, cores, NUMA nodes and PCI devices as sysfs does here;
- plan, apply, verify, status, drift repair and destroy through qemu+ssh; verify says what it
  could not check from afar (QEMU's threads in /proc) while the test checks them here;
- a remote and a local apply to this machine hold one lock (libvirt names one host for both);
- `bmslice fleet ansible` turns libvirt's ssh options of the URI into Ansible's, and the
  generated playbook runs for real (not check mode) over ssh: the module runs bmslice on the
  "server" with this repository's venv Python; `fleet verify` then checks through qemu+ssh
  and an ad-hoc `ansible` call destroys the slice over ssh.

Every slice is named `bmslice-ssh-<random>`; the fixture removes whatever is left under that
name. Keys, configs, logs, Ansible's temporary and control files all live under tmp_path.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bmslice.apply.uri import is_local
from bmslice.cli import fleet_cmd
from bmslice.fleet.ansible import connection_vars
from bmslice.model.fleet import InventoryHost
from inventory_yaml import load_inventory
from libvirt_fixtures import (  # the fixtures are imported here; pytest finds them by name
    QEMU_URI,
    Cli,
    Slices,
    bmslice_cli,  # noqa: F401
    bmslice_lock_dir,  # noqa: F401
    clean_up,
    host_section,
    one_error,
    qemu_conn,  # noqa: F401
    qemu_pid,
    steps,
    thread_cpus,
    unique_prefix,
    vm_entry,
    wait_gone,
    with_disk,
    write_spec,
)
from sshd_server import SshServer, start_sshd
from test_fleet_ansible import APPLY, BIN, VERIFY, _generate, _module, _playbook

libvirtd = pytest.mark.libvirtd
NOT_CHECKED = "not checked through qemu+ssh://"


@pytest.fixture
def sshd(tmp_path: Path, bmslice_lock_dir: Path) -> Iterator[SshServer]:
    # a bmslice run in an ssh session (the Ansible module's) locks in this test's directory too
    with start_sshd(tmp_path / "sshd", env={"BMSLICE_LOCK_DIR": str(bmslice_lock_dir)}) as server:
        yield server


@pytest.fixture
def ssh_slices(qemu_conn: Any) -> Iterator[Slices]:
    prefix = unique_prefix("ssh")
    try:
        yield Slices(prefix, qemu_conn)
    finally:
        clean_up(prefix)


# --- the sshd itself ---------------------------------------------------------------------------


def test_a_sshd_that_cannot_start_fails_the_test_with_its_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(pytest.fail.Exception) as failed, start_sshd(tmp_path, port=port):
            pass
    message = str(failed.value)
    assert message.startswith(f"sshd did not start: port {port} of 127.0.0.1 is in use; sshd said: ")
    assert "Address already in use" in message


def test_the_sshd_takes_keys_only(tmp_path: Path, sshd: SshServer) -> None:
    assert sshd.run("id -u").stdout == "0\n"  # root, by the key the fixture made
    assert sshd.logins() == 1
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    # the fixture's client settings, but a key the server was never given
    client = ["IdentitiesOnly=yes", "IdentityAgent=none", "BatchMode=yes", "GlobalKnownHostsFile=/dev/null"]
    client.append(f"UserKnownHostsFile={sshd.work / 'known_hosts'}")
    argv = ["/usr/bin/ssh", "-v", "-F", "/dev/null", *(f"-o{o}" for o in client), "-i", str(stranger)]
    refused = subprocess.run(
        [*argv, "-p", str(sshd.port), "root@127.0.0.1", "true"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 255
    assert "Permission denied (publickey)." in refused.stderr
    # the only method the server offers: no password, no keyboard-interactive
    offered = set(re.findall(r"Authentications that can continue: (\S+)", refused.stderr))
    assert offered == {"publickey"}, refused.stderr
    assert sshd.logins() == 1


# --- what a remote URI becomes --------------------------------------------------------------------


def test_a_uri_over_ssh_is_remote_even_to_this_machine() -> None:
    for uri in (
        "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k",
        "qemu+ssh://localhost/system",
        "qemu+libssh://root@127.0.0.1/system",
        "qemu://127.0.0.1/system",
    ):
        assert not is_local(uri), uri


def test_libvirt_ssh_options_become_ansible_connection_variables() -> None:
    def variables(uri: str) -> dict[str, Any]:
        return connection_vars(InventoryHost(name="server1", uri=uri, role="worker"))

    uri = "qemu+ssh://admin@server1.example:2222/system?keyfile=/keys/id%20one&command=/opt/ssh-x&no_verify=1&no_tty=1"
    assert variables(uri) == {
        "ansible_host": "server1.example",
        "ansible_user": "admin",
        "ansible_port": 2222,
        "ansible_ssh_private_key_file": "/keys/id one",
        "ansible_ssh_executable": "/opt/ssh-x",
        "ansible_ssh_transfer_method": "piped",  # every transfer through that ssh, not sftp/scp
        "ansible_host_key_checking": False,
        "bmslice_uri": "qemu:///system",
    }
    # libvirt's reading: names in any case, the last one given counts, no_verify=0 verifies
    assert variables("qemu+ssh://server1/system?KeyFile=/a&keyfile=/b&no_verify=0") == {
        "ansible_host": "server1",
        "ansible_ssh_private_key_file": "/b",
        "bmslice_uri": "qemu:///system",
    }
    # TLS is not ssh: neither its port nor its parameters are Ansible's
    assert variables("qemu+tls://server1:16514/system?keyfile=/a") == {
        "ansible_host": "server1",
        "bmslice_uri": "qemu:///system",
    }


# --- discover, plan, apply, verify, destroy through qemu+ssh ---------------------------------------


def _json(run: Any) -> Any:
    assert run.returncode == 0, run
    return json.loads(run.stdout)


@libvirtd
def test_remote_discovery_finds_what_sysfs_finds_here(sshd: SshServer, bmslice_cli: Cli) -> None:
    remote = _json(bmslice_cli("discover", "--connect", sshd.uri(), "--json"))
    local = _json(bmslice_cli("discover", "--json"))
    assert sshd.logins() >= 1  # through ssh, not the local socket
    assert remote["source"] == f"libvirt:{sshd.uri()}"
    assert remote["hostname"] == local["hostname"] == socket.gethostname()
    assert remote["cpus"] == local["cpus"]
    assert remote["cores"] == local["cores"]
    assert [(n["id"], n["cpus"]) for n in remote["numa_nodes"]] == [(n["id"], n["cpus"]) for n in local["numa_nodes"]]

    def devices(topology: Any) -> list[tuple[str, str | None, list[str]]]:
        return sorted((d["address"], d["driver"], d["interfaces"]) for d in topology["pci_devices"])

    assert devices(remote) == devices(local)  # libvirt's node devices, read over ssh
    # what libvirt cannot tell is said, not guessed
    assert remote["kernel_cmdline"] == "" and remote["default_route_interface"] is None
    assert "kernel command line is unknown through libvirt; isolation settings cannot be checked" in remote["warnings"]


@libvirtd
def test_plan_apply_verify_repair_destroy_through_ssh(
    sshd: SshServer, ssh_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    uri = sshd.uri()
    vm = ssh_slices.name("a")
    spec = write_spec(tmp_path / "spec.yaml", [with_disk(vm_entry(vm))])

    remote_plan = _json(bmslice_cli("plan", spec, "--connect", uri, "--json"))["vms"][0]
    local_plan = _json(bmslice_cli("plan", spec, "--json"))["vms"][0]
    assert (remote_plan["vcpu_pins"], remote_plan["emulator_cpus"]) == (
        local_plan["vcpu_pins"],
        local_plan["emulator_cpus"],
    )
    vcpu_cpu, emulator = remote_plan["vcpu_pins"][0], remote_plan["emulator_cpus"]

    run = bmslice_cli("apply", spec, "--connect", uri)
    assert run.returncode == 0, run
    assert steps(run) == [
        f"define {vm}",
        f"create volume default/{vm}.qcow2 (64 MiB qcow2)",
        f"create cloud-init seed default/{vm}-seed.iso",
        f"start {vm}",
        f"set autostart on {vm}",
    ]
    dom = ssh_slices.conn.lookupByName(vm)
    assert dom.isActive() and dom.autostart()
    pid = qemu_pid(vm)
    # what verify cannot see from afar, seen here: the vCPU thread on its CPU
    vcpu_threads = [cpus for comm, cpus in thread_cpus(pid).values() if re.fullmatch(r"CPU \d+/(KVM|TCG)", comm)]
    assert vcpu_threads == [str(vcpu_cpu)]

    run = bmslice_cli("verify", spec, "--connect", uri)
    assert run.returncode == 0, run
    assert "ok: 1 slice(s) match the plan" in run.lines
    report = _json(bmslice_cli("verify", spec, "--connect", uri, "--json"))
    unchecked = [note for note in report["notes"] if note.startswith(NOT_CHECKED)]
    assert unchecked == [
        f"not checked through {uri}: the CPUs each QEMU thread may run on (/proc/<pid>/task on the host); "
        "libvirt's vCPU, emulator and IOThread pins were checked; run `bmslice verify` on the host for both"
    ]
    local = _json(bmslice_cli("verify", spec, "--json"))  # on the host itself the threads are checked
    assert local["ok"] and not any(note.startswith("not checked") for note in local["notes"])

    run = bmslice_cli("status", spec, "--connect", uri)
    assert run.returncode == 0 and re.search(rf"{re.escape(vm)}\s.*running\s.*yes", run.stdout), run

    # drift behind bmslice's back: libvirt's pin API shows it through ssh, the repair is live
    drift_cpu = min(emulator)
    subprocess.run(["virsh", "-q", "-c", QEMU_URI, "vcpupin", vm, "0", str(drift_cpu), "--live"], check=True)
    run = bmslice_cli("verify", spec, "--connect", uri)
    assert run.returncode == 1, run
    assert f"{vm} vCPU 0 pinned to {drift_cpu}, plan says {vcpu_cpu}" in run.lines
    assert not any(re.search(r" thread \d+ \(", line) for line in run.lines), run  # no /proc from afar
    run = bmslice_cli("apply", spec, "--connect", uri)
    assert run.returncode == 0, run
    assert steps(run) == [f"re-pin {vm} vCPU 0 live: {drift_cpu} -> {vcpu_cpu}"]
    assert qemu_pid(vm) == pid  # no restart
    assert bmslice_cli("verify", spec, "--connect", uri).returncode == 0

    run = bmslice_cli("destroy", spec, "--connect", uri)
    assert run.returncode == 0, run
    assert steps(run) == [
        f"stop {vm}",
        f"undefine {vm}",
        f"delete volume /var/lib/libvirt/images/{vm}.qcow2",
        f"delete volume /var/lib/libvirt/images/{vm}-seed.iso",
    ]
    assert wait_gone(pid)
    assert ssh_slices.leftovers() == []


@libvirtd
@pytest.mark.parametrize("first", ["local", "remote"])
def test_a_remote_and_a_local_apply_to_this_machine_refuse_each_other(
    first: str, sshd: SshServer, ssh_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    """libvirt names one host for qemu:///system and qemu+ssh:// to it, so one lock serves both.
    (The lock is a file on the machine bmslice runs on: the Ansible module runs bmslice on each
    server itself, so runs for a server lock there; see src/bmslice/apply/lock.py.)"""
    uris = {"local": QEMU_URI, "remote": sshd.uri()}
    second = "remote" if first == "local" else "local"
    vm = ssh_slices.name("a")
    spec = write_spec(tmp_path / "spec.yaml", [with_disk(vm_entry(vm))])
    running = bmslice_cli.start("apply", spec, "--connect", uris[first])
    running.wait_line(f"define {vm}")
    running.signal(signal.SIGSTOP)  # mid-run, holding the lock
    try:
        refused = bmslice_cli("apply", spec, "--connect", uris[second])
    finally:
        running.signal(signal.SIGCONT)
    error = one_error(refused)
    host = ssh_slices.conn.getHostname()
    assert (
        f"another bmslice run holds the lock for host qemu@{host} (pid {running.proc.pid} via {uris[first]})" in error
    )
    assert steps(refused) == []
    done = running.finish()
    assert done.returncode == 0 and "applied: 5 step(s)" in done.lines, done
    assert bmslice_cli("destroy", spec, "--connect", uris[second]).returncode == 0
    assert ssh_slices.leftovers() == []


# --- the fleet playbook over ssh ------------------------------------------------------------------


def _over_ssh(tmp_path: Path) -> dict[str, str]:
    """Where Ansible keeps its files on both ends of the ssh connection: under tmp_path."""
    return {
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote-tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "ansible-cp"),
    }


def _ad_hoc(out: Path, tmp_path: Path, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`ansible all -m bmslice.slicing.bmslice` with the generated inventory, over ssh: (status, result)."""
    status, result, _ = _module(
        tmp_path, args, inventory=("-i", "inventory.yml"), cwd=out, timeout=180, **_over_ssh(tmp_path)
    )
    return status, result


@libvirtd
def test_the_fleet_playbook_runs_over_ssh(
    sshd: SshServer, ssh_slices: Slices, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (BIN / "ansible-playbook").exists():
        pytest.fail(f"ansible-playbook is not in {BIN}: pip install -e '.[fleet]' (scripts/setup-host.sh does)")
    worker = {k: v for k, v in vm_entry("unused").items() if k != "name"}
    data = {
        "vm_prefix": f"{ssh_slices.prefix}-",
        "inventory": [{"name": "over-ssh", "uri": sshd.uri(), "role": "worker", "host": host_section()}],
        "clusters": [{"name": "tiny", "vlan": 10, "workers": {**worker, "count": 1}}],
    }
    logins = sshd.logins()
    out = _generate(tmp_path, data)  # fleet ansible reads the server through qemu+ssh
    assert sshd.logins() > logins
    host = load_inventory((out / "inventory.yml").read_text())["all"]["children"]["bmslice_fleet"]["children"]
    connection = {k: v for k, v in host["bmslice_worker"]["hosts"]["over-ssh"].items() if k.startswith("ansible_")}
    assert connection == {
        "ansible_host": "127.0.0.1",
        "ansible_user": "root",
        "ansible_port": sshd.port,
        "ansible_ssh_private_key_file": str(sshd.client_key),
        "ansible_ssh_executable": str(sshd.ssh),
        "ansible_ssh_transfer_method": "piped",
    }

    base = tmp_path / "hosts-base"
    name = f"{ssh_slices.prefix}-tiny-worker-1"
    python = ("-e", f"ansible_python_interpreter={sys.executable}")  # bmslice's venv on the "server"
    logins = sshd.logins()
    proc, results = _playbook(out, base, *python, env=_over_ssh(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sshd.logins() > logins  # Ansible went through the sshd
    status, applied = results[APPLY]["over-ssh"]
    assert status == "changed"
    assert applied["steps"] == [
        f"define {name}",
        f"create cloud-init seed default/{name}-seed.iso",
        f"start {name}",
        f"set autostart on {name}",
    ]
    status, verified = results[VERIFY]["over-ssh"]
    assert status == "ok" and verified["report"]["ok"]
    # the module ran bmslice on the server itself: its verify saw the QEMU threads
    assert not any(note.startswith("not checked") for note in verified["report"]["notes"])
    assert ssh_slices.conn.lookupByName(name).isActive()
    assert (base / "over-ssh" / "spec.yaml").is_file()

    proc, results = _playbook(out, base, *python, env=_over_ssh(tmp_path))  # again: nothing to do
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status, again = results[APPLY]["over-ssh"]
    assert (status, again["files_changed"], again["steps"]) == ("ok", [], [])

    # from the controller, through the inventory's qemu+ssh URI
    placement = str(out / "placement.json")
    capsys.readouterr()  # what fleet ansible printed
    code = fleet_cmd.main(["fleet", "verify", str(tmp_path / "fleet.yaml"), "--placement", placement, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (code, report["ok"]) == (0, True), report
    assert report["hosts"][0]["status"] == "ok"

    spec = str(base / "over-ssh" / "spec.yaml")
    status, destroyed = _ad_hoc(out, tmp_path, {"action": "destroy", "spec": spec, "command": str(BIN / "bmslice")})
    assert status == "CHANGED", destroyed
    assert destroyed["steps"] == [
        f"stop {name}",
        f"undefine {name}",
        f"delete volume /var/lib/libvirt/images/{name}-seed.iso",
    ]
    assert ssh_slices.leftovers() == []
