"""Hostile and careless input through the real command line: one `error:` line, exit 2, fast.

Each table below is one class of input a new user or an attacker would try (issue 12): files
that are not files, YAML that says two things, numbers that are not numbers, values with a
newline at the end, MACs no VF can carry, devices that are not NICs, disk images that are
not there. Every case runs `python -m bmslice.cli.main` as a user would and asserts exit 2,
exactly one stderr line starting with `error:` that names the file or field and the reason,
no traceback — and, through the subprocess timeout, that nothing hangs on a FIFO or reads
`/dev/zero` forever (a hang guard, not a speed test).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from bmslice.errors import SpecError
from bmslice.model.input_file import INPUT_LIMIT, parse_json, parse_yaml, read_input_bytes, read_input_text
from bmslice.model.spec_files import SEED_FILE_LIMIT
from cli_errors import one_error
from treebuilder import PciSpec, server1_spec, write_tree

ROOT = Path(__file__).parents[1]
EX = ROOT / "examples" / "server1"
HOST = EX / "host"
TIMEOUT = 60  # seconds; a read that blocks on a FIFO would never return
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmslicetestkeyonlyforthetestsuite bmslice-test"


def bmslice(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bmslice.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT, timeout=TIMEOUT)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def vm_yaml(extra: str = "", name: str = "a") -> str:
    return f"vms:\n  - name: {name}\n    vcpus: 2\n    memory: 1GiB\n{extra}"


# --- (1) files that are not what they claim ---------------------------------------------------


def _fifo(tmp: Path, _limit: int) -> Path:
    path = tmp / "fifo"
    os.mkfifo(path)
    return path


def _directory(tmp: Path, _limit: int) -> Path:
    path = tmp / "a-directory"
    path.mkdir()
    return path


def _not_utf8(tmp: Path, _limit: int) -> Path:
    path = tmp / "latin1.txt"
    path.write_bytes(b"vms: [{name: caf\xe9}]\n\xff\xfe\n")
    return path


def _huge(tmp: Path, limit: int) -> Path:
    path = tmp / "huge"
    with path.open("wb") as handle:
        handle.truncate(limit + 1)  # sparse: one byte over the limit costs no disk
    return path


HOSTILE_FILES: dict[str, tuple[Callable[[Path, int], Path], str]] = {
    "FIFO": (_fifo, "a FIFO, not a regular file"),
    "/dev/zero": (lambda _tmp, _limit: Path("/dev/zero"), "a character device, not a regular file"),
    "directory": (_directory, "a directory, not a regular file"),
    "not UTF-8": (_not_utf8, "not UTF-8 text (byte 0xe9 at line 1"),
    "huge": (_huge, "limit"),
}


def _cloud_init_spec(tmp: Path, entry: str) -> list[str | Path]:
    """apply of a spec whose VM has cloud-init with `entry` (one YAML line) besides an inline key."""
    body = f"    cloud_init:\n      ssh_authorized_keys: ['{SSH_KEY}']\n      {entry}\n"
    spec = write(tmp / "spec.yaml", vm_yaml(body))
    # test:/// is never reached: the files are read before the lock or any connection.
    return ["apply", spec, "--connect", "test:///default", "--dry-run"]


Role = tuple[int, Callable[[Path, Path], list[str | Path]], str]  # limit, command line given the bad file, field


def _cloud_init_role(entry: str, field: str, limit: int = INPUT_LIMIT) -> Role:
    """`entry`: the YAML line naming the file, "{bad}" where its path goes."""
    return limit, lambda tmp, bad: _cloud_init_spec(tmp, entry.format(bad=bad)), f"vms[0].cloud_init.{field}"


FILE_ROLES: dict[str, Role] = {
    "spec": (INPUT_LIMIT, lambda _tmp, bad: ["plan", bad, "--host-root", HOST], "cannot read spec"),
    "hwloc XML": (INPUT_LIMIT, lambda _tmp, bad: ["plan", EX / "spec.yaml", "--hwloc", bad], "hwloc"),
    "SSH key file": _cloud_init_role("ssh_authorized_keys_file: {bad}", "ssh_authorized_keys_file"),
    "password hash file": _cloud_init_role("password_hash_file: {bad}", "password_hash_file"),
    "user-data": _cloud_init_role("user_data: {bad}", "user_data"),
    "seed file": _cloud_init_role("seed_files: {{join: {bad}}}", "seed_files.join", SEED_FILE_LIMIT),
}


@pytest.mark.parametrize("hostile", HOSTILE_FILES)
@pytest.mark.parametrize("role", FILE_ROLES)
def test_a_file_that_is_not_a_small_text_file_is_one_line(tmp_path: Path, role: str, hostile: str) -> None:
    make, reason = HOSTILE_FILES[hostile]
    limit, command, names = FILE_ROLES[role]
    bad = make(tmp_path, limit)
    if role == "hwloc XML" and hostile == "not UTF-8":
        reason = "cannot parse hwloc XML"  # XML declares its own encoding: the parser judges the bytes
    line = one_error(bmslice(*command(tmp_path, bad)), names, reason)
    if hostile == "huge":
        assert f"{limit // (1024 * 1024)} MiB limit" in line
    if not (role == "hwloc XML" and hostile == "not UTF-8"):
        assert str(bad) in line


def test_a_missing_cloud_init_file_is_refused_before_any_change(tmp_path: Path) -> None:
    one_error(
        bmslice(*_cloud_init_spec(tmp_path, "user_data: no-such-user-data.yaml")),
        "vms[0].cloud_init.user_data",
        "no-such-user-data.yaml",
        "No such file",
    )


def test_the_reader_takes_exactly_its_limit(tmp_path: Path) -> None:
    """The limit is a number of bytes: that many are read, one more is refused (and never all read)."""
    path = tmp_path / "keys.pub"
    path.write_bytes(b"x" * 100)
    assert read_input_bytes(path, "key file", limit=100) == b"x" * 100
    with pytest.raises(SpecError, match=r"keys.pub: cannot read key file: 100 bytes, more than the 99 bytes limit"):
        read_input_bytes(path, "key file", limit=99)


def test_the_reader_judges_what_a_symlink_names(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to-fifo").symlink_to(tmp_path / "fifo")
    (tmp_path / "real.txt").write_text("text\n")
    (tmp_path / "to-real").symlink_to(tmp_path / "real.txt")
    with pytest.raises(SpecError, match="to-fifo: cannot read spec: a FIFO, not a regular file"):
        read_input_text(tmp_path / "to-fifo", "spec")
    assert read_input_text(tmp_path / "to-real", "spec") == "text\n"


def test_a_path_with_a_nul_byte_is_refused() -> None:
    with pytest.raises(SpecError, match=r"cannot read vms\[0\]\.cloud_init\.user_data: embedded null byte"):
        read_input_text(Path("user\0data.yaml"), "vms[0].cloud_init.user_data")


# --- (2) YAML that says two things, or far too much ----------------------------------------------

BAD_YAML = [
    (
        "duplicate top-level key",
        vm_yaml() + vm_yaml(name="b"),
        ("duplicate key 'vms'", "line 5", "first given at line 1"),
    ),
    (
        "duplicate key in a VM",
        "vms:\n  - name: a\n    vcpus: 2\n    memory: 1GiB\n    vcpus: 64\n",
        ("line 5", "duplicate key 'vcpus'", "first given at line 3"),
    ),
    ("duplicate key in a flow mapping", "vms: [{name: a, vcpus: 1, memory: 1G, name: b}]\n", ("duplicate key 'name'",)),
    ("duplicate key in host", "host: {isolate: vms, isolate: all}\n" + vm_yaml(), ("duplicate key 'isolate'",)),
    (
        "alias bomb",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"b{i}: &b{i} [{', '.join([f'*{p}'] * 10)}]\n" for i, p in enumerate(["a"] + [f"b{i}" for i in range(8)])
        )
        + vm_yaml(),
        ("more than 100000 values",),
    ),
    ("recursive alias", "a: &a [*a]\n" + vm_yaml(), ("more than 100000 values",)),
    ("nested 20,000 deep", "vms: " + "[" * 20000 + "]" * 20000 + "\n", ("nested too deeply",)),
    ("control character", vm_yaml().replace("name: a", "name: a\x07"), ("line 2", "characters are not allowed")),
]


@pytest.mark.parametrize(("case", "text", "needles"), BAD_YAML, ids=[c[0] for c in BAD_YAML])
def test_yaml_with_duplicate_keys_or_bombs_is_one_line(
    tmp_path: Path, case: str, text: str, needles: tuple[str, ...]
) -> None:
    spec = write(tmp_path / "spec.yaml", text)
    one_error(bmslice("plan", spec, "--host-root", HOST), str(spec), *needles)


def test_a_merge_key_may_be_overridden() -> None:
    """`<<: *defaults` then a key of the mapping's own is YAML's override, not a duplicate."""
    data = parse_yaml("d: &d {vcpus: 2, memory: 1GiB}\nvm: {<<: *d, vcpus: 4}\n", "x.yaml")
    assert data["vm"] == {"vcpus": 4, "memory": "1GiB"}


BAD_JSON = [
    ("NaN", '{"vcpus": NaN}', "NaN is not a number bmslice accepts"),
    ("Infinity", '{"memory": Infinity}', "Infinity is not a number"),
    ("-Infinity", '{"memory": -Infinity}', "-Infinity is not a number"),
    ("1e999", '{"memory": 1e999}', "too large"),
    ("4,000-digit integer", '{"vcpus": ' + "9" * 4000 + "}", "an integer of 4000 digits"),
    ("5,000-digit integer", '{"vcpus": ' + "9" * 5000 + "}", "an integer of 5000 digits"),
    ("duplicate key", '{"vcpus": 1, "vcpus": 2}', "duplicate key 'vcpus'"),
    ("syntax", '{"vcpus": }', "not JSON: Expecting value at line 1"),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_strict_json_for_the_fleet_files(case: str, text: str, message: str) -> None:
    """The reader the fleet's placement file is to use (parse_json under read_json)."""
    with pytest.raises(SpecError) as caught:
        parse_json(text, "placement.json")
    assert str(caught.value).startswith("placement.json: ") and message in str(caught.value)
    assert len(str(caught.value)) < 200


# --- (3) numbers that are not numbers, or absurd ones ----------------------------------------------

BIG = "9" * 4000
BAD_NUMBERS = [
    ("vcpus: true", vm_yaml().replace("vcpus: 2", "vcpus: true"), "vms[0].vcpus: Expected `int"),
    ("vcpus: '2'", vm_yaml().replace("vcpus: 2", "vcpus: '2'"), "vms[0].vcpus: Expected `int"),
    ("vcpus: 2.0", vm_yaml().replace("vcpus: 2", "vcpus: 2.0"), "vms[0].vcpus: Expected `int"),
    ("vcpus: .inf", vm_yaml().replace("vcpus: 2", "vcpus: .inf"), "vms[0].vcpus"),
    ("vcpus: .nan", vm_yaml().replace("vcpus: 2", "vcpus: .nan"), "vms[0].vcpus"),
    ("vcpus Arabic-Indic", vm_yaml().replace("vcpus: 2", "vcpus: '٢'"), "vms[0].vcpus"),
    ("vcpus 4,000 digits", vm_yaml().replace("vcpus: 2", f"vcpus: {BIG}"), "an integer of 4000 digits"),
    ("vcpus 5,000 digits", vm_yaml().replace("vcpus: 2", f"vcpus: {'9' * 5000}"), "an integer of 5000 digits"),
    ("numa_node: true", vm_yaml("    numa_node: true\n"), "vms[0].numa_node: Expected `int"),
    ("numa_node 10**20", vm_yaml("    numa_node: 100000000000000000000\n"), "vms[0].numa_node: Expected `int` <="),
    ("iothreads: false", vm_yaml("    iothreads: false\n"), "vms[0].iothreads: Expected `int"),
    ("8GiBB", vm_yaml().replace("1GiB", "8GiBB"), "vms[0].memory: expected a size such as 8GiB"),
    ("8B (bytes)", vm_yaml().replace("1GiB", "8B"), "vms[0].memory: unknown size unit 'B'"),
    ("fullwidth size", vm_yaml().replace("1GiB", "８GiB"), "vms[0].memory: expected a size"),
    ("Arabic-Indic size", vm_yaml().replace("1GiB", "٨GiB"), "vms[0].memory: expected a size"),
    ("size with a newline", vm_yaml().replace("1GiB", '"1GiB\\n"'), "vms[0].memory: expected a size"),
    ("size 4,000 digits", vm_yaml().replace("1GiB", f"{BIG}GiB"), "vms[0].memory: size '9999"),
    ("size above 1 PiB", vm_yaml().replace("1GiB", "2048TiB"), "more than the 1024TiB bmslice accepts"),
    ("size: true", vm_yaml().replace("1GiB", "true"), "vms[0].memory: expected a size such as 8GiB, got True"),
    ("size: .inf", vm_yaml().replace("1GiB", ".inf"), "vms[0].memory: expected a size such as 8GiB, got inf"),
    ("disk size fraction", vm_yaml("    disk: {size: 0.1G}\n"), "vms[0].disk.size: size '0.1G' must be a positive"),
    ("CPU range to 4e9", "host: {reserved_cpus: '0-4000000000'}\n" + vm_yaml(), "above the largest CPU id 65535"),
    ("CPU range to 70000", "host: {reserved_cpus: '0-70000'}\n" + vm_yaml(), "above the largest CPU id 65535"),
    ("CPU 4,000 digits", f"host: {{reserved_cpus: '{BIG}'}}\n" + vm_yaml(), "host.reserved_cpus: bad CPU list"),
    ("CPU Arabic-Indic", "host: {reserved_cpus: '٠,١٢'}\n" + vm_yaml(), "is not a number or range"),
    ("CPU fullwidth", "host: {reserved_cpus: '０'}\n" + vm_yaml(), "is not a number or range"),
    ("reserved_cores: true", "host: {reserved_cores_per_node: true}\n" + vm_yaml(), "host.reserved_cores_per_node"),
    (
        "sriov_vfs: true",
        "host: {sriov_vfs: {eno4: true}}\n" + vm_yaml(),
        "host.sriov_vfs: 'eno4': Expected `int`, got `bool`",
    ),
    ("sriov_vfs 10**9", "host: {sriov_vfs: {eno4: 1000000000}}\n" + vm_yaml(), "VF count must be from 1 to 65535"),
    (
        "vlan: true",
        vm_yaml("    nics: [{sriov: {pf: eno4, vlan: true}}]\n"),
        "sriov.vlan: Expected `int",
    ),
    (
        "count: true",
        vm_yaml("    nics: [{sriov: {pf: eno4, count: true}}]\n"),
        "sriov.count: Expected `int`, got `bool`",
    ),
    (
        "trust: 1",
        vm_yaml("    nics: [{sriov: {pf: eno4, trust: 1}}]\n"),
        "sriov.trust: Expected `bool",
    ),
    ("spoofchk: 'false'", vm_yaml("    nics: [{sriov: {pf: eno4, spoofchk: 'false'}}]\n"), "sriov.spoofchk"),
    ("allow_management_nic: 'yes'", "host: {allow_management_nic: 'yes'}\n" + vm_yaml(), "host.allow_management_nic"),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_NUMBERS, ids=[c[0] for c in BAD_NUMBERS])
def test_numbers_that_are_not_counts_or_sizes_are_one_short_line(
    tmp_path: Path, case: str, text: str, message: str
) -> None:
    spec = write(tmp_path / "spec.yaml", text)
    line = one_error(bmslice("plan", spec, "--host-root", HOST), message)
    assert len(line) < 400  # a 4,000-digit value is cut, not echoed


# --- (4) values with something after them: the whole value must match ----------------------------------

WHOLE_VALUE = [
    ("VM name + newline", vm_yaml(name='"a\\n"'), "vms[0].name: 'a\\n' is not a valid domain name"),
    ("VM name + space", vm_yaml(name='"a "'), "vms[0].name: 'a ' is not"),
    ("interface + newline", vm_yaml('    nics: [{passthrough: "eno1\\n"}]\n'), "passthrough: 'eno1\\n' is neither"),
    ("interface + space", vm_yaml('    nics: [{passthrough: " eno1"}]\n'), "passthrough: ' eno1' is neither"),
    ("PCI address + newline", vm_yaml('    nics: [{passthrough: "01:00.0\\n"}]\n'), "'01:00.0\\n' is neither"),
    ("PF + newline", vm_yaml('    nics: [{sriov: {pf: "eno4\\n"}}]\n'), "sriov.pf: 'eno4\\n' is neither"),
    ("VF pool PF + newline", 'host: {sriov_vfs: {"eno4\\n": 2}}\n' + vm_yaml(), "'eno4\\n' is neither"),
    ("CPU feature + newline", vm_yaml('    disable_cpu_features: ["vmx\\n"]\n'), "'vmx\\n' is not a CPU feature"),
    ("MAC + newline", vm_yaml('    nics: [{sriov: {pf: eno4, mac: "02:00:00:00:00:01\\n"}}]\n'), "is not a MAC"),
    ("seed file name + newline", vm_yaml('    cloud_init: {seed_files: {"join\\n": x}}\n'), "is not a usable seed"),
    (
        "SSH key + second line",
        vm_yaml(f'    cloud_init: {{ssh_authorized_keys: ["{SSH_KEY}\\ncommand=\\"sh\\" ssh-rsa AAAA"]}}\n'),
        "is not an SSH public key",
    ),
    ("storage pool + newline", vm_yaml('    disk: {pool: "default\\n"}\n'), "vms[0].disk.pool: 'default\\n' is not"),
    ("disk image + newline", vm_yaml('    disk: {image: "/base.qcow2\\n"}\n'), "holds a control character"),
]


@pytest.mark.parametrize(("case", "text", "message"), WHOLE_VALUE, ids=[c[0] for c in WHOLE_VALUE])
def test_a_trailing_newline_never_passes_a_validator(tmp_path: Path, case: str, text: str, message: str) -> None:
    spec = write(tmp_path / "spec.yaml", text)
    one_error(bmslice("plan", spec, "--host-root", HOST), message)


# --- (5) MACs a VF cannot carry -----------------------------------------------------------------------------


def _vf(mac: str) -> str:
    return f"    nics: [{{sriov: {{pf: eno4, mac: '{mac}'}}}}]\n"


BAD_MACS = [
    ("all-zero", vm_yaml(_vf("00:00:00:00:00:00")), "vms[0].nics[0].sriov.mac: 00:00:00:00:00:00 is the all-zero MAC"),
    ("broadcast", vm_yaml(_vf("ff:ff:ff:ff:ff:ff")), "vms[0].nics[0].sriov.mac: ff:ff:ff:ff:ff:ff is a multicast"),
    ("IPv4 multicast", vm_yaml(_vf("01:00:5e:00:00:01")), "01:00:5e:00:00:01 is a multicast or broadcast MAC"),
    ("odd first octet", vm_yaml(_vf("03:00:00:00:00:01")), "is a multicast or broadcast MAC"),
    ("too short", vm_yaml(_vf("02:00:00:00:01")), "'02:00:00:00:01' is not a MAC address"),
    ("dashes", vm_yaml(_vf("02-00-00-00-00-01")), "is not a MAC address"),
    (
        "same MAC on two VMs",
        vm_yaml(_vf("02:00:00:00:00:07")) + vm_yaml(_vf("02:00:00:00:00:07"), name="b").removeprefix("vms:\n"),
        "vms[1].nics[0].sriov.mac: MAC 02:00:00:00:00:07 is also given at vms[0].nics[0].sriov.mac",
    ),
    (
        "same MAC, other case",
        vm_yaml(_vf("02:aa:00:00:00:07")) + vm_yaml(_vf("02:AA:00:00:00:07"), name="b").removeprefix("vms:\n"),
        "MAC 02:aa:00:00:00:07 is also given at vms[0].nics[0].sriov.mac",
    ),
    (
        "same MAC twice in one VM",
        vm_yaml(
            "    nics:\n      - sriov: {pf: eno4, mac: '02:00:00:00:00:09'}\n"
            "      - sriov: {pf: eno3, mac: '02:00:00:00:00:09'}\n"
        ),
        "vms[0].nics[1].sriov.mac: MAC 02:00:00:00:00:09 is also given at vms[0].nics[0].sriov.mac",
    ),
]


@pytest.mark.parametrize(("case", "text", "message"), BAD_MACS, ids=[c[0] for c in BAD_MACS])
def test_macs_no_vf_can_carry_are_refused_naming_the_field(tmp_path: Path, case: str, text: str, message: str) -> None:
    spec = write(tmp_path / "spec.yaml", text)
    one_error(bmslice("plan", spec, "--host-root", HOST), message)


# --- (6) devices that are not NICs ---------------------------------------------------------------------------

NVME = PciSpec(
    "0000:5e:00.0", class_code="0x010802", device="0x0a54", driver="nvme", iommu_group=40, numa_node=1,
    sriov_totalvfs=8,
)  # fmt: skip
GPU = PciSpec("0000:af:00.0", class_code="0x030200", vendor="0x10de", device="0x1eb8", iommu_group=41, numa_node=1)


@pytest.fixture(scope="module")
def odd_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The design note's server with an NVMe drive (SR-IOV capable) and a GPU beside its NICs."""
    spec = server1_spec()
    return write_tree(replace(spec, pci=(*spec.pci, NVME, GPU)), tmp_path_factory.mktemp("odd") / "host")


BAD_DEVICES = [
    ("root port", "    nics: [{passthrough: '0000:00:01.0'}]\n", "0000:00:01.0 is a bridge (PCI class 0x060400)"),
    (
        "root port, allow_non_nic",
        "    nics: [{passthrough: '0000:00:01.0', allow_non_nic: true}]\n",
        "a bridge or root port is never passed through",
    ),
    (
        "NVMe drive",
        "    nics: [{passthrough: '0000:5e:00.0'}]\n",
        "vms[0].nics[0].passthrough: 0000:5e:00.0 is a storage controller (PCI class 0x010802), not a network device;"
        " if this device is meant, say so with allow_non_nic: true",
    ),
    ("GPU", "    nics: [{passthrough: '0000:af:00.0'}]\n", "0000:af:00.0 is a display controller (PCI class 0x030200)"),
    ("VFs of an NVMe drive", "    nics: [{sriov: {pf: '0000:5e:00.0'}}]\n", "sriov.pf: 0000:5e:00.0 is a storage"),
    (
        "allow_non_nic on sriov",
        "    nics: [{sriov: {pf: eno4}, allow_non_nic: true}]\n",
        "vms[0].nics[0]: allow_non_nic applies to passthrough only",
    ),
    (
        "allow_non_nic: 'yes'",
        "    nics: [{passthrough: eno1, allow_non_nic: 'yes'}]\n",
        "allow_non_nic: Expected `bool`, got `str`",
    ),
]


@pytest.mark.parametrize(("case", "nics", "message"), BAD_DEVICES, ids=[c[0] for c in BAD_DEVICES])
def test_a_device_that_is_not_a_nic_is_refused(
    tmp_path: Path, odd_host: Path, case: str, nics: str, message: str
) -> None:
    spec = write(tmp_path / "spec.yaml", vm_yaml(nics))
    one_error(bmslice("plan", spec, "--host-root", odd_host), message)


def test_a_non_nic_device_goes_through_when_the_spec_says_so(tmp_path: Path, odd_host: Path) -> None:
    spec = write(tmp_path / "spec.yaml", vm_yaml("    nics: [{passthrough: '0000:5e:00.0', allow_non_nic: true}]\n"))
    result = bmslice("plan", spec, "--host-root", odd_host, "--json")
    assert result.returncode == 0, result.stderr
    import json

    plan = json.loads(result.stdout)
    assert [d["address"] for d in plan["vms"][0]["devices"]] == ["0000:5e:00.0"]
    assert any("OVERRIDE: a gets 0000:5e:00.0, a storage controller" in w for w in plan["warnings"])


# --- (7) refusals name the resource that is short -------------------------------------------------------------

SHORT = [
    (
        "memory on a bound node",
        vm_yaml("    numa_node: 1\n").replace("1GiB", "40GiB"),
        "a needs 40960 MiB on NUMA node 1",
    ),
    ("memory on any node", vm_yaml().replace("1GiB", "40GiB"), "a needs 40960 MiB on one NUMA node"),
    (
        "memory of three VMs, cores would fit",
        vm_yaml().replace("1GiB", "16GiB")
        + "".join(vm_yaml(name=n).replace("1GiB", "16GiB").removeprefix("vms:\n") for n in ("b", "c")),
        "the VMs' memory does not fit on the NUMA nodes, their cores would: they need 49152 MiB",
    ),
    ("cores on a bound node", vm_yaml("    numa_node: 1\n").replace("vcpus: 2", "vcpus: 12"), "a needs 7 whole cores"),
]


@pytest.mark.parametrize(("case", "text", "message"), SHORT, ids=[c[0] for c in SHORT])
def test_a_refusal_names_the_short_resource(tmp_path: Path, case: str, text: str, message: str) -> None:
    spec = write(tmp_path / "spec.yaml", text)
    line = one_error(bmslice("plan", spec, "--host-root", HOST), message)
    if "memory" in case:
        assert "whole core" not in line


# --- (8) disk images ----------------------------------------------------------------------------------------------


def test_a_relative_disk_image_is_refused_at_load(tmp_path: Path) -> None:
    spec = write(tmp_path / "spec.yaml", vm_yaml("    disk: {image: base.qcow2}\n"))
    one_error(bmslice("plan", spec, "--host-root", HOST), "vms[0].disk.image: 'base.qcow2' must be an absolute path")


def _image_spec(tmp: Path, image: Path) -> Path:
    return write(tmp / "spec.yaml", vm_yaml(f"    disk: {{size: 64MiB, image: {image}}}\n"))


LOCAL_COMMANDS: list[tuple[str, Callable[[Path, Path], list[str | Path]]]] = [
    ("plan", lambda spec, _tmp: ["plan", spec]),
    ("render", lambda spec, tmp: ["render", spec, "--out", tmp / "out"]),
    ("show", lambda spec, _tmp: ["show", spec]),
    ("apply", lambda spec, _tmp: ["apply", spec, "--connect", "qemu:///system", "--dry-run"]),
]


@pytest.mark.parametrize(("command", "args"), LOCAL_COMMANDS, ids=[c[0] for c in LOCAL_COMMANDS])
@pytest.mark.parametrize("kind", ["missing", "a directory"])
def test_a_disk_image_this_host_lacks_is_refused_before_anything(
    tmp_path: Path, command: str, args: Callable[[Path, Path], list[str | Path]], kind: str
) -> None:
    image = tmp_path / "base.qcow2"
    if kind == "a directory":
        image.mkdir()
    spec = _image_spec(tmp_path, image)
    reason = "No such file or directory" if kind == "missing" else "not a file or block device"
    one_error(bmslice(*args(spec, tmp_path)), f"vms[0].disk.image: {image}", reason)
    assert not (tmp_path / "out").exists()  # render wrote nothing


def test_a_disk_image_on_another_host_is_its_libvirts_business(tmp_path: Path) -> None:
    """A host tree (or a remote URI) is another machine: its image paths are not looked up here."""
    spec = _image_spec(tmp_path, tmp_path / "base.qcow2")
    result = bmslice("plan", spec, "--host-root", HOST)
    assert result.returncode == 0, result.stderr


# --- (9) file names with a newline or bytes that are not UTF-8 ----------------------------------------------------


@pytest.mark.parametrize("name", ["bad\nerror: forged.yaml", "bad\x1b[2J.yaml", "bad\udcff.yaml"])
def test_a_file_name_never_splits_the_error_line(tmp_path: Path, name: str) -> None:
    spec = tmp_path / name  # "\udcff" is how Python spells the byte 0xff of a file name that is not UTF-8
    spec.write_text("vms: [{name: a, vcpus: 0, memory: 1GiB}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "bmslice.cli.main", "plan", os.fsencode(spec), "--host-root", str(HOST)],
        capture_output=True,
        check=False,
        cwd=ROOT,
        timeout=TIMEOUT,
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2 and "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "vms[0].vcpus" in lines[0], stderr
    assert "\x1b" not in stderr


def test_a_spec_name_reaches_the_html_report_escaped(tmp_path: Path) -> None:
    spec = tmp_path / "odd\nname\x07.yaml"
    spec.write_text((EX / "spec.yaml").read_text())
    report = tmp_path / "report.html"
    result = bmslice("show", spec, "--host-root", HOST, "--html", report)
    assert result.returncode == 0, result.stderr
    html = report.read_text()
    assert "odd\\nname\\x07.yaml" in html and "\x07" not in html
    from lxml import etree

    assert etree.fromstring(html.encode(), etree.HTMLParser()).findtext(".//title").endswith("odd\\nname\\x07.yaml")
