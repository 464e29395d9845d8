"""Every parser of outside data is typed and bounded: one `error:` line, exit 2, never a traceback.

As an attacker (or a broken exporter) would try it:
- hwloc XML whose numbers are not numbers or not in range: memory sizes with units, NaN, 1e999,
  negative sizes, digits that are not ASCII, a PU index above 65535, a node above 1023, a bitmap
  naming CPU 90,000, non-numeric distances and counts, cache sizes with suffixes;
- switch tables in each of the four forms (ELS and legacy, JSON and text) whose entries have the
  wrong type (and XML, which is not read, said so), VLAN ids that are not ASCII digits from 1 to 4094, VLAN names that are no names;
- cloud-init user_data with a key twice, an alias bomb, nesting 20,000 deep or a million values,
  refused when the spec is loaded; an 11 MB write_files is built into a seed whole (the time
  is printed by bench/user_data_bench.py, not asserted);
- a tree listing 30,000 present CPUs and no topology: discovered whole, one warning
  (bench/discovery_bench.py prints the time).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bmslice.apply.ownership import Mark
from bmslice.apply.seed import read_seed
from bmslice.cli import fleet_cmd
from bmslice.cli.main import main as cli_main
from bmslice.cpuset import CpuSet
from bmslice.model.input_file import parse_yaml
from bmslice.model.spec import CloudInitSpec
from bmslice.topology.sysfs import read_host_tree
from cli_errors import one_error

REPO = Path(__file__).resolve().parents[1]
HWLOC = Path(__file__).parent / "data" / "hwloc"
TABLES = Path(__file__).parent / "data" / "switch-tables"
FLEET = REPO / "examples" / "fleet" / "fleet.yaml"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmsliceTestKeyOnlyForTests0000000000000 test@bmslice"


def bmslice(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bmslice.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)


# --- hwloc XML numbers -----------------------------------------------------------------------

PU12 = 'type="PU" os_index="12"'
MEMORY = 'local_memory="34359738368"'
PU0 = 'type="PU" os_index="0" cpuset="0x00000001" complete_cpuset="0x00000001" nodeset="0x00000001"'
PU0_NODESET = PU0.removesuffix('"0x00000001"')
BAD_HWLOC = [
    ("PU index a word", "server1.xml", PU12, 'type="PU" os_index="x"', "bad os_index='x'"),
    ("PU index above 65535", "server1.xml", PU12, 'type="PU" os_index="70000"', "bad os_index='70000'"),
    ("PU index negative", "server1.xml", PU12, 'type="PU" os_index="-1"', "bad os_index='-1'"),
    ("PU index in exponent form", "server1.xml", PU12, 'type="PU" os_index="1e3"', "bad os_index='1e3'"),
    ("PU index in Arabic-Indic digits", "server1.xml", PU12, 'type="PU" os_index="\u0661\u0662"', "bad os_index="),
    ("core index above 2^32", "server1.xml", 'type="Core" os_index="0"', 'type="Core" os_index="4294967296"', "Core"),
    ("node index above 1023", "server1.xml", 'type="NUMANode" os_index="1"', 'type="NUMANode" os_index="5000"', "5000"),
    ("memory with a unit", "server1.xml", MEMORY, 'local_memory="32GB"', "bad local_memory='32GB'"),
    ("memory NaN", "server1.xml", MEMORY, 'local_memory="NaN"', "bad local_memory='NaN'"),
    ("memory 1e999", "server1.xml", MEMORY, 'local_memory="1e999"', "bad local_memory='1e999'"),
    ("memory negative", "server1.xml", MEMORY, 'local_memory="-34359738368"', "bad local_memory="),
    ("memory of 2^64 bytes", "server1.xml", MEMORY, f'local_memory="{2**64}"', "bad local_memory="),
    ("page size with a unit", "server1.xml", 'size="4096"', 'size="4K"', "bad size='4K'"),
    ("page count negative", "server1.xml", 'count="8388608"', 'count="-1"', "bad count='-1'"),
    ("distance a word", "server1.xml", "10 21 21 10 ", "10 21 21 ten ", "bad u64values='ten'"),
    ("distance index a word", "server1.xml", '<indexes length="4">0 1 ', '<indexes length="4">0 x ', "bad indexes='x'"),
    (
        "bitmap naming CPU 90,000",
        "server1.xml",
        PU0,
        PU0_NODESET + '"0x1' + ",0x0" * 2900 + '"',
        "names ids above 65535",
    ),
    ("bitmap not hex", "server1.xml", PU0, PU0_NODESET + '"0xzz"', "bad bitmap '0xzz'"),
    ("cache size with a suffix", "l3-2pack.xml", 'cache_size="33554432"', 'cache_size="32M"', "bad cache_size='32M'"),
    ("cache size NaN", "l3-2pack.xml", 'cache_size="33554432"', 'cache_size="NaN"', "bad cache_size='NaN'"),
    ("v1 latency NaN", "server1-v1.xml", 'value="21.000000"', 'value="NaN"', "bad value='NaN'"),
    ("v1 latency 1e999", "server1-v1.xml", 'value="21.000000"', 'value="1e999"', "bad value='1e999'"),
    ("v1 latency inf", "server1-v1.xml", 'value="21.000000"', 'value="inf"', "bad value='inf'"),
    ("v1 latency base a word", "server1-v1.xml", 'latency_base="1.000000"', 'latency_base="one"', "latency_base"),
    ("v1 matrix size a word", "server1-v1.xml", 'nbobjs="2"', 'nbobjs="two"', "bad nbobjs='two'"),
]


@pytest.mark.parametrize(("case", "name", "old", "new", "needle"), BAD_HWLOC, ids=[c[0] for c in BAD_HWLOC])
def test_an_hwloc_number_that_is_no_number_in_range_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, name: str, old: str, new: str, needle: str
) -> None:
    text = (HWLOC / name).read_text()
    assert old in text, (name, old)
    bad = tmp_path / name
    bad.write_text(text.replace(old, new, 1))
    assert cli_main(["discover", "--hwloc", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: hwloc XML") and needle in err, err


# --- switch tables -----------------------------------------------------------------------------


def _json_table(name: str, change: Callable[[Any], None]) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        data = json.loads((TABLES / name).read_text())
        change(data)
        path = tmp / name
        path.write_text(json.dumps(data))
        return path

    return write


def _text_table(name: str, old: str, new: str) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        text = (TABLES / name).read_text()
        assert old in text
        path = tmp / name
        path.write_text(text.replace(old, new, 1))
        return path

    return write


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _els_entry(data: Any) -> dict[str, Any]:
    entry: dict[str, Any] = data["l2ng-l2ald-rtb-macdb"][0]["l2ng-l2ald-mac-entry-vlan"][0]["l2ng-mac-entry"][0]
    return entry


def _els_block(data: Any) -> dict[str, Any]:
    block: dict[str, Any] = data["l2ng-l2ald-rtb-macdb"][0]["l2ng-l2ald-mac-entry-vlan"][0]
    return block


def _legacy_entry(data: Any) -> dict[str, Any]:
    entries = data["ethernet-switching-table-information"][0]["ethernet-switching-table"][0]["mac-table-entry"]
    entry: dict[str, Any] = entries[1]
    return entry


ELS_AT = "l2ng-l2ald-rtb-macdb[0].l2ng-l2ald-mac-entry-vlan[0]."
LEGACY_AT = "ethernet-switching-table-information[0].ethernet-switching-table[0].mac-table-entry[1]."
BAD_TABLES = [
    (
        "ELS JSON: a MAC as a number",
        _json_table("els.json", lambda d: _els_entry(d).update({"l2ng-l2-mac-address": [{"data": 42}]})),
        f"{ELS_AT}l2ng-mac-entry[0].l2ng-l2-mac-address: 42 is int, not text",
    ),
    (
        "ELS JSON: an entry that is text",
        _json_table("els.json", lambda d: _els_block(d).update({"l2ng-mac-entry": ["02:2b:da:e4:8f:a6"]})),
        f"{ELS_AT}l2ng-mac-entry[0]: '02:2b:da:e4:8f:a6' is str, not an object",
    ),
    (
        "ELS JSON: a block that is a number",
        _json_table("els.json", lambda d: d["l2ng-l2ald-rtb-macdb"][0].update({"l2ng-l2ald-mac-entry-vlan": 7})),
        "l2ng-l2ald-rtb-macdb[0].l2ng-l2ald-mac-entry-vlan[0]: 7 is int, not an object",
    ),
    (
        "ELS JSON: a VLAN id in Arabic-Indic digits",
        _json_table("els.json", lambda d: _els_block(d).update({"l2ng-l2-vlan-id": [{"data": "\u0661\u0660\u0660"}]})),
        "l2ng-l2-vlan-id: VLAN id '\u0661\u0660\u0660' is not a number from 1 to 4094",
    ),
    (
        "ELS JSON: VLAN id 4095",
        _json_table("els.json", lambda d: _els_entry(d).update({"l2ng-l2-vlan-id": [{"data": "4095"}]})),
        "l2ng-l2-vlan-id: VLAN id '4095' is not a number from 1 to 4094",
    ),
    (
        "ELS JSON: VLAN id 1e2",
        _json_table("els.json", lambda d: _els_block(d).update({"l2ng-l2-vlan-id": [{"data": "1e2"}]})),
        "VLAN id '1e2' is not a number",
    ),
    (
        "ELS JSON: a VLAN name with a newline",
        _json_table("els.json", lambda d: _els_entry(d).update({"l2ng-l2-mac-vlan-name": [{"data": "Red\nset x"}]})),
        "l2ng-l2-mac-vlan-name: 'Red\\nset x' is not a VLAN name",
    ),
    (
        "ELS JSON: two values where Junos writes one",
        _json_table(
            "els.json", lambda d: _els_entry(d).update({"l2ng-l2-mac-address": [{"data": "a"}, {"data": "b"}]})
        ),
        "l2ng-l2-mac-address: 2 values where Junos writes one",
    ),
    (
        "legacy JSON: an entry that is a list",
        _json_table(
            "legacy.json",
            lambda d: d["ethernet-switching-table-information"][0]["ethernet-switching-table"][0].update(
                {"mac-table-entry": [[]]}
            ),
        ),
        "mac-table-entry[0]: [] is list, not an object",
    ),
    (
        "legacy JSON: an interface as a number",
        _json_table("legacy.json", lambda d: _legacy_entry(d).update({"mac-interfaces-list": [{"mac-interfaces": 9}]})),
        f"{LEGACY_AT}mac-interfaces-list[0].mac-interfaces: 9 is int, not text",
    ),
    (
        "legacy JSON: a VLAN tag that is not digits",
        _json_table("legacy.json", lambda d: _legacy_entry(d).update({"mac-vlan-tag": [{"data": "x1"}]})),
        f"{LEGACY_AT}mac-vlan-tag: VLAN id 'x1' is not a number",
    ),
    (
        "legacy JSON: a VLAN name that is a boolean",
        _json_table("legacy.json", lambda d: _legacy_entry(d).update({"mac-vlan": [{"data": True}]})),
        f"{LEGACY_AT}mac-vlan: True is bool, not text",
    ),
    (
        "ELS text: a VLAN name with a shell metacharacter",
        _text_table("els.txt", "   Blue_Tenant_Network 02:84", "   Blue;reboot 02:84"),
        "line 10: 'Blue;reboot' is not a VLAN name",
    ),
    (
        "ELS text: a VLAN name with a letter outside ASCII",
        _text_table("els.txt", "   Red_Tenant_Network  02:2b", "   R\u00e9d  02:2b"),
        "is not a VLAN name",
    ),
    (
        "ELS XML: not read, said so",
        lambda tmp: _write(tmp / "els.xml", "<rpc-reply><l2ng-l2ald-rtb-macdb>\n</l2ng-l2ald-rtb-macdb></rpc-reply>\n"),
        "XML (`| display xml`) is not read; capture `| display json` or the plain text",
    ),
    (
        "legacy text: a VLAN name with $()",
        _text_table("legacy.txt", "  Blue_Tenant_Network 02:84", "  Blue$(reboot) 02:84"),
        "line 4: 'Blue$(reboot)' is not a VLAN name",
    ),
]


@pytest.mark.parametrize(("case", "write", "needle"), BAD_TABLES, ids=[c[0] for c in BAD_TABLES])
def test_a_switch_table_entry_of_the_wrong_type_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, write: Callable[[Path], Path], needle: str
) -> None:
    table = write(tmp_path)
    code = fleet_cmd.main(["fleet", "verify", str(FLEET), "--switch-table", f"fabric-switch={table}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"error: {table}: "), err
    assert needle in err, err


# --- cloud-init user_data -------------------------------------------------------------------------


def _spec_with_user_data(tmp: Path, user_data: str) -> Path:
    (tmp / "user-data.yaml").write_text(user_data)
    spec = tmp / "spec.yaml"
    spec.write_text(
        "vms:\n  - name: a\n    vcpus: 2\n    memory: 1GiB\n    cloud_init:\n"
        f"      ssh_authorized_keys: ['{SSH_KEY}']\n      user_data: user-data.yaml\n"
    )
    return spec


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"b{i}: &b{i} [{', '.join([f'*{p}'] * 10)}]\n" for i, p in enumerate(["a"] + [f"b{i}" for i in range(8)])
)
BAD_USER_DATA = [
    ("a key twice", "#cloud-config\nruncmd: [a]\npackages: [b]\nruncmd: [c]\n", "duplicate key 'runcmd'"),
    ("an alias bomb", "#cloud-config\n" + BOMB, "more than 100000 values"),
    ("nested 20,000 deep", "#cloud-config\nx: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),
    ("a million values in 11 MB", "#cloud-config\nruncmd:\n" + "  - [a, b]\n" * 1_100_000, "more than 100000 values"),
    ("not a mapping", "#cloud-config\n- a\n- b\n", "user_data must be a #cloud-config mapping"),
    ("a syntax error", "#cloud-config\nruncmd: [a\n", "YAML error at line"),
]


@pytest.mark.parametrize(("case", "text", "needle"), BAD_USER_DATA, ids=[c[0] for c in BAD_USER_DATA])
def test_user_data_goes_through_the_strict_loader_before_anything(
    tmp_path: Path, case: str, text: str, needle: str
) -> None:
    spec = _spec_with_user_data(tmp_path, text)
    # test:/// is never reached: the spec's files are checked before the lock or any connection
    result = bmslice("apply", spec, "--connect", "test:///default", "--dry-run")
    one_error(result, f"error: {spec}: vms[0].cloud_init.user_data: {tmp_path / 'user-data.yaml'}", needle)


def test_an_11_mb_write_files_is_built_into_the_seed_whole(tmp_path: Path) -> None:
    blob = base64.b64encode(os.urandom(8_000_000)).decode()
    lines = "".join(f"      {blob[i : i + 76]}\n" for i in range(0, len(blob), 76))
    text = f"#cloud-config\nwrite_files:\n  - path: /opt/blob\n    encoding: b64\n    content: |\n{lines}"
    spec = _spec_with_user_data(tmp_path, text)
    assert spec.with_name("user-data.yaml").stat().st_size > 11_000_000
    seed = read_seed("a", CloudInitSpec(ssh_authorized_keys=[SSH_KEY], user_data=Path("user-data.yaml")), tmp_path)
    built = parse_yaml(seed.files["user-data"].removeprefix("#cloud-config\n"), "user-data")
    assert built["write_files"][0]["content"].replace("\n", "") == blob
    assert built["hostname"] == "a" and built["ssh_authorized_keys"] == [SSH_KEY]
    image = seed.image(Mark("a", "u", "default", "a-seed.iso"))
    assert len(image) > len(seed.files["user-data"])


# --- discovery is linear in the CPUs --------------------------------------------------------------


def test_30000_present_cpus_without_topology_are_discovered_whole(tmp_path: Path) -> None:
    cpu = tmp_path / "sys/devices/system/cpu"
    cpu.mkdir(parents=True)
    (cpu / "present").write_text("0-29999\n")
    (cpu / "online").write_text("0-29999\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: 1048576000 kB\nMemFree: 1000000000 kB\n")
    topo = read_host_tree(tmp_path)
    assert len(topo.cpus) == 30000 and topo.online_cpus == CpuSet.parse("0-29999")
    assert {c.package for c in topo.cpus} == {0} and len(topo.cores) == 30000
    assert [n.cpus for n in topo.numa_nodes] == [CpuSet.parse("0-29999")]
    assert [w for w in topo.warnings if "package unknown" in w] == [
        "CPU 0-29999: package unknown (no topology in sysfs); assumed 0"
    ]


# --- /proc/cmdline -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "reason"),
    [
        ("BOOT_IMAGE=/vmlinuz\x1b[2J isolcpus=2-11", "control character"),  # discover printed the escape
        ("quiet\nisolcpus=2-11", "control character"),  # a second line the kernel never writes
        ("quiet\u2028isolcpus=2-11", "control character"),
        ("quiet\x85isolcpus=2-11", "control character"),
        ("isolcpus=2-11 " + "a" * 5000, "longer than any kernel's command line"),
    ],
    ids=["escape", "newline", "U+2028", "NEL", "5000 bytes"],
)
def test_a_kernel_command_line_the_kernel_never_writes_is_one_error(tmp_path: Path, cmdline: str, reason: str) -> None:
    tree = tmp_path / "host"
    shutil.copytree(REPO / "examples/server1/host", tree, symlinks=True)
    (tree / "proc/cmdline").write_text(cmdline + "\n")
    for args in (["discover"], ["plan", REPO / "examples/server1/spec.yaml"]):
        done = bmslice(*args, "--host-root", tree)
        one_error(done, "proc/cmdline", reason)
        assert "\x1b" not in done.stdout + done.stderr


def test_a_tab_in_the_kernel_command_line_is_read_as_the_kernel_does(tmp_path: Path) -> None:
    tree = tmp_path / "host"
    shutil.copytree(REPO / "examples/server1/host", tree, symlinks=True)
    (tree / "proc/cmdline").write_text("quiet\tisolcpus=2-11\n")
    assert read_host_tree(tree).kernel_cmdline == "quiet\tisolcpus=2-11"
