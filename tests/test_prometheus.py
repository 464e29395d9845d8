"""bmslice's alert rules and exporter against Prometheus's own tools: `promtool check rules`,
`promtool test rules` (on hand-written series and on series `bmslice metrics` really printed),
and a real Prometheus server (Debian's) that scrapes `bmslice exporter` on a loopback port and
evaluates the rules on what it scraped.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bmslice.cli import metrics_cmd
from metrics_fixtures import SlicedHost, sliced_host
from promtool import (
    INSTANCE,
    RULES,
    Prometheus,
    drift_alert,
    expected,
    free_port,
    http_get,
    hugepages_alert,
    isolation_alert,
    promtool_test,
    scraped_series,
    series_name,
    tool,
)

BMSLICE = str(Path(sys.executable).parent / "bmslice")
TWO_MIB = str(2 * 1024 * 1024)


def test_the_rules_file_passes_promtool_check() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "SUCCESS: 6 rules found" in result.stdout, result.stdout + result.stderr
    names = [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert names == [
        "BmsliceIsolationBroken",
        "BmsliceSliceDrift",
        "BmsliceVfSettingsLost",
        "BmsliceHugepagesExhausted",
        "BmsliceRebootPendingTooLong",
        "BmsliceCheckFailing",
    ]


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    return {"series": series_name(name, {**labels, **INSTANCE}), "values": values}


def test_each_rule_fires_when_it_should_and_not_before(tmp_path: Path) -> None:
    drift = {"slice": "du", "kind": "vcpu_pins"}
    vf = {"slice": "du", "kind": "vf_settings"}
    pages = {"node": "0", "page_size_bytes": TWO_MIB}
    tests = [
        {  # isolation: 3 threads and 1 IRQ from minute 1; "for: 2m" fires at 3m, not at 2m
            "interval": "1m",
            "input_series": [
                _series("bmslice_isolation_foreign_threads", "0 3x10"),
                _series("bmslice_isolation_irqs", "0 1x10"),
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "BmsliceIsolationBroken", "exp_alerts": []},
                {
                    "eval_time": "3m",
                    "alertname": "BmsliceIsolationBroken",
                    "exp_alerts": [isolation_alert(4)],
                },
            ],
        },
        {  # a pin drifts: BmsliceSliceDrift after 5m; VF settings lost: their own alert after 1m, not the drift one
            "interval": "1m",
            "input_series": [
                _series("bmslice_slice_drift", "1x10", **drift),
                _series("bmslice_slice_drift", "0 2x10", **vf),
                _series("bmslice_slice_drift", "0x10", slice="du", kind="state"),
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "BmsliceSliceDrift", "exp_alerts": []},
                {
                    "eval_time": "5m",
                    "alertname": "BmsliceSliceDrift",
                    "exp_alerts": [drift_alert("du", "vcpu_pins", 1)],
                },
                {
                    "eval_time": "2m",
                    "alertname": "BmsliceVfSettingsLost",
                    "exp_alerts": [
                        expected(
                            {"severity": "critical", **vf},
                            summary="VF settings of slice du on edge1:9963 are lost",
                            description="2 VF setting(s) differ from the plan; `bmslice verify SPEC` names them, "
                            "`bmslice apply SPEC` sets them again.",
                        )
                    ],
                },
            ],
        },
        {  # a stopped slice wants 1024 pages, 512 are free; another node's pool is fine
            "interval": "1m",
            "input_series": [
                _series("bmslice_hugepages_wanted_pages", "1024x10", **pages),
                _series("bmslice_hugepages_free_pages", "512x10", **pages),
                _series("bmslice_hugepages_planned_pages", "1024x10", **pages),
                _series("bmslice_hugepages_total_pages", "1024x10", **pages),
                _series("bmslice_hugepages_wanted_pages", "0x10", node="1", page_size_bytes=TWO_MIB),
                _series("bmslice_hugepages_free_pages", "0x10", node="1", page_size_bytes=TWO_MIB),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "6m",
                    "alertname": "BmsliceHugepagesExhausted",
                    "exp_alerts": [hugepages_alert("0", TWO_MIB)],
                }
            ],
        },
        {  # a reboot pending for a day, and a source that fails for 10 minutes
            "interval": "1m",
            "input_series": [
                _series("bmslice_reboot_pending", "1x1500"),
                _series("bmslice_scrape_collector_success", "0x20", collector="slices"),
                _series("bmslice_scrape_collector_success", "1x20", collector="isolation"),
            ],
            "alert_rule_test": [
                {"eval_time": "23h59m", "alertname": "BmsliceRebootPendingTooLong", "exp_alerts": []},
                {"eval_time": "9m", "alertname": "BmsliceCheckFailing", "exp_alerts": []},
                {
                    "eval_time": "24h",
                    "alertname": "BmsliceRebootPendingTooLong",
                    "exp_alerts": [
                        expected(
                            {"severity": "warning"},
                            summary="edge1:9963 has waited a day for the reboot its plan needs",
                            description="The running kernel lacks kernel args of the plan; until the host reboots "
                            "its isolation is partial. `bmslice plan SPEC` lists the missing args.",
                        )
                    ],
                },
                {
                    "eval_time": "10m",
                    "alertname": "BmsliceCheckFailing",
                    "exp_alerts": [
                        expected(
                            {"severity": "warning", "collector": "slices"},
                            summary="bmslice cannot check slices on edge1:9963",
                            description="The exporter logs why (journalctl -u bmslice-exporter).",
                        )
                    ],
                },
            ],
        },
    ]
    result = promtool_test(tmp_path, tests)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The test above is not vacuous: an alert expected where none fires fails promtool."""
    tests = [
        {
            "interval": "1m",
            "input_series": [
                _series("bmslice_isolation_foreign_threads", "0x10"),
                _series("bmslice_isolation_irqs", "0x10"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "5m",
                    "alertname": "BmsliceIsolationBroken",
                    "exp_alerts": [isolation_alert(0)],
                }
            ],
        }
    ]
    result = promtool_test(tmp_path, tests)
    assert result.returncode == 1 and "FAILED" in result.stdout + result.stderr


def _metrics(host: SlicedHost, capsys: pytest.CaptureFixture[str]) -> str:
    assert metrics_cmd.main(["metrics", *host.metrics_args()]) == 0
    return capsys.readouterr().out


ALL_ALERTS = [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_on_what_bmslice_metrics_scraped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Series exactly as `bmslice metrics` printed them: a clean host raises nothing; one breaking its
    isolation raises BmsliceIsolationBroken; a slice that does not run raises drift and hugepages."""
    clean = scraped_series(_metrics(sliced_host(tmp_path / "clean"), capsys))
    violating = scraped_series(_metrics(sliced_host(tmp_path / "violating", "violating"), capsys))
    stopped = scraped_series(_metrics(sliced_host(tmp_path / "stopped", running=False), capsys))
    isolation = isolation_alert(7)  # 5 threads (see test_metrics.py) and 2 IRQs
    tests = [
        {
            "interval": "1m",
            "input_series": clean,
            "alert_rule_test": [{"eval_time": "10m", "alertname": name, "exp_alerts": []} for name in ALL_ALERTS],
        },
        {
            "interval": "1m",
            "input_series": violating,
            "alert_rule_test": [{"eval_time": "10m", "alertname": "BmsliceIsolationBroken", "exp_alerts": [isolation]}],
        },
        {
            "interval": "1m",
            "input_series": stopped,
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "BmsliceSliceDrift",
                    "exp_alerts": [drift_alert("du", "state", 1)],
                },
                {
                    "eval_time": "10m",
                    "alertname": "BmsliceHugepagesExhausted",
                    "exp_alerts": [hugepages_alert("0", TWO_MIB)],
                },
            ],
        },
    ]
    result = promtool_test(tmp_path, tests)
    assert result.returncode == 0, result.stdout + result.stderr


class Exporter:
    """`bmslice exporter` in the background; stopped with SIGTERM, as systemd stops it."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [BMSLICE, "exporter", *args, "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        self.first_line = self.process.stdout.readline() if ready else ""
        if not self.first_line.startswith("serving "):
            self.stop()
            pytest.fail(
                f"bmslice exporter did not start: {self.first_line!r} {self.process.stderr.read() if self.process.stderr else ''}"
            )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> tuple[int, str, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            out, err = self.process.communicate(timeout=10)
        return self.process.returncode, out, err


@pytest.fixture
def exporter_on_violating_host(tmp_path: Path) -> Iterator[Exporter]:
    host = sliced_host(tmp_path / "host", "violating")
    exporter = Exporter(host.metrics_args())
    try:
        yield exporter
    finally:
        exporter.stop()


def test_a_real_prometheus_scrapes_the_exporter_and_evaluates_the_rules(
    tmp_path: Path, exporter_on_violating_host: Exporter
) -> None:
    exporter = exporter_on_violating_host
    assert exporter.first_line.startswith(f"serving http://{exporter.target}/metrics for ")
    server = Prometheus(tmp_path / "prometheus", [exporter.target])
    try:
        target = server.wait_for(
            "the exporter's target up",
            lambda: [t for t in server.api("targets")["activeTargets"] if t["health"] == "up"],
        )
        assert target[0]["scrapeUrl"] == f"http://{exporter.target}/metrics"
        threads = server.wait_for(
            "bmslice_isolation_foreign_threads",
            lambda: server.api("query", query="bmslice_isolation_foreign_threads")["result"],
        )
        assert threads[0]["metric"]["instance"] == exporter.target and threads[0]["value"][1] == "5"
        running = server.api("query", query='bmslice_slice_state{state="running"}')["result"]
        assert [(r["metric"]["slice"], r["value"][1]) for r in running] == [("du", "1")]
        rules = server.api("rules")["groups"][0]["rules"]
        assert [r["name"] for r in rules] == ALL_ALERTS and all(r["health"] == "ok" for r in rules)
        # the server evaluates the rule on what it scraped: pending now, firing after its 2 minutes
        alert = server.wait_for(
            "BmsliceIsolationBroken pending",
            lambda: [a for a in server.api("alerts")["alerts"] if a["labels"]["alertname"] == "BmsliceIsolationBroken"],
        )
        assert alert[0]["state"] == "pending" and alert[0]["labels"]["instance"] == exporter.target
        assert alert[0]["annotations"]["description"].startswith("7 threads and IRQs outside the slices")
    finally:
        server.stop()
    assert server.process.returncode == 0
    rc, out, err = exporter.stop()
    assert rc == 0 and out.endswith("stopped\n") and "Traceback" not in err, (out, err)


@pytest.mark.libvirtd
def test_the_exporter_runs_on_the_hosts_reserved_cpus_only(tmp_path: Path) -> None:
    """On this machine (qemu:///system): every thread of the exporter, its HTTP server's included, is
    allowed only on the CPUs the plan keeps for the host."""
    from bmslice.model.spec import load_spec
    from bmslice.plan.planner import make_plan
    from bmslice.topology.sysfs import read_host_tree

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "host: {reserved_cores_per_node: 1, reserved_memory_per_node: 1GiB, domain_type: qemu}\n"
        "vms:\n  - {name: bmslice-test-exporter, vcpus: 1, memory: 256MiB, emulator: host}\n"
    )
    reserved = make_plan(read_host_tree(Path("/")), load_spec(spec), "spec").host.reserved_cpus
    exporter = Exporter([str(spec), "--connect", "qemu:///system"])
    try:
        assert exporter.first_line.rstrip().endswith(f"; on CPUs {reserved}")
        text = http_get(f"http://{exporter.target}/metrics")
        assert 'bmslice_scrape_collector_success{collector="isolation"} 1.0' in text
        tasks = Path(f"/proc/{exporter.process.pid}/task")
        allowed = {}
        for task in tasks.iterdir():
            status = (task / "status").read_text()
            allowed[task.name] = next(
                line.split()[1] for line in status.splitlines() if line.startswith("Cpus_allowed_list")
            )
        assert len(allowed) >= 2 and set(allowed.values()) == {reserved.format()}, allowed  # main + HTTP server
    finally:
        rc, _, err = exporter.stop()
    assert rc == 0, err
