"""Scenario 9: isolation watched in Prometheus, on a real kernel. The lab booted with the kernel args
`bmslice plan` gives runs `bmslice exporter` (on the host's reserved CPUs); a thread planted on an
isolated CPU turns bmslice_isolation_foreign_threads on, and the BmsliceIsolationBroken rule,
evaluated by promtool on the series scraped before and after, fires only once it is there."""

from __future__ import annotations

import re
from pathlib import Path

from lab import labctl, specs
from lab.conftest import Lab
from metrics_fixtures import samples, value
from promtool import INSTANCE, isolation_alert, promtool_test, series_name

PORT = 19963
MARK = "=== bmslice-lab"

# Inside the lab: start the exporter, scrape, plant a sleeper on CPU $1, scrape again, stop both.
SCRAPE = rf"""
victim=$1 python=$2 bmslice=$3
$bmslice exporter slices.yaml --connect qemu:///system --listen 127.0.0.1:{PORT} >exporter.out 2>&1 &
exporter=$!
for i in $(seq 120); do grep -q '^serving ' exporter.out && break; sleep 1; done
scrape() {{ $python -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{PORT}/metrics', timeout=120).read().decode())"; }}
echo "{MARK} before"; scrape
setsid taskset -c "$victim" sleep 900 </dev/null >/dev/null 2>&1 &
sleeper=$!
echo "{MARK} sleeper $sleeper"
echo "{MARK} after"; scrape
echo "{MARK} pinned"; grep -h Cpus_allowed_list /proc/$exporter/task/*/status
kill $sleeper
kill -TERM $exporter; wait $exporter; echo "{MARK} exporter exit $?"
echo "{MARK} log"; cat exporter.out
"""


def _parts(out: str) -> dict[str, str]:
    """The script's output by its marks: the two scrapes, the exporter's CPUs and log; the sleeper's pid
    and the exporter's exit as their mark lines ("sleeper 1234", "exporter exit 0")."""
    parts: dict[str, str] = {}
    current = None
    for line in out.splitlines(keepends=True):
        if line.startswith(MARK):
            head = line[len(MARK) :].strip()
            key = head.split()[0]
            parts[key] = head if key in ("sleeper", "exporter") else ""
            current = key if key in ("before", "after", "pinned", "log") else None
        elif current is not None:
            parts[current] += line
    return parts


def _held(before: str, after: str, steps: int = 5, then: int = 10) -> list[dict[str, str]]:
    """promtool input series: each scraped series at its `before` value for `steps` minutes, then at
    its `after` value for `then` minutes (`_`: not scraped then)."""
    first, second = samples(before), samples(after)
    out = []
    for key in sorted(set(first) | set(second)):
        name, labels = key
        if name.endswith("_created"):
            continue
        a = [repr(first[key])] * steps if key in first else ["_"] * steps
        b = [repr(second[key])] * then if key in second else ["_"] * then
        out.append({"series": series_name(name, {**dict(labels), **INSTANCE}), "values": " ".join(a + b)})
    return out


def test_a_planted_thread_turns_the_metric_on_and_the_rule_fires(lab: Lab, tmp_path: Path) -> None:
    lab.ensure()
    path = specs.write(tmp_path, "slices.yaml", specs.slices())
    plan = labctl.bmslice("plan", path.name, "--json", files=[path]).expect().json()
    args = tuple(plan["host"]["kernel_args"])
    lab.ensure(args)
    victim = str(min(plan["host"]["isolated_cpus"]))
    reserved = plan["host"]["reserved_cpus"]
    script = labctl.write(tmp_path, "scrape.sh", SCRAPE)
    python = str(labctl.VENV_BIN / "python")
    ran = labctl.run("/bin/sh", "scrape.sh", victim, python, labctl.BMSLICE, files=[path, script], timeout=900).expect()
    parts = _parts(ran.out)
    assert {"before", "after", "pinned", "exporter", "sleeper"} <= set(parts), ran.report()
    sleeper = parts["sleeper"].split()[-1]

    before, after = samples(parts["before"]), samples(parts["after"])
    assert value(before, "bmslice_isolation_foreign_threads") == 0, ran.report()
    assert value(before, "bmslice_isolation_kernel_list_matches", list="isolated") == 1, ran.report()
    assert value(after, "bmslice_isolation_foreign_threads") >= 1, ran.report()
    planted = [
        dict(labels)
        for (name, labels) in after
        if name == "bmslice_isolation_foreign_process_threads" and dict(labels)["pid"] == sleeper
    ]
    assert planted and planted[0]["comm"] == "sleep" and planted[0]["cpus"] == victim, ran.report()
    labctl.say(f"checked: sleep (pid {sleeper}) on isolated CPU {victim} turns bmslice_isolation_foreign_threads on")

    # the exporter and its HTTP threads ran on the host's reserved CPUs only
    lists = set(re.findall(r"Cpus_allowed_list:\s*(\S+)", parts["pinned"]))
    expected = ",".join(map(str, reserved))
    from bmslice.cpuset import CpuSet

    assert {CpuSet.parse(c) for c in lists} == {CpuSet.parse(expected)}, ran.report()
    assert parts["exporter"].endswith("exit 0"), ran.report()
    labctl.say(f"checked: the exporter's threads were allowed on the reserved CPUs {expected} only")

    # promtool evaluates the rule on what was scraped: the clean scrape for 5 minutes, then the planted one
    disturbed = value(after, "bmslice_isolation_foreign_threads") + value(after, "bmslice_isolation_irqs")
    alert = isolation_alert(disturbed)
    tests = [
        {
            "interval": "1m",
            "input_series": _held(parts["before"], parts["after"]),
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "BmsliceIsolationBroken", "exp_alerts": []},
                {"eval_time": "6m", "alertname": "BmsliceIsolationBroken", "exp_alerts": []},  # pending: for 2m
                {"eval_time": "8m", "alertname": "BmsliceIsolationBroken", "exp_alerts": [alert]},
            ],
        }
    ]
    result = promtool_test(tmp_path, tests)
    assert result.returncode == 0, result.stdout + result.stderr + ran.report()
    labctl.say("checked: promtool fires BmsliceIsolationBroken on the scraped series only after the thread was planted")
