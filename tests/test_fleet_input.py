"""Fleet and placement files that name one thing twice, or carry text that must not reach a
generated file: each refused with one `error:` line naming the file and the reason.

- a server named twice: the same name ignoring case (DNS does), or the same libvirt URI
  (ignoring the case of scheme and host, a trailing slash, an empty path);
- a placement file with the same VM twice;
- a trailing newline in a name, a switch, a port or a VLAN name;
- a fleet file whose own name holds a newline: escaped in every generated header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmslice.cli import fleet_cmd
from test_fleet_example import example_data


def _plan(tmp_path: Path, data: dict[str, Any], capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    code = fleet_cmd.main(["fleet", "plan", str(path), "--no-check", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda inv: inv[2].update(name="server1"), "inventory: duplicate host name 'server1'"),
        (
            lambda inv: inv[2].update(name="Server1"),
            "inventory: 'server1' and 'Server1' name one host (host names ignore case)",
        ),
        (
            lambda inv: inv[2].update(uri="qemu+ssh://root@server1/system"),
            "inventory: server1 and server2 are one server: the same URI 'qemu+ssh://root@server1/system'",
        ),
        (
            lambda inv: inv[2].update(uri="QEMU+SSH://root@SERVER1/system/"),
            "inventory: server1 and server2 are one server: the same URI 'QEMU+SSH://root@SERVER1/system/'",
        ),
        (lambda inv: inv[1].update(name="server1\n"), "inventory[1].name: 'server1\\n' is not a host name"),
        (
            lambda inv: inv[1]["nics"].update(eno1={"switch": "fabric-switch\n", "port": "ge-0/0/9"}),
            "inventory[1].nics.eno1.switch: 'fabric-switch\\n' is not a switch name",
        ),
        (
            lambda inv: inv[1]["nics"].update(eno1={"switch": "fabric-switch", "port": "ge-0/0/9\n"}),
            "inventory[1].nics.eno1.port: 'ge-0/0/9\\n' is not a Junos physical port",
        ),
    ],
)
def test_a_server_named_twice_or_a_name_with_a_newline_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, message: str
) -> None:
    data = example_data()
    change(data["inventory"])
    code, err = _plan(tmp_path, data, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'fleet.yaml'}: {message}")


def test_a_vlan_name_with_a_newline_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = example_data()
    data["clusters"][0]["vlan_name"] = "Red\nset system services telnet"
    code, err = _plan(tmp_path, data, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "clusters[0].vlan_name: 'Red\\nset system services telnet' is not a VLAN name" in err


def test_other_uris_are_other_servers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = example_data()
    data["inventory"][2]["uri"] = "qemu+ssh://root@server1:2222/system"  # another port: another sshd, another server
    code, err = _plan(tmp_path, data, capsys)
    assert code == 0, err


@pytest.mark.parametrize("command", ["plan", "verify"])
def test_a_placement_with_the_same_vm_twice_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    out = tmp_path / "out"
    code, err = _plan(tmp_path, example_data(), capsys, "--out", str(out))
    assert code == 0, err
    placement = out / "placement.json"
    data = json.loads(placement.read_text())
    data["vms"].append({**data["vms"][3], "host": "server3"})
    placement.write_text(json.dumps(data))
    code = fleet_cmd.main(["fleet", command, str(tmp_path / "fleet.yaml"), "--placement", str(placement)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: {placement}: VM 'blue-worker-1' is placed twice; a VM has one place (keep one entry)\n"


def test_a_fleet_file_name_with_a_newline_is_escaped_in_every_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weird = tmp_path / "fleet\nset system services telnet.yaml"
    weird.write_text(yaml.safe_dump(example_data()))
    out = tmp_path / "out"
    assert fleet_cmd.main(["fleet", "ansible", str(weird), "--out", str(out)]) == 0, capsys.readouterr().err
    for path in [out / "inventory.yml", out / "fabric/fabric-switch.set", out / "hosts/server1/spec.yaml"]:
        text = path.read_text()
        assert "fleet\\nset system services telnet.yaml" in text, path
        assert not any(line.startswith("set system") for line in text.splitlines()), path
