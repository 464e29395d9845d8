"""The lab's fabric switch: the Junos config `fleet plan` renders, played by a real Linux bridge.

- the `set` file bmslice writes (both Junos styles, access and trunk ports) parses into the
  VLANs and ports `fabric_data` planned, and anything bmslice never writes is refused by line;
- the bridge VLANs each port gets: PVID untagged on access ports, tagged members on trunks,
  nothing on ports the file does not configure (the lab's fabric scenario runs the commands on
  a real bridge: this machine's kernel has no bridge support, the lab's has);
- the bridge's forwarding table, as `bridge -j fdb show` prints it, becomes a Junos ELS table
  that bmslice's own reader (`fleet verify --switch-table`) takes, with the switch's port and
  VLAN names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmslice.errors import LabError
from bmslice.fleet.fabric import fabric_data, junos_config
from bmslice.fleet.hosts import read_hosts
from bmslice.fleet.placement import place
from bmslice.fleet.switch_table import LearnedMac, parse_switch_table
from bmslice.lab.switch import bridge_vlans, junos_json, parse_junos_set, switch_table
from bmslice.model.fleet import fleet_from_data

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fleet"


def _switch(sriov: bool, junos: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLE / "fleet.yaml").read_text())
    for host in data["inventory"]:
        host["host_root"] = str(EXAMPLE / host["host_root"])
    data["ssh_keys_file"] = str(EXAMPLE / data["ssh_keys_file"])
    data["switches"] = {"fabric-switch": {"junos": junos}}
    for cluster in data["clusters"]:
        del cluster["kubeadm_join_file"]
        if sriov:
            cluster["workers"]["nic"] = {"kind": "sriov", "pf": "any", "count": 1}
    fleet = fleet_from_data(data, "fleet.yaml")
    (switch,) = fabric_data(fleet, place(fleet, read_hosts(fleet)))["switches"]
    return dict(switch)


@pytest.mark.parametrize("junos", ["els", "legacy"])
@pytest.mark.parametrize("sriov", [False, True])
def test_the_rendered_config_parses_into_what_was_planned(junos: str, sriov: bool) -> None:
    switch = _switch(sriov, junos)
    config = parse_junos_set(junos_config(switch, "fleet.yaml"), "fabric-switch.set")
    assert config.vlans == {v["name"]: v["id"] for v in switch["vlans"]}
    names = {v["id"]: v["name"] for v in switch["vlans"]}
    planned = {p["port"]: (p["mode"], [names[v] for v in p["vlans"]]) for p in switch["ports"]}
    assert {port: (entry.mode, entry.members) for port, entry in config.ports.items()} == planned
    assert any(mode == "trunk" for mode, _ in planned.values()) == sriov
    cabling = {port: f"sw{i}" for i, port in enumerate(sorted(planned))}
    for dev, vlan, untagged in bridge_vlans(config, cabling):
        port = next(p for p, d in cabling.items() if d == dev)
        assert untagged == (planned[port][0] == "access") and names[vlan] in planned[port][1]


def test_a_delete_resets_a_port_as_load_set_would() -> None:
    text = (
        "set vlans RED vlan-id 100\nset vlans BLUE vlan-id 200\n"
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode trunk\n"
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members [ RED BLUE ]\n"
        "delete interfaces ge-0/0/1 unit 0 family ethernet-switching\n"
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode access\n"
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members BLUE\n"
    )
    config = parse_junos_set(text, "f.set")
    assert (config.ports["ge-0/0/1"].mode, config.ports["ge-0/0/1"].members) == ("access", ["BLUE"])
    assert bridge_vlans(config, {"ge-0/0/1": "t1", "ge-0/0/2": "t2"}) == [("t1", 200, True)]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("set system host-name x\n", "line 1: not a command bmslice writes: set system host-name x"),
        ("set vlans RED vlan-id 4095\n", "a VLAN id is 1-4094"),
        ("set vlans RED vlan-id 0100\n", "a VLAN id is 1-4094"),
        ("set interfaces ge-0/0/1 unit 0 family inet address 10.0.0.1/24\n", "ethernet-switching only"),
        (
            "set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode trunk\n"
            "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members GREEN\n",
            "port ge-0/0/1: VLAN GREEN is not defined",
        ),
        (
            "set vlans A vlan-id 1\nset vlans B vlan-id 2\n"
            "set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode access\n"
            "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members [ A B ]\n",
            "an access port carries one VLAN",
        ),
        ("set vlans A vlan-id 1\nset interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members A\n", "no port"),
        ('set interfaces ge-0/0/1 description "open\n', "line 1: No closing quotation"),
        ("set interfaces eth0 unit 0 family ethernet-switching interface-mode trunk\n", "not a switch port"),
    ],
)
def test_what_bmslice_never_writes_is_refused_by_line(text: str, words: str) -> None:
    with pytest.raises(LabError, match=words.replace("[", r"\[")):
        parse_junos_set(text, "f.set")


def test_the_bridges_table_is_a_junos_table_bmslice_reads() -> None:
    config = parse_junos_set(
        "set vlans Red_Tenant_Network vlan-id 100\nset vlans Blue_Tenant_Network vlan-id 200\n"
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode trunk\n"
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members [ Red_Tenant_Network Blue_Tenant_Network ]\n"
        "set interfaces ge-0/0/2 unit 0 family ethernet-switching interface-mode access\n"
        "set interfaces ge-0/0/2 unit 0 family ethernet-switching vlan members Blue_Tenant_Network\n",
        "f.set",
    )
    fdb = [  # as `bridge -j fdb show br fabric` prints them
        {"mac": "02:00:00:00:01:01", "ifname": "tap1", "vlan": 100, "flags": [], "master": "fabric", "state": ""},
        {"mac": "02:00:00:00:02:02", "ifname": "tap2", "vlan": 200, "flags": [], "master": "fabric", "state": ""},
        {"mac": "5A:00:00:00:00:03", "ifname": "tap1", "vlan": 200, "flags": [], "master": "fabric", "state": ""},
        {"mac": "aa:bb:cc:00:00:01", "ifname": "tap1", "vlan": 100, "master": "fabric", "state": "permanent"},
        {"mac": "aa:bb:cc:00:00:02", "ifname": "tap1", "flags": ["self"], "state": "permanent"},
        {"mac": "02:00:00:00:09:09", "ifname": "tap1", "flags": [], "master": "fabric", "state": ""},  # no VLAN
        {"mac": "02:00:00:00:07:07", "ifname": "other", "vlan": 100, "flags": [], "state": ""},  # not cabled
    ]
    text = switch_table(fdb, config, {"ge-0/0/1": "tap1", "ge-0/0/2": "tap2"})
    learned = parse_switch_table(text, "fabric-switch.json")
    assert learned == (  # by port, VLAN name, MAC
        LearnedMac("5a:00:00:00:00:03", "Blue_Tenant_Network", 200, "ge-0/0/1"),
        LearnedMac("02:00:00:00:01:01", "Red_Tenant_Network", 100, "ge-0/0/1"),
        LearnedMac("02:00:00:00:02:02", "Blue_Tenant_Network", 200, "ge-0/0/2"),
    )


def test_the_table_is_laid_out_as_junos_prints_it() -> None:
    recorded = (REPO / "tests" / "data" / "switch-tables" / "els.json").read_text()
    assert junos_json(json.loads(recorded)) == recorded


def test_the_bridges_table_has_the_fields_an_els_switch_writes() -> None:
    config = parse_junos_set(
        "set vlans Red_Tenant_Network vlan-id 100\n"
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode trunk\n"
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members Red_Tenant_Network\n",
        "f.set",
    )
    fdb = [
        {"mac": mac, "ifname": "tap1", "vlan": 100, "flags": [], "master": "fabric", "state": ""}
        for mac in ("02:00:00:00:00:09", "02:00:00:00:00:01")
    ]
    ours = json.loads(switch_table(fdb, config, {"ge-0/0/1": "tap1"}))["l2ng-l2ald-rtb-macdb"][0]
    recorded = json.loads((REPO / "tests" / "data" / "switch-tables" / "els.json").read_text())
    theirs = recorded["l2ng-l2ald-rtb-macdb"][0]
    (vlan,) = ours["l2ng-l2ald-mac-entry-vlan"]
    assert list(vlan) == list(theirs["l2ng-l2ald-mac-entry-vlan"][0])
    assert [list(e) for e in vlan["l2ng-mac-entry"]] == [
        list(theirs["l2ng-l2ald-mac-entry-vlan"][0]["l2ng-mac-entry"][0])
    ] * 2
    assert vlan["learnt-mac-count"] == [{"data": "2"}]
    assert [e["l2ng-l2-mac-address"] for e in vlan["l2ng-mac-entry"]] == [  # by MAC, as Junos lists them
        [{"data": "02:00:00:00:00:01"}],
        [{"data": "02:00:00:00:00:09"}],
    ]
