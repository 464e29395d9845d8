"""The switch side of a fleet: Junos config in either style, and what the switches learned.

- Junos: the file header says which style it is for (ELS `interface-mode` or the legacy
  `port-mode`, chosen per switch in the fleet file), and every managed port's
  ethernet-switching configuration is deleted before it is set, so `load set` (which
  merges) leaves no old VLAN member behind;
- `fleet verify --switch-table SWITCH=FILE`: captured `show ethernet-switching table` output
  (tests/data/switch-tables, written in Junos' four documented forms: ELS and legacy, JSON and
  text) is read, and each VM NIC is reported learned where planned, learned elsewhere (the
  wrong VLAN, the wrong port: both named) or missing. Without tables, it prints the commands
  to capture them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmslice.cli import fleet_cmd
from bmslice.errors import SpecError
from bmslice.fleet.fabric import fabric_data, junos_config
from bmslice.fleet.fabric_check import ExpectedNic, NicStatus, check_nic
from bmslice.fleet.hosts import read_hosts
from bmslice.fleet.placement import place
from bmslice.fleet.switch_table import LearnedMac, parse_switch_table
from bmslice.model.fields import as_data
from bmslice.model.fleet import Fleet, fleet_from_data, load_fleet
from bmslice.model.topology import HostTopology

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fleet"
TABLES = Path(__file__).parent / "data" / "switch-tables"
FORMS = ("els.json", "els.txt", "legacy.json", "legacy.txt")


@pytest.fixture(scope="module")
def example() -> tuple[Fleet, dict[str, HostTopology]]:
    fleet = load_fleet(EXAMPLE / "fleet.yaml")
    return fleet, read_hosts(fleet)


def _with_switches(fleet: Fleet, switches: dict[str, Any]) -> Fleet:
    data = as_data(fleet)
    data["switches"] = switches
    return fleet_from_data(data, "test")


# --- Junos ------------------------------------------------------------------------------------


def _port_lines(config: str, port: str) -> list[str]:
    return [line for line in config.splitlines() if f" {port} " in f"{line} "]


def test_els_config_says_its_style_and_owns_each_port(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    fleet, topologies = example
    (switch,) = fabric_data(fleet, place(fleet, topologies))["switches"]
    assert switch["junos"] == "els"
    config = junos_config(switch, "fleet.yaml")
    assert (
        config.splitlines()[1]
        == "# Junos style: ELS (Enhanced Layer 2 Software: EX2300/3400/4300, QFX; `interface-mode`)."
    )
    assert "bmslice owns the ports below" in config
    assert _port_lines(config, "ge-0/0/9") == [
        "delete interfaces ge-0/0/9 unit 0 family ethernet-switching",
        "delete interfaces ge-0/0/9 native-vlan-id",
        'set interfaces ge-0/0/9 description "server1 eno1: red-worker-1"',
        "set interfaces ge-0/0/9 unit 0 family ethernet-switching interface-mode access",
        "set interfaces ge-0/0/9 unit 0 family ethernet-switching vlan members Red_Tenant_Network",
    ]
    # every port bmslice sets is deleted first: no set on a port before its delete
    for port in {p["port"] for p in switch["ports"]}:
        lines = _port_lines(config, port)
        assert lines[0] == f"delete interfaces {port} unit 0 family ethernet-switching"
        assert all(line.startswith("set ") for line in lines[2:])
    assert "port-mode" not in config


def test_legacy_style_per_switch(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    fleet, topologies = example
    legacy = _with_switches(fleet, {"fabric-switch": {"junos": "legacy"}})
    (switch,) = fabric_data(legacy, place(legacy, topologies))["switches"]
    config = junos_config(switch, "fleet.yaml")
    assert config.splitlines()[1] == "# Junos style: legacy, before ELS (EX2200/3300/4200 and others; `port-mode`)."
    assert _port_lines(config, "ge-0/0/8") == [
        "delete interfaces ge-0/0/8 unit 0 family ethernet-switching",  # holds the legacy native VLAN too
        'set interfaces ge-0/0/8 description "server1 eno2: blue-worker-1"',
        "set interfaces ge-0/0/8 unit 0 family ethernet-switching port-mode access",
        "set interfaces ge-0/0/8 unit 0 family ethernet-switching vlan members Blue_Tenant_Network",
    ]
    assert "interface-mode" not in config and "native-vlan-id" not in config


def test_a_port_that_becomes_a_trunk_loses_its_old_access_vlan(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    """Red and Blue move to VFs of eno1: ge-0/0/9 becomes a trunk with both VLANs. The delete
    comes first, so an access VLAN the port had before cannot stay as a third member."""
    fleet, topologies = example
    data = as_data(fleet)
    for cluster in data["clusters"]:
        cluster["workers"].update(nic={"kind": "sriov", "pf": "eno1"}, vcpus=4)
    sriov = fleet_from_data(data, "test")
    (switch,) = fabric_data(sriov, place(sriov, topologies))["switches"]
    assert _port_lines(junos_config(switch), "ge-0/0/9") == [
        "delete interfaces ge-0/0/9 unit 0 family ethernet-switching",
        "delete interfaces ge-0/0/9 native-vlan-id",
        'set interfaces ge-0/0/9 description "server1 eno1: blue-worker-1 red-worker-1"',
        "set interfaces ge-0/0/9 unit 0 family ethernet-switching interface-mode trunk",
        "set interfaces ge-0/0/9 unit 0 family ethernet-switching vlan members [ Red_Tenant_Network Blue_Tenant_Network ]",
    ]


def test_a_style_for_a_switch_nothing_is_cabled_to_is_refused(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    fleet, _ = example
    with pytest.raises(SpecError, match=r"^test: switches: no inventory NIC is cabled to 'fabric-swich'$"):
        _with_switches(fleet, {"fabric-swich": {"junos": "legacy"}})
    with pytest.raises(
        SpecError, match=r"^test: switches\.fabric-switch\.junos: expected 'els' or 'legacy', got 'els2'$"
    ):
        _with_switches(fleet, {"fabric-switch": {"junos": "els2"}})


def test_a_file_name_cannot_add_a_line_to_the_junos_config(example: tuple[Fleet, dict[str, HostTopology]]) -> None:
    fleet, topologies = example
    (switch,) = fabric_data(fleet, place(fleet, topologies))["switches"]
    config = junos_config(switch, "evil\nset system services telnet")
    assert not any(line.startswith("set system") for line in config.splitlines())
    assert config.splitlines()[0] == (
        "# fabric-switch: tenant VLANs for the bmslice fleet, generated from evil\\nset system services telnet."
    )


# --- what the switch learned ---------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_every_form_of_the_table_reads_the_same(form: str) -> None:
    learned = parse_switch_table((TABLES / form).read_text(), form)
    assert len(learned) == 9  # flood entries (*) and All-members are no MACs of a port
    assert LearnedMac("02:51:52:42:3e:98", "Red_Tenant_Network", 100 if form == "els.json" else None, "ge-0/0/8") in (
        learned
    )
    assert {m.port for m in learned} == {
        "ge-0/0/1",
        "ge-0/0/8",
        "ge-0/0/9",
        "ge-0/0/10",
        "ge-0/0/12",
        "ge-0/0/13",
        "ae0",
    }
    stripped = {(m.mac, m.vlan, m.port) for m in learned}
    assert stripped == {(m.mac, m.vlan, m.port) for m in parse_switch_table((TABLES / "els.json").read_text(), "x")}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "t: not JSON: Expecting property name"),
        ('{"a": 1, "a": 2}', "t: not JSON bmslice accepts: "),
        ('{"interface-information": []}', "t: JSON, but not `show ethernet-switching table | display json`"),
        ("show vlans\nRed 100\n", "t: not the output of `show ethernet-switching table` (no table header)"),
    ],
)
def test_other_output_is_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_switch_table(text, "t")
    assert str(refused.value).startswith(message)


EXPECTED = {
    "red-control-1": ("learned", "on fabric-switch ge-0/0/1 VLAN Red_Tenant_Network (100), as planned"),
    "blue-control-1": (
        "missing",
        "in no captured table (fabric-switch); planned fabric-switch ge-0/0/0 VLAN Blue_Tenant_Network (200)",
    ),
    "red-worker-1": ("learned", "on fabric-switch ge-0/0/9 VLAN Red_Tenant_Network (100), as planned"),
    "blue-worker-2": ("learned", "on fabric-switch ge-0/0/10 VLAN Blue_Tenant_Network (200), as planned"),
    "red-worker-3": ("learned", "on fabric-switch ge-0/0/13 VLAN Red_Tenant_Network (100), as planned"),
    "blue-worker-3": ("learned", "on fabric-switch ge-0/0/12 VLAN Blue_Tenant_Network (200), as planned"),
}


def _run_verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = fleet_cmd.main(["fleet", "verify", str(EXAMPLE / "fleet.yaml"), *args])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("form", FORMS)
def test_fleet_verify_reports_each_vm_nic_against_the_table(capsys: pytest.CaptureFixture[str], form: str) -> None:
    code, out = _run_verify(capsys, "--switch-table", f"fabric-switch={TABLES / form}", "--json")
    report = json.loads(out)
    assert (code, report["ok"], report["failed_hosts"]) == (1, False, [])  # the hosts are fine, the fabric is not
    checks = {c["vm"]: c for c in report["fabric"]}
    assert len(checks) == 8
    vlan_id = " (100)" if form == "els.json" else ""
    wrong_vlan = checks["blue-worker-1"]
    assert (wrong_vlan["status"], wrong_vlan["mac"]) == ("elsewhere", "02:51:52:42:3e:98")
    assert wrong_vlan["message"] == (
        f"learned on fabric-switch ge-0/0/8 VLAN Red_Tenant_Network{vlan_id}; "
        "planned fabric-switch ge-0/0/8 VLAN Blue_Tenant_Network (200)"
    )
    wrong_port = checks["red-worker-2"]
    assert (wrong_port["status"], wrong_port["message"]) == (
        "elsewhere",
        f"learned on fabric-switch ge-0/0/12 VLAN Red_Tenant_Network{vlan_id}; "
        "planned fabric-switch ge-0/0/11 VLAN Red_Tenant_Network (100)",
    )
    for vm, (status, message) in EXPECTED.items():
        assert (checks[vm]["status"], checks[vm]["message"]) == (status, message), vm
    assert report["capture_commands"] == []


def test_fleet_verify_text_names_both_places_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_verify(capsys, "--switch-table", f"fabric-switch={TABLES / 'els.txt'}")
    assert code == 1
    assert (
        "  blue-worker-1 server1 eno2 02:51:52:42:3e:98: elsewhere: learned on fabric-switch ge-0/0/8 VLAN "
        "Red_Tenant_Network; planned fabric-switch ge-0/0/8 VLAN Blue_Tenant_Network (200)\n"
    ) in out
    assert out.rstrip().endswith(
        "fabric: 3 of 8 checked VM NIC(s) missing or learned elsewhere; 8 of 8 planned VM NIC(s) checked"
    )


def test_fleet_verify_without_tables_prints_the_capture_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run_verify(capsys)
    assert code == 0
    fleet = EXAMPLE / "fleet.yaml"
    assert (
        "to check the fabric, capture what each switch learned and pass it back:\n"
        "  fabric-switch: ssh <user>@fabric-switch 'show ethernet-switching table | display json | no-more' "
        "> fabric-switch.json\n"
        f"  then: bmslice fleet verify {fleet} --switch-table fabric-switch=fabric-switch.json\n"
    ) in out


def test_a_table_of_the_right_switch_where_everything_is_learned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ELS table with the three faults put right: verify exits 0."""
    text = (TABLES / "els.txt").read_text()
    text = text.replace("Red_Tenant_Network  02:51:52:42:3e:98", "Blue_Tenant_Network 02:51:52:42:3e:98")
    text = text.replace("02:c5:0e:61:b7:22   D             -   ge-0/0/12.0", "02:c5:0e:61:b7:22   D   -   ge-0/0/11.0")
    text += "   Blue_Tenant_Network 02:d8:19:27:46:43   D             -   ge-0/0/0.0             0         0\n"
    table = tmp_path / "fixed.txt"
    table.write_text(text)
    code, out = _run_verify(capsys, "--switch-table", f"fabric-switch={table}")
    assert code == 0, out
    assert "fabric: every checked VM NIC learned where planned; 8 of 8 planned VM NIC(s) checked" in out


def test_a_passed_through_nic_the_host_cannot_see_is_checked_by_its_port() -> None:
    nic = ExpectedNic("red-worker-1", "server1", "eno1", None, "sw", "ge-0/0/9", 100, "RED")
    learned = [LearnedMac("02:00:00:00:00:01", "RED", None, "ge-0/0/9")]
    check = check_nic(nic, {"sw": learned})
    assert (check.status, check.message) == (
        NicStatus.LEARNED,
        "02:00:00:00:00:01 learned on sw ge-0/0/9 VLAN RED (100) (the host does not see the MAC)",
    )
    assert check_nic(nic, {"sw": []}).status is NicStatus.MISSING
    assert check_nic(nic, {"other": learned}).status is NicStatus.NOT_CHECKED


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("fabric-switch", "error: --switch-table 'fabric-switch': give SWITCH=FILE"),
        ("fabric-switch=/nonexistent/t.json", "error: /nonexistent/t.json: cannot read --switch-table: No such file"),
    ],
)
def test_bad_switch_table_arguments_are_one_line(capsys: pytest.CaptureFixture[str], arg: str, message: str) -> None:
    assert fleet_cmd.main(["fleet", "verify", str(EXAMPLE / "fleet.yaml"), "--switch-table", arg]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_the_capture_commands_name_every_switch_the_placement_uses(tmp_path: Path) -> None:
    fleet_dir = tmp_path / "fleet"
    shutil.copytree(EXAMPLE, fleet_dir, symlinks=True)
    data = yaml.safe_load((fleet_dir / "fleet.yaml").read_text())
    data["inventory"][2]["nics"] = {
        "eno1": {"switch": "leaf2", "port": "xe-0/0/1"},
        "eno2": {"switch": "leaf2", "port": "xe-0/0/2"},
    }
    (fleet_dir / "fleet.yaml").write_text(yaml.safe_dump(data))
    from bmslice.fleet.verify import verify_fleet

    fleet = load_fleet(fleet_dir / "fleet.yaml")
    placement = place(fleet, read_hosts(fleet))
    report = verify_fleet(fleet, {}, placement=placement, fleet_file="f.yaml")
    assert report.capture[:2] == [
        "fabric-switch: ssh <user>@fabric-switch 'show ethernet-switching table | display json | no-more' > "
        "fabric-switch.json",
        "leaf2: ssh <user>@leaf2 'show ethernet-switching table | display json | no-more' > leaf2.json",
    ]
    assert report.capture[2] == (
        "then: bmslice fleet verify f.yaml --switch-table fabric-switch=fabric-switch.json --switch-table leaf2=leaf2.json"
    )
