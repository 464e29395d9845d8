"""bmslice metrics: the exposition of a sliced host, parsed back with prometheus-client's own parser.

The host is a tree (its /sys and /proc, tests/metrics_fixtures.py) and its slices run in libvirt's
test:/// driver; the clean tree holds the plan's isolation, the violating one breaks it once each way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bmslice.cli import capacity_cmd, metrics_cmd
from bmslice.metrics import families
from bmslice.verify.compare import DriftKind
from metrics_fixtures import INTERRUPTS, SlicedHost, samples, sliced_host, value


def scrape(host: SlicedHost, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    rc = metrics_cmd.main(["metrics", *host.metrics_args(), *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_clean_host_with_its_slice_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = sliced_host(tmp_path)
    rc, out, err = scrape(host, capsys)
    assert rc == 0 and err == "", err
    found = samples(out)
    plan = host.plan
    assert value(found, "bmslice_slice_state", slice="du", state="running") == 1
    assert value(found, "bmslice_slice_state", slice="du", state="not defined") == 0
    assert {
        kind.value: value(found, "bmslice_slice_drift", slice="du", kind=kind.value) for kind in DriftKind
    } == dict.fromkeys((kind.value for kind in DriftKind), 0)
    assert value(found, "bmslice_reboot_pending") == 0 and value(found, "bmslice_kernel_args_missing") == 0
    isolated = plan.host.isolated_cpus
    assert value(found, "bmslice_isolated_cpus") == len(isolated) == 4
    assert value(found, "bmslice_isolation_kernel_list_matches", list="isolated") == 1
    assert value(found, "bmslice_isolation_foreign_threads") == 0 and value(found, "bmslice_isolation_irqs") == 0
    assert value(found, "bmslice_isolation_excepted_threads") == len(isolated)  # one per-CPU kthread each
    # device interrupts on the isolated CPUs 1, 3, 5, 7 (IRQ 90 fired 7 times on CPU 3, 3 on CPU 7)
    assert {cpu: value(found, "bmslice_isolated_cpu_device_interrupts_total", cpu=str(cpu)) for cpu in isolated} == {
        1: 0,
        3: 7,
        5: 0,
        7: 3,
    }
    two_mib = str(2 * 1024 * 1024)
    assert value(found, "bmslice_hugepages_planned_pages", node="0", page_size_bytes=two_mib) == 1024
    assert value(found, "bmslice_hugepages_total_pages", node="0", page_size_bytes=two_mib) == 1024
    assert value(found, "bmslice_hugepages_free_pages", node="0", page_size_bytes=two_mib) == 0  # du holds them
    assert value(found, "bmslice_hugepages_wanted_pages", node="0", page_size_bytes=two_mib) == 0
    # node 1's free core takes one more du; node 0 none
    assert value(found, "bmslice_capacity_more_vms", shape="du") == 1
    assert value(found, "bmslice_capacity_runs_out_first", shape="du", resource="cores") == 1
    assert value(found, "bmslice_capacity_node_more_vms", shape="du", node="0") == 0
    assert value(found, "bmslice_capacity_node_more_vms", shape="du", node="1") == 1
    assert (
        value(found, "bmslice_node_free_cores", node="1") == 1
        and value(found, "bmslice_node_free_cores", node="0") == 0
    )
    for collector in ("slices", "isolation", "hugepages", "capacity"):
        assert value(found, "bmslice_scrape_collector_success", collector=collector) == 1
        assert value(found, "bmslice_scrape_collector_cpu_seconds", collector=collector) > 0
    # the same answer as `bmslice capacity` gives
    assert capacity_cmd.main(["capacity", *host.metrics_args(), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [(s["shape"], s["more"]) for s in answer["shapes"]] == [("du", 1)]
    assert answer["kept"] == ["du"] and answer["shapes"][0]["vms"][0]["numa_nodes"] == [1]


def test_every_family_is_documented_and_every_sample_is_one_of_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Names, units and labels come from metrics/families.py, and nothing else is exported."""
    rc, out, _ = scrape(sliced_host(tmp_path, "violating"), capsys)
    assert rc == 0
    defined = {f.name: f for f in vars(families).values() if isinstance(f, families.Family)}
    seen = set()
    for family in text_string_to_metric_families(out):
        spec = defined[family.name]
        assert family.documentation == spec.help and family.type == spec.kind
        for sample in family.samples:
            assert set(sample.labels) == set(spec.labels), sample
        seen.add(family.name)
    assert seen == set(defined)  # the violating host with its slice shows every family
    assert all(len(f.help) > 20 and f.name.startswith("bmslice_") for f in defined.values())


def test_a_violating_host_names_what_disturbs_its_isolated_cpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = sliced_host(tmp_path, "violating")
    rc, out, _ = scrape(host, capsys)
    assert rc == 0
    found = samples(out)
    named = {
        dict(labels)["pid"]: (dict(labels)["comm"], dict(labels)["cpus"], count)
        for (name, labels), count in found.items()
        if name == "bmslice_isolation_foreign_process_threads"
    }
    victim = str(host.plan.host.isolated_cpus.sorted()[-1])
    # du's vCPU thread moved outside its slice, a stress allowed everywhere, an sshd worker and a stray
    # QEMU on an isolated CPU, an unbound kworker
    assert set(named) == {"1000", "5000", "5001", "5003", "5100"}
    assert named["5001"] == ("sshd", victim, 1) and named["5100"] == ("qemu-system-x86", victim, 1)
    assert value(found, "bmslice_isolation_foreign_threads") == sum(count for _, _, count in named.values()) == 5
    irqs = {dict(labels)["irq"]: dict(labels) for (name, labels) in found if name == "bmslice_isolation_irq"}
    assert value(found, "bmslice_isolation_irqs") == 2 and set(irqs) == {"90", "91"}
    assert irqs["90"]["cpus"] == victim and irqs["90"]["name"] == "IRQ 90 (eth1-TxRx-3)"


def test_drift_by_kind_and_a_slice_that_does_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean = sliced_host(tmp_path / "a")
    du = clean.plan.vm("du")
    from bmslice.render.domain_model import domain_from_plan
    from bmslice.render.domain_xml import to_xml

    moved = to_xml(domain_from_plan(du)).replace(
        f'<vcpupin vcpu="0" cpuset="{du.vcpu_pins[0]}"/>', f'<vcpupin vcpu="0" cpuset="{du.vcpu_pins[1]}"/>'
    )
    assert moved != to_xml(domain_from_plan(du))
    drifted = sliced_host(tmp_path / "b", xml_of={"du": moved})
    rc, out, _ = scrape(drifted, capsys)
    found = samples(out)
    assert rc == 0 and value(found, "bmslice_slice_drift", slice="du", kind="vcpu_pins") == 1
    assert value(found, "bmslice_slice_drift", slice="du", kind="emulator") == 0

    stopped = sliced_host(tmp_path / "c", running=False)
    rc, out, _ = scrape(stopped, capsys)
    found = samples(out)
    assert value(found, "bmslice_slice_state", slice="du", state="not defined") == 1
    assert value(found, "bmslice_slice_drift", slice="du", kind="state") == 1
    two_mib = str(2 * 1024 * 1024)
    # du does not run: it wants its 1024 pages, and none of the reserved ones is free (the tree says in use)
    assert value(found, "bmslice_hugepages_wanted_pages", node="0", page_size_bytes=two_mib) == 1024
    assert value(found, "bmslice_hugepages_free_pages", node="0", page_size_bytes=two_mib) == 0


def test_a_source_that_fails_costs_its_own_metrics_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = sliced_host(tmp_path)
    args = [str(host.built.spec_path), "--connect", "test:///nonexistent/node.xml", "--host-root", str(host.built.root)]
    rc = metrics_cmd.main(["metrics", *args])
    out, err = capsys.readouterr()
    found = samples(out)
    assert rc == 1 and err.startswith("warning: slices: ") and "Traceback" not in err
    assert value(found, "bmslice_scrape_collector_success", collector="slices") == 0
    assert value(found, "bmslice_scrape_collector_success", collector="isolation") == 1
    assert not any(name == "bmslice_slice_state" for name, _ in found)
    assert value(found, "bmslice_isolation_foreign_threads") == 0


def test_textfile_is_replaced_atomically_and_never_through_a_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = sliced_host(tmp_path / "host")
    directory = tmp_path / "textfile"
    directory.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (directory / "bmslice.prom").symlink_to(victim)
    rc, out, err = scrape(host, capsys, "--textfile", str(directory))
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert (
        f"{directory / 'bmslice.prom'} is a symbolic link" in err and victim.read_text() == "keep me\n"
    )  # the planted link is refused, never followed

    (directory / "bmslice.prom").unlink()
    for _ in range(2):  # written, then replaced
        rc, out, _ = scrape(host, capsys, "--textfile", str(directory))
        assert rc == 0 and out == f"{directory / 'bmslice.prom'}\n"
    written = directory / "bmslice.prom"
    assert written.is_file() and not written.is_symlink() and oct(written.stat().st_mode & 0o777) == "0o644"
    assert value(samples(written.read_text()), "bmslice_slice_state", slice="du", state="running") == 1
    assert sorted(os.listdir(directory)) == ["bmslice.prom"]  # no temporary file left

    missing = tmp_path / "missing"
    rc, out, err = scrape(host, capsys, "--textfile", str(missing))
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: --textfile "), err
    assert str(missing) in err and not missing.exists()  # never made: node_exporter's directory must exist


def test_interrupts_parser_on_the_recorded_file() -> None:
    from bmslice.cpuset import CpuSet
    from bmslice.verify import host_state

    assert host_state.parse_interrupts(INTERRUPTS, CpuSet.parse("0,3,7")) == {0: 1240, 3: 7, 7: 3}
    assert host_state.parse_interrupts(INTERRUPTS.replace("CPU7", ""), CpuSet.of(7)) == {}  # offline: no column
    assert host_state.parse_interrupts("", CpuSet.of(1)) == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["exporter", "spec.yaml", "--listen", "localhost:9963"], "error: --listen 'localhost:9963': expected ADDRESS"),
        (
            ["exporter", "spec.yaml", "--listen", "300.1.1.1:9963"],
            "error: --listen '300.1.1.1:9963': '300.1.1.1' is not",
        ),
        (
            ["exporter", "spec.yaml", "--listen", "127.0.0.1:99999"],
            "error: --listen '127.0.0.1:99999': expected ADDRESS:PORT",
        ),
        (["metrics", "/nonexistent/spec.yaml"], "error: /nonexistent/spec.yaml: "),
        # brackets hold IPv6 alone; a zone, a newline or foreign digits are no ADDR:PORT
        (
            ["exporter", "spec.yaml", "--listen", "[127.0.0.1]:9963"],
            "error: --listen '[127.0.0.1]:9963': '127.0.0.1' is not an IPv6",
        ),
        (
            ["exporter", "spec.yaml", "--listen", "[fe80::1%eth0]:9963"],
            "error: --listen '[fe80::1%eth0]:9963': expected ADDRESS",
        ),
        (
            ["exporter", "spec.yaml", "--listen", "127.0.0.1:9963\nx"],
            "error: --listen '127.0.0.1:9963\\nx': expected ADDRESS",
        ),
        (["exporter", "spec.yaml", "--listen", "١٢٧.0.0.1:9963"], "error: --listen '١٢٧.0.0.1:9963': expected ADDRESS"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert metrics_cmd.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1, err


def test_doctests() -> None:
    import doctest

    from bmslice.metrics import serve
    from bmslice.model import listen, shapes
    from bmslice.verify import host_state

    for module in (serve, listen, shapes, host_state):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_the_live_root_reads_regular_files_only(tmp_path: Path) -> None:
    """The exporter's one-open-a-file reads below the live "/" keep the resolver's rules: a FIFO or a
    device is refused (never opened to block or act), a link is followed as the kernel follows it."""
    from bmslice.topology.fsroot import FsRoot, TreeError

    live = FsRoot(Path("/"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "file").write_text("data\n")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    rel = str(tmp_path).lstrip("/")
    assert live.read(f"{rel}/link") == "data\n"
    assert live.read_bytes(f"{rel}/missing") is None
    for bad, kind in ((f"{rel}/fifo", "a FIFO"), ("dev/null", "a character device")):
        with pytest.raises(TreeError, match=f"is {kind}, not a regular file; refused"):
            live.read_bytes(bad)
