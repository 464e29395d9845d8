"""Prometheus's own tools for the tests: promtool on bmslice's alert rules, and a real Prometheus server.

`scraped_series(text)` turns an exposition that `bmslice metrics` (or the exporter) printed into
promtool's input series, each sample held for the test's duration as Prometheus would have
scraped it every interval; `promtool_test(...)` runs `promtool test rules` on bmslice's rules
file with them. `Prometheus` starts Debian's server with its own config, data directory and a
free loopback port, and stops it.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import bmslice.metrics

RULES = Path(bmslice.metrics.__file__).parent / "alerts.rules.yml"
INSTANCE = {"instance": "edge1:9963", "job": "bmslice"}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: Debian's prometheus package has it (scripts/setup-host.sh)")
    return found


def series_name(name: str, labels: dict[str, str]) -> str:
    """A PromQL series selector, label values quoted as PromQL quotes them."""
    quoted = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{quoted}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def scraped_series(text: str, repeats: int = 10, labels: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Every sample of an exposition as a promtool input series holding its value `repeats` intervals."""
    extra = labels if labels is not None else INSTANCE
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # prometheus-client's creation time of a counter: not a scraped value here
            out.append(
                {
                    "series": series_name(sample.name, {**sample.labels, **extra}),
                    "values": f"{sample.value!r}x{repeats}",
                }
            )
    return out


def promtool_test(tmp: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of bmslice's rules file with these test groups (interval 1m each)."""
    path = tmp / "alerts.test.yml"
    path.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}, sort_keys=False)
    )
    return subprocess.run(
        [tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, timeout=120, check=False
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


class Prometheus:
    """Debian's Prometheus server scraping `targets` every second, with bmslice's rules loaded."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "bmslice", "static_configs": [{"targets": targets}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (tmp / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.log_path = tmp / "prometheus.log"

    def api(self, path: str, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        reply = json.loads(http_get(url))
        assert reply["status"] == "success", reply
        return reply["data"]

    def wait_for(self, what: str, probe: Any, deadline_s: float = 120) -> Any:
        """Poll `probe()` until it returns something true; fail naming `what` and the server's log."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.process.poll() is not None:
                break
            try:
                found = probe()
            except OSError:
                found = None
            if found:
                return found
            time.sleep(0.5)
        pytest.fail(f"Prometheus never showed {what}; its log:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


# --- what bmslice's alerts say, as promtool expects them (labels and rendered annotations) ------


def expected(labels: dict[str, str], **annotations: str) -> dict[str, Any]:
    return {"exp_labels": {**labels, **INSTANCE}, "exp_annotations": annotations}


def isolation_alert(disturbances: float) -> dict[str, Any]:
    return expected(
        {"severity": "critical"},
        summary="Isolated CPUs of edge1:9963 are not isolated",
        description=f"{disturbances:g} threads and IRQs outside the slices may run on isolated CPUs "
        "(bmslice_isolation_foreign_process_threads and bmslice_isolation_irq name them); "
        "`bmslice audit SPEC` on the host says how to move each.",
    )


def drift_alert(slice_name: str, kind: str, count: int) -> dict[str, Any]:
    return expected(
        {"severity": "warning", "slice": slice_name, "kind": kind},
        summary=f"Slice {slice_name} on edge1:9963 drifted from its plan ({kind})",
        description=f"{count} difference(s) of kind {kind}; `bmslice verify SPEC` lists them and "
        "`bmslice apply SPEC` repairs pins live.",
    )


def hugepages_alert(node: str, page_size_bytes: str) -> dict[str, Any]:
    return expected(
        {"severity": "critical", "node": node, "page_size_bytes": page_size_bytes},
        summary=f"Hugepages of node {node} on edge1:9963 are exhausted",
        description=f"Pages of {page_size_bytes} bytes on NUMA node {node}: the planned slices need more than "
        "the node has free or reserved; `bmslice host-apply SPEC` reserves 2 MiB pages, 1 GiB "
        "pages need the boot args and a reboot.",
    )
