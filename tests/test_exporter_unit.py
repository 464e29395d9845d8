"""The exporter's systemd unit: rendered by host-config, placed alone by `host-apply --only exporter`,
checked by `systemd-analyze verify` and rated by `systemd-analyze security`; enabled per server
by the Ansible collection's `exporter` action (on a host tree: `systemctl --root`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bmslice.cli import host_cmds
from metrics_fixtures import sliced_host
from test_fleet_ansible import BIN, _module
from test_reboot_files import need, systemd_verify

UNIT = "etc/systemd/system/bmslice-exporter.service"
WANTS = "etc/systemd/system/multi-user.target.wants/bmslice-exporter.service"


def test_host_config_renders_a_locked_down_unit_on_the_reserved_cpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = sliced_host(tmp_path / "host")
    out = tmp_path / "out"
    args = [str(host.built.spec_path), "--host-root", str(host.built.root), "--out", str(out)]
    assert host_cmds.main(["host-config", *args, "--exporter-listen", "[::1]:9100"]) == 0
    capsys.readouterr()
    unit = (out / UNIT).read_text()
    reserved = host.plan.host.reserved_cpus
    assert f"CPUAffinity={reserved}\n" in unit and reserved.format() == "0,2,4,6"
    assert (
        f"ExecStart={sys.executable} -m bmslice.cli.main exporter {host.built.spec_path} --connect qemu:///system "
        "--listen [::1]:9100\n" in unit
    )
    checked, output = systemd_verify({UNIT: unit}, tmp_path / "verify")
    assert output == "exit 0\n" and checked == ["bmslice-exporter.service"], output
    analyze = need("systemd-analyze", "systemd")
    rated = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=30", str(out / UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # exposure 3.0 or less ("OK" on systemd's scale): read-only, no devices, no new privileges, ...
    assert rated.returncode == 0 and "Overall exposure level for bmslice-exporter.service: " in rated.stdout, (
        rated.stdout[-2000:] + rated.stderr
    )


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--exporter-command", "/opt/my bmslice", "error: exporter command '/opt/my bmslice': the exporter unit takes"),
        ("--exporter-command", "/opt/%h/bmslice", "error: exporter command '/opt/%h/bmslice': the exporter unit takes"),
        ("--exporter-listen", "0.0.0.0:http", "error: --listen '0.0.0.0:http': expected ADDRESS:PORT"),
        ("--exporter-listen", "[10.0.0.11]:9963", "error: --listen '[10.0.0.11]:9963': '10.0.0.11' is not an IPv6"),
    ],
)
def test_a_value_outside_the_units_grammar_is_refused_before_anything_is_written(
    flag: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = sliced_host(tmp_path / "host")
    before = sorted(p.relative_to(host.built.root) for p in host.built.root.rglob("*"))
    assert (
        host_cmds.main(["host-apply", str(host.built.spec_path), "--host-root", str(host.built.root), flag, value]) == 2
    )
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1, err
    assert sorted(p.relative_to(host.built.root) for p in host.built.root.rglob("*")) == before


def test_host_apply_only_exporter_places_the_unit_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = sliced_host(tmp_path / "host")
    root = host.built.root
    args = ["host-apply", str(host.built.spec_path), "--host-root", str(root), "--only", "exporter"]
    assert host_cmds.main(args) == 0
    out = capsys.readouterr().out
    assert f"  create /{UNIT}" in out.splitlines() and out.count("  create ") == 1, out
    assert "next: run `systemctl enable --now bmslice-exporter.service` to serve the metrics" in out
    assert not (root / "etc/default/grub.d").exists() and not (root / "var/lib/bmslice").exists()
    assert host_cmds.main(args) == 0
    assert "no changes: 1 file(s) and setting(s) already as planned" in capsys.readouterr().out


def test_the_collection_enables_the_exporter_on_a_server_and_disables_it(tmp_path: Path) -> None:
    host = sliced_host(tmp_path / "host")
    root = host.built.root
    action = {
        "action": "exporter",
        "spec": str(host.built.spec_path),
        "host_root": str(root),
        "command": str(BIN / "bmslice"),
    }

    status, result, _ = _module(tmp_path, action, "--check")
    assert status == "CHANGED" and result["steps"][-1] == "enable bmslice-exporter.service", result
    assert not (root / UNIT).exists()  # check mode wrote nothing

    status, result, _ = _module(tmp_path, action)
    assert status == "CHANGED", result
    assert result["steps"] == [f"create /{UNIT}", "enable bmslice-exporter.service"]
    assert (root / WANTS).is_symlink() and str((root / WANTS).readlink()) == f"/{UNIT}"
    assert "--listen 127.0.0.1:9963\n" in (root / UNIT).read_text()

    status, result, _ = _module(tmp_path, action)
    assert status == "SUCCESS" and result["changed"] is False and result["steps"] == [], result

    status, result, _ = _module(tmp_path, {**action, "exporter_listen": "10.0.0.11:9963"})
    assert status == "CHANGED" and result["steps"] == [f"update /{UNIT}"], result
    assert "--listen 10.0.0.11:9963\n" in (root / UNIT).read_text()

    status, result, _ = _module(tmp_path, {**action, "exporter_enabled": False})
    assert status == "CHANGED" and result["steps"] == ["disable bmslice-exporter.service"], result
    assert not (root / WANTS).exists()
