"""Fabric verification that checked nothing never reads as success.

- a switch table under a name no inventory NIC is cabled to is refused (it used to be set aside
  with a note while the summary said every checked NIC was learned where planned);
- the summary always says how many VM NICs were checked of how many the placement plans;
- none checked (the tables are of switches no placed NIC uses) is no pass: exit 1;
- NICs on switches without a table count as planned, not checked, in text and JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bmslice.cli import fleet_cmd
from bmslice.errors import SpecError
from bmslice.fleet.verify import verify_fleet
from bmslice.model.fleet import load_fleet
from test_fleet_example import example_data

TABLES = Path(__file__).parent / "data" / "switch-tables"


def _fleet(tmp_path: Path, data: dict[str, Any], name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _verify(capsys: pytest.CaptureFixture[str], fleet: Path, *args: str) -> tuple[int, str, str]:
    code = fleet_cmd.main(["fleet", "verify", str(fleet), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", ["leaf9", "fabric_switch", "FABRIC-SWITCH", "server1"])
def test_a_table_of_a_switch_the_fleet_does_not_cable_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    fleet = _fleet(tmp_path, example_data())
    code, out, err = _verify(capsys, fleet, "--switch-table", f"{name}={TABLES / 'els.json'}")
    assert code == 2 and out == ""
    assert err == (
        f"error: --switch-table {name}: no inventory NIC of {fleet} is cabled to a switch of that name "
        "(its switches: fabric-switch)\n"
    )


def test_the_library_refuses_an_unknown_switch_too(tmp_path: Path) -> None:
    fleet = load_fleet(_fleet(tmp_path, example_data()))
    with pytest.raises(SpecError, match=r"--switch-table leaf9: no inventory NIC of f\.yaml is cabled"):
        verify_fleet(fleet, {}, tables={"leaf9": []}, fleet_file="f.yaml")


def _with_unused_leaf2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """The example planned as it is, then control1's spare eno4 cabled to leaf2: no placed NIC is there."""
    out = tmp_path / "plan"
    assert (
        fleet_cmd.main(["fleet", "plan", str(_fleet(tmp_path, example_data())), "--no-check", "--out", str(out)]) == 0
    )
    capsys.readouterr()
    data = example_data()
    data["inventory"][0]["nics"]["eno4"] = {"switch": "leaf2", "port": "xe-0/0/4"}
    return _fleet(tmp_path, data, "fleet-leaf2.yaml"), out / "placement.json"


def test_a_table_that_checks_no_nic_is_not_a_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet, placement = _with_unused_leaf2(tmp_path, capsys)
    args = ["--placement", str(placement), "--switch-table", f"leaf2={TABLES / 'els.json'}"]
    code, out, _ = _verify(capsys, fleet, *args)
    assert code == 1
    assert out.rstrip().endswith(
        "fabric: 0 of 8 planned VM NIC(s) checked: nothing verified, not a pass (tables of: leaf2)"
    )
    assert "fleet: no drift" in out  # the hosts are fine: the fabric alone fails the run
    code, out, _ = _verify(capsys, fleet, *args, "--json")
    report = json.loads(out)
    assert (code, report["ok"], report["failed_hosts"]) == (1, False, [])
    assert report["fabric_counts"] == {"planned": 8, "checked": 0, "failed": 0, "tables": ["leaf2"]}
    assert {check["status"] for check in report["fabric"]} == {"not checked"}


def test_nics_on_a_switch_without_a_table_are_counted_not_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = example_data()
    data["inventory"][3]["nics"] = {
        "eno1": {"switch": "leaf2", "port": "xe-0/0/1"},
        "eno2": {"switch": "leaf2", "port": "xe-0/0/2"},
    }
    fleet = _fleet(tmp_path, data)
    code, out, _ = _verify(capsys, fleet, "--switch-table", f"fabric-switch={TABLES / 'els.txt'}", "--json")
    report = json.loads(out)
    counts = report["fabric_counts"]
    assert (counts["planned"], counts["checked"], counts["tables"]) == (8, 6, ["fabric-switch"])
    assert [c["vm"] for c in report["fabric"] if c["status"] == "not checked"] == ["red-worker-3", "blue-worker-3"]
    code, out, _ = _verify(capsys, fleet, "--switch-table", f"fabric-switch={TABLES / 'els.txt'}")
    failed = counts["failed"]
    assert out.rstrip().endswith(
        f"fabric: {failed} of 6 checked VM NIC(s) missing or learned elsewhere; 6 of 8 planned VM NIC(s) checked"
    )
    assert code == (1 if failed else 0)


def test_without_tables_nothing_is_claimed_about_the_fabric(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _verify(capsys, _fleet(tmp_path, example_data()))
    assert code == 0
    assert not [line for line in out.splitlines() if line.startswith("fabric: ")]
    assert "to check the fabric, capture what each switch learned and pass it back:" in out


def test_a_live_host_s_nics_are_checked_against_the_plan_verify_used(tmp_path: Path) -> None:
    """Found by the lab's fabric lane: on a running fleet, planned afresh, a PF whose VFs the
    slices all hold refuses them ("sriov_numvfs cannot change 2 -> 4 while VFs are in use"), so
    the fabric check knew no MAC there. The plan verify compared the host against (its running
    slices kept) is the one the fabric check uses; a spec planned afresh stays the fallback."""
    from bmslice.fleet.check import check_host
    from bmslice.fleet.fabric_check import expected_nics
    from bmslice.fleet.hosts import read_hosts
    from bmslice.fleet.placement import place
    from bmslice.fleet.render import host_spec_data
    from bmslice.fleet.verify import _fabric

    fleet = load_fleet(_fleet(tmp_path, example_data()))
    topologies = read_hosts(fleet)
    placement = place(fleet, topologies)
    specs = {h: d for h in topologies if (d := host_spec_data(fleet, placement, h)) is not None}
    plans = {h: check_host(h, d, topologies[h], f"{h}/spec.yaml").plan for h, d in specs.items()}
    unplannable = {h: {**d, "vms": [{"name": "x", "vcpus": 4096, "memory": "1GiB"}]} for h, d in specs.items()}

    notes: list[str] = []
    without = _fabric(fleet, placement, unplannable, {"fabric-switch": []}, notes, {})
    assert without == [] and len(notes) == len(specs) and all("their MACs are unknown" in n for n in notes)

    notes = []
    seen = {h: (plans[h], topologies[h]) for h in plans}
    checked = _fabric(fleet, placement, unplannable, {"fabric-switch": []}, notes, seen)
    assert notes == []
    assert len(checked) == sum(nic.count for vm in placement.vms for nic in vm.nics)
    expected, _notes = expected_nics(fleet, placement, plans, topologies)
    assert [c.expected for c in checked] == expected and all(e.mac for e in expected)


def test_each_host_is_read_once_when_the_fabric_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fabric check reuses the topology and plan each host's report already made: a live
    host's topology comes over libvirt or ssh, and reading it twice doubled the round trips."""
    from bmslice.fleet import verify as fleet_verify
    from bmslice.fleet.hosts import read_hosts
    from bmslice.fleet.placement import place
    from bmslice.fleet.render import host_spec_data

    fleet = load_fleet(_fleet(tmp_path, example_data()))
    placement = place(fleet, read_hosts(fleet))
    specs = {h.name: d for h in fleet.inventory if (d := host_spec_data(fleet, placement, h.name)) is not None}
    reads: list[str] = []
    real = fleet_verify.read_host
    monkeypatch.setattr(fleet_verify, "read_host", lambda inv: reads.append(inv.name) or real(inv))
    report = verify_fleet(fleet, specs, placement=placement, tables={"fabric-switch": []}, fleet_file="f.yaml")
    assert sorted(reads) == sorted(specs), reads
    assert len(report.fabric) == sum(nic.count for vm in placement.vms for nic in vm.nics)


@pytest.mark.parametrize("table", ["header-only", "json-no-entries", "other-vlans-only"])
def test_a_table_that_learned_nothing_of_ours_fails_every_checked_nic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str
) -> None:
    """An empty table (the header only, JSON with no entries) or one of other VLANs only: each NIC
    is checked and missing (or elsewhere), never learned; the run fails in text and JSON."""
    path = tmp_path / table
    text = (TABLES / "els.txt").read_text()
    if table == "header-only":
        path.write_text("".join(line for line in text.splitlines(keepends=True) if "_Network" not in line))
    elif table == "json-no-entries":
        path.write_text('{"l2ng-l2ald-rtb-macdb": [{"l2ng-l2ald-mac-entry-vlan": []}]}')
    else:
        path.write_text(text.replace("Tenant_Network", "Other_Net"))
    fleet = _fleet(tmp_path, example_data())
    code, out, _ = _verify(capsys, fleet, "--switch-table", f"fabric-switch={path}")
    assert code == 1
    assert out.rstrip().endswith(
        "fabric: 8 of 8 checked VM NIC(s) missing or learned elsewhere; 8 of 8 planned VM NIC(s) checked"
    )
    code, out, _ = _verify(capsys, fleet, "--switch-table", f"fabric-switch={path}", "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert report["fabric_counts"] == {"planned": 8, "checked": 8, "failed": 8, "tables": ["fabric-switch"]}
    assert "learned" not in {check["status"] for check in report["fabric"]}


def test_host_trees_say_their_live_slices_were_not_compared(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The example's hosts are trees: their specs plan, nothing live is compared, and their audit
    has no /proc threads or IRQs to look at; the summary says so instead of a bare "no drift"."""
    code, out, _ = _verify(capsys, _fleet(tmp_path, example_data()))
    assert code == 0
    assert out.splitlines()[-1] == "fleet: no drift (4 planned); no host's live slices were compared"
    assert out.count("note: audit: threads: the tree has none to check (no /proc entries)") == 4
    assert "nothing checked, not a pass" not in out  # a tree's empty /proc is a note, not drift
