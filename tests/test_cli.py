"""The command line as a user runs it: JSON shapes, files written, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
EX = ROOT / "examples" / "server1"


def bmslice(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bmslice.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)


def test_discover_json_has_the_documented_fields() -> None:
    result = bmslice("discover", "--host-root", EX / "host", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cpu_vendor"] == "GenuineIntel"
    assert data["default_route_interface"] == "eno3"
    assert data["vf_states"] == []  # VF MAC/VLAN come from netlink on a live host only
    assert "intel_iommu=on" in data["kernel_cmdline"]
    cpu0 = data["cpus"][0]
    assert {k: cpu0[k] for k in ("id", "package", "node", "siblings", "online")} == {
        "id": 0,
        "package": 0,
        "node": 0,
        "siblings": [0, 12],
        "online": True,
    }
    assert [n["cpus"] for n in data["numa_nodes"]] == [list(range(0, 24, 2)), list(range(1, 24, 2))]
    assert all({"id", "cpus", "memory_mib", "hugepages"} <= set(n) for n in data["numa_nodes"])
    eno1 = next(d for d in data["pci_devices"] if d["interfaces"] == ["eno1"])
    assert {
        k: eno1[k]
        for k in ("address", "class", "vendor", "device", "numa_node", "iommu_group", "driver", "sriov_totalvfs")
    } == {
        "address": "0000:01:00.0",
        "class": "0x020000",
        "vendor": "0x8086",
        "device": "0x1528",
        "numa_node": 0,
        "iommu_group": 25,
        "driver": "ixgbe",
        "sriov_totalvfs": 63,
    }


def test_discover_summary_is_readable() -> None:
    result = bmslice("discover", "--host-root", EX / "host")
    assert result.returncode == 0
    assert "2 socket(s), 2 NUMA node(s), 12 cores, 24 CPUs online (SMT on)" in result.stdout
    assert "default route" in result.stdout


def test_plan_table_is_the_design_notes_layout_in_plain_text() -> None:
    """One row per slice, the host's part above, the warning below; and a one-shot `bmslice
    plan` imports neither rich, the solver nor pydantic (its start-up: docs/benchmarks.md)."""
    code = (
        "import sys; from bmslice.cli.main import main; "
        f"code = main(['plan', {str(EX / 'spec.yaml')!r}, '--host-root', {str(EX / 'host')!r}]); "
        "print('loaded:', *sorted(m for m in ('rich', 'ortools', 'pydantic') if m in sys.modules)); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "loaded:"
    assert "  isolated CPUs                  2-11,14-23" in lines
    rows = {line.split()[0]: line.split() for line in lines if line.startswith("  ") and "_k8s_" in line}
    assert rows["Red_k8s_cluster_worker1"][1:6] == ["0", "4,16", "6,18", "8,20", "10,22"]
    assert rows["Blue_k8s_cluster_worker1"][-2:] == ["0000:01:00.1", "eno2"]
    assert lines[-2].startswith("warning: Blue_k8s_cluster_worker1: NIC 0000:01:00.1 (eno2) is on NUMA node 0")


def test_plan_json_matches_the_design_note() -> None:
    result = bmslice("plan", EX / "spec.yaml", "--host-root", EX / "host", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["host"]["reserved_cpus"] == [0, 1, 12, 13]
    assert plan["host"]["reboot_required"] is True
    red, blue = plan["vms"]
    assert red["vcpu_pins"] == [4, 16, 6, 18, 8, 20, 10, 22] and red["emulator_cpus"] == [2, 14]
    assert blue["vcpu_pins"] == [5, 17, 7, 19, 9, 21, 11, 23] and blue["iothread_cpus"] == [3, 15]
    assert red["guest_topology"] == {"sockets": 1, "dies": 1, "cores": 4, "threads": 2}
    assert blue["devices"][0]["address"] == "0000:01:00.1" and blue["devices"][0]["numa_node"] == 0
    assert len(blue["warnings"]) == 1 and "cross-NUMA" in blue["warnings"][0]


def test_hwloc_source_plans_the_same_cpus() -> None:
    spec = ROOT / "tests" / "data" / "hwloc-plan.yaml"
    result = bmslice("plan", spec, "--hwloc", ROOT / "tests/data/hwloc/server1.xml", "--json")
    assert result.returncode == 0, result.stderr
    pins = [vm["vcpu_pins"] for vm in json.loads(result.stdout)["vms"]]
    assert pins == [[4, 16, 6, 18, 8, 20, 10, 22], [5, 17, 7, 19, 9, 21, 11, 23]]


def test_render_writes_domain_xml_and_kernel_args(tmp_path: Path) -> None:
    result = bmslice("render", EX / "spec.yaml", "--host-root", EX / "host", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Blue_k8s_cluster_worker1.xml",
        "Red_k8s_cluster_worker1.xml",
        "kernel-args",
    ]
    assert "isolcpus=2-11,14-23" in (tmp_path / "kernel-args").read_text()


def bad_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


BAD_INPUT = [
    ("missing spec", lambda t: [t / "nope.yaml", "--host-root", EX / "host"], "cannot read spec"),
    ("not a mapping", lambda t: [bad_spec(t, "- 1\n"), "--host-root", EX / "host"], "must be a mapping"),
    ("yaml error", lambda t: [bad_spec(t, "vms: [\n"), "--host-root", EX / "host"], "YAML error at line"),
    (
        "unknown key",
        lambda t: [bad_spec(t, "vms: [{name: a, vcpus: 1, memory: 1GiB, cpus: 3}]\n"), "--host-root", EX / "host"],
        r"vms\[0\]\.cpus: unknown key",
    ),
    (
        "negative vcpus",
        lambda t: [bad_spec(t, "vms: [{name: a, vcpus: -2, memory: 1GiB}]\n"), "--host-root", EX / "host"],
        r"vms\[0\]\.vcpus: Expected `int` >= 1",
    ),
    (
        "bad size",
        lambda t: [bad_spec(t, "vms: [{name: a, vcpus: 1, memory: 8XB}]\n"), "--host-root", EX / "host"],
        r"vms\[0\]\.memory: unknown size unit",
    ),
    (
        "bad PCI address",
        lambda t: [
            bad_spec(t, "vms: [{name: a, vcpus: 1, memory: 1G, nics: [{passthrough: '0000:zz:00.0'}]}]\n"),
            "--host-root",
            EX / "host",
        ],
        r"nics\[0\]\.passthrough: '0000:zz:00.0' is neither",
    ),
    (
        "unknown NIC",
        lambda t: [
            bad_spec(t, "vms: [{name: a, vcpus: 1, memory: 1G, nics: [{passthrough: eno9}]}]\n"),
            "--host-root",
            EX / "host",
        ],
        r"no NIC 'eno9' on this host \(NICs: eno1, eno2, eno3, eno4\)",
    ),
    (
        "infeasible",
        lambda t: [
            bad_spec(t, "vms: [{name: big, vcpus: 12, memory: 1G, numa_node: 1}]\n"),
            "--host-root",
            EX / "host",
        ],
        "big needs 7 whole cores on NUMA node 1, only 5 are free",
    ),
    ("missing host root", lambda t: [EX / "spec.yaml", "--host-root", t / "none"], "no such directory"),
    ("empty host root", lambda t: [EX / "spec.yaml", "--host-root", t], "sys/devices/system/cpu"),
    ("bad hwloc file", lambda t: [EX / "spec.yaml", "--hwloc", bad_spec(t, "<topology")], "hwloc"),
    (
        "unreachable libvirt",
        lambda t: [EX / "spec.yaml", "--connect", "qemu+ssh://nosuchhost.invalid/system"],
        "cannot connect",
    ),
]


@pytest.mark.parametrize(("case", "args", "message"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, case: str, args: object, message: str) -> None:
    result = bmslice("plan", *args(tmp_path))  # type: ignore[operator]
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    import re

    assert re.search(message, lines[0]), lines[0]


def test_usage_errors_are_one_line_too() -> None:
    result = bmslice("plan")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")


def test_every_command_is_mapped_to_the_module_that_registers_it() -> None:
    """`bmslice COMMAND` registers only COMMAND's module (start-up time): the map must name every
    command, and name the module that really registers it."""
    import argparse

    from bmslice.cli import main

    for module in main.COMMAND_MODULES:
        parser = main.build_parser((module,))
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert {name: main.COMMANDS.get(name) for name in sub.choices} == dict.fromkeys(sub.choices, module)
    assert set(main.COMMANDS.values()) == set(main.COMMAND_MODULES)


@pytest.mark.parametrize("args", [["plan"], ["plan", "--bogus"], ["fleet"], ["nonsense"]])
def test_a_usage_mistake_reads_the_same_with_one_module_or_all(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The one-module parser of a known command answers a mistake exactly as the full parser does."""
    from bmslice.cli import main
    from bmslice.cli.common import run

    answers = []
    for modules in (main.COMMAND_MODULES, (main.COMMANDS.get(args[0], "slice_cmds"),)):
        with pytest.raises(SystemExit) as exited:
            run(main.build_parser(modules), args)
        answers.append((exited.value.code, capsys.readouterr().err))
    if args[0] in main.COMMANDS:
        assert answers[0] == answers[1]
    assert answers[0][0] == 2 and answers[0][1].startswith("error: bmslice")
