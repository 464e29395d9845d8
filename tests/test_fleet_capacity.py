"""bmslice fleet capacity: per cluster the fleet's own placement (`place`, its public entry point)
accepts exactly that many more workers with the placement kept and refuses one more; per host
the host planner's room within max_per_host and the cabled NICs; on random fleets (hypothesis)
and on the example fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bmslice.cli import fleet_cmd
from bmslice.errors import PlanError
from bmslice.fleet.capacity import fleet_room, with_more_workers
from bmslice.fleet.placement import place
from bmslice.model.fleet import Role
from fleetgen import mixed_fleet

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fleet"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(3, 6), st.integers(0, 10_000), st.sampled_from([0.3, 0.5, 0.7]))
def test_place_accepts_the_count_and_refuses_one_more(hosts: int, seed: int, fill: float) -> None:
    fleet, topologies = mixed_fleet(hosts, seed, clusters=2, fill=fill)
    try:
        room = fleet_room(fleet, topologies)
    except PlanError:
        assume(False)  # the fleet itself has no placement: no room to count
        raise
    for cluster in room.clusters:
        n = cluster.more
        grown = place(with_more_workers(fleet, cluster.cluster, n), topologies, room.placement)
        before = {vm.name for vm in room.placement.vms}
        added = [vm for vm in grown.vms if vm.name not in before]
        assert len(added) == n and all(vm.cluster == cluster.cluster and vm.role is Role.WORKER for vm in added)
        assert all(room.placement.vm(vm.name).host == vm.host for vm in grown.vms if vm.name in before)  # kept
        assert sum(count for _, count in cluster.hosts) == n
        with pytest.raises(PlanError):
            place(with_more_workers(fleet, cluster.cluster, n + 1), topologies, room.placement)
        assert cluster.refusal
        # the hosts' own counts bound the fleet's; none goes past max_per_host
        spec = next(c for c in fleet.clusters if c.name == cluster.cluster)
        per_host = {h.host: dict(h.fits).get(cluster.cluster, 0) for h in room.hosts}
        assert sum(per_host.values()) >= n
        for host in room.hosts:
            placed = sum(
                1
                for vm in room.placement.on_host(host.host)
                if vm.cluster == cluster.cluster and vm.role is Role.WORKER
            )
            assert per_host[host.host] <= spec.spread.max_per_host - placed
            if host.role is Role.CONTROL:
                assert host.fits == ()


def _example(tmp_path: Path, **workers: Any) -> Path:
    data: dict[str, Any] = yaml.safe_load((EXAMPLE / "fleet.yaml").read_text())
    for host in data["inventory"]:
        host["host_root"] = str(EXAMPLE / host["host_root"])
    data.pop("ssh_keys_file")
    for cluster in data["clusters"]:
        cluster.pop("kubeadm_join_file")
        cluster["workers"].update(workers)
        cluster["spread"]["max_per_host"] = 2
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_example_fleet_is_full(capsys: pytest.CaptureFixture[str]) -> None:
    assert fleet_cmd.main(["fleet", "capacity", str(EXAMPLE / "fleet.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"capacity of {EXAMPLE / 'fleet.yaml'} (8 VMs, placed afresh)"
    assert out[1] == "red: 0 more worker(s) fit"
    assert out[2].startswith("  one more is refused: red-worker-4: every worker host already runs 1 red worker VM(s)")


def test_smaller_workers_show_where_the_next_ones_go(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Workers of 4 vCPUs with any whole NIC, two a host: each server's two cabled NICs bind."""
    fleet = _example(tmp_path, count=1, vcpus=4, nic={"kind": "passthrough"})
    assert fleet_cmd.main(["fleet", "capacity", str(fleet), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    red = answer["clusters"][0]
    assert red["cluster"] == "red" and red["more"] == 4 and sum(red["where"].values()) == 4
    assert red["next_refused"].startswith(
        "red: 5 worker VM(s) to place, the worker hosts hold at most 4 of them with the kept VMs where they are"
    )
    hosts = {h["host"]: h["more_workers"] for h in answer["hosts"]}
    # two of the three servers each run the red or the blue worker on one of their two cabled NICs:
    # one more worker each; the third runs none: two (its NICs, and max_per_host)
    assert hosts["control1"] == {}
    workers = {name: fits for name, fits in hosts.items() if name != "control1"}
    assert sorted(fits["red"] for fits in workers.values()) == [1, 1, 2]
    assert all(fits["red"] == fits["blue"] for fits in workers.values())
    assert red["where"] == {name: fits["red"] for name, fits in workers.items()}


def test_a_placement_file_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = _example(tmp_path, count=1, vcpus=4, nic={"kind": "passthrough"})
    out = tmp_path / "plan"
    assert fleet_cmd.main(["fleet", "plan", str(fleet), "--out", str(out), "--no-check"]) == 0
    capsys.readouterr()
    assert fleet_cmd.main(["fleet", "capacity", str(fleet), "--placement", str(out / "placement.json")]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0] == f"capacity of {fleet} (4 VMs, placement kept: {out / 'placement.json'})"
