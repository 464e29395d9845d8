"""Numbers read from outside are the kernel's own forms: ASCII digits, bounded (issue 19, class 3).

Python's `int()` reads "١٢" (Arabic-Indic) as 12, "６４" (fullwidth) as 64 and "6_4" as 64, and
`str.isdigit()` is true of "١٢". A host tree, a capture of /proc, a resctrl schemata or libvirt
XML holding such a value was not written by the kernel or libvirt: each reader here refuses
it (a warning naming the file, or one `error:` line) instead of reading some other number,
and a number past anything real (10**30 VFs) is refused before it is planned with.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bmslice.cpuset import CpuListError, CpuSet
from bmslice.errors import TopologyError
from bmslice.numbers import decimal, hexadecimal, is_decimal
from bmslice.topology.fsroot import FsRoot
from bmslice.topology.libvirt_xml import cell_ids
from bmslice.topology.resctrl import parse_schemata
from bmslice.topology.sysfs import read_host_tree
from bmslice.verify.compare import thread_role
from bmslice.verify.host_state import has_capability, parse_interrupts, read_processes, stat_flags

REPO = Path(__file__).resolve().parents[1]
SERVER1 = REPO / "examples/server1"
PF = "sys/bus/pci/devices/0000:01:00.0"
HUGE = "sys/devices/system/node/node0/hugepages/hugepages-2048kB"
NOT_THE_KERNELS = ["١٢", "６４", "6_4", "+5", "0b1", "0o7", " 1 2", "1" + "0" * 30, "٣.٠", "-5"]


def bmslice(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bmslice.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    shutil.copytree(SERVER1 / "host", root, symlinks=True)
    return root


def plant(root: Path, rel: str, text: str) -> None:
    path = root / rel
    if path.is_symlink():
        path.unlink()
    path.write_text(text + "\n")


@pytest.mark.parametrize("text", NOT_THE_KERNELS)
def test_the_one_reader_takes_ascii_digits_only(text: str) -> None:
    assert decimal(text) is None and not is_decimal(text)
    if not text.isascii() or "_" in text:
        assert hexadecimal(text) is None
    assert decimal("0042") == 42 and decimal("-1", signed=True) == -1 and hexadecimal("0x7F0") == 0x7F0


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        (f"{PF}/sriov_totalvfs", "٦٣"),  # 63 in Arabic-Indic digits: int() reads it
        (f"{PF}/sriov_totalvfs", "6_3"),  # int() reads it as 63
        (f"{PF}/sriov_totalvfs", "1" + "0" * 30),
        (f"{PF}/sriov_totalvfs", "-5"),
        (f"{PF}/sriov_numvfs", "0o7"),
        (f"{PF}/numa_node", "０"),  # fullwidth zero
        (f"{HUGE}/nr_hugepages", "1_024"),
        (f"{HUGE}/free_hugepages", "-100"),
    ],
)
def test_sysfs_numbers_not_the_kernels_are_refused_with_the_file(tree: Path, rel: str, text: str) -> None:
    plant(tree, rel, text)
    topo = read_host_tree(tree)
    shown = [w for w in topo.warnings if rel in w]
    assert shown and "expected an integer" in shown[0], topo.warnings
    nic = next(d for d in topo.pci_devices if d.address == "0000:01:00.0")
    pools = {p.size_kib: p for p in next(n for n in topo.numa_nodes if n.id == 0).hugepages}
    assert nic.sriov_totalvfs in (0, 63) and nic.sriov_numvfs == 0  # never 10**30 or -5
    assert pools[2048].total == 0 and pools[2048].free == 0  # never 1,024 or -100


def test_a_number_past_anything_real_is_not_planned_with(tree: Path, tmp_path: Path) -> None:
    """Through the CLI: discover names the file, and the NIC's VFs are not 10**30."""
    plant(tree, f"{PF}/sriov_totalvfs", "1" + "0" * 30)
    done = bmslice("discover", "--host-root", tree, "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert any(f"{PF}/sriov_totalvfs: expected an integer" in w for w in found["warnings"]), found["warnings"]
    devices = {d["address"]: d for d in found["pci_devices"]}
    assert devices["0000:01:00.0"]["sriov_totalvfs"] == 0


NODES = "sys/devices/system/node"


@pytest.mark.parametrize(
    ("rel", "kind"),
    [
        (f"{NODES}/node1024", "node"),  # Linux has at most 1024 NUMA nodes
        (f"{NODES}/node" + "9" * 250, "node"),  # a NUMA node of a 250-digit id was discovered
        (f"{NODES}/node" + "1" * 21, "node"),
        ("sys/devices/system/cpu/cpu65536", "cpu"),  # past any NR_CPUS, where no `present` lists the CPUs
        (f"{PF}/virtfn65535", "virtfn"),  # TotalVFs is 16 bits: the last VF is 65534
        (f"{NODES}/node0/hugepages/hugepages-" + "9" * 30 + "kB", "page size"),  # a 10**30 kB page
    ],
    ids=["node 1024", "node of 250 digits", "node of 21 digits", "cpu 65536", "virtfn 65535", "page size"],
)
def test_numbered_entries_past_the_kernels_bound_are_ignored_with_the_entry_named(
    tree: Path, rel: str, kind: str
) -> None:
    (tree / rel).mkdir()
    if kind == "cpu":
        (tree / "sys/devices/system/cpu/present").unlink(missing_ok=True)
    if kind == "page size":
        for name in ("nr_hugepages", "free_hugepages"):
            (tree / rel / name).write_text("4\n")
    topo = read_host_tree(tree)
    named = [w for w in topo.warnings if rel.rsplit("/", 1)[0] in w and kind in w]
    assert named and "ignored" in named[0], topo.warnings
    assert [n.id for n in topo.numa_nodes] == [0, 1]
    assert all(p.size_kib in (2048, 1048576) for n in topo.numa_nodes for p in n.hugepages)


@pytest.mark.parametrize(("flags", "metric"), [("0003", "١٠"), ("0003", "1_0"), ("٣", "0"), ("0003", "1" + "0" * 30)])
def test_a_default_route_in_other_digits_is_one_error_naming_the_file(tree: Path, flags: str, metric: str) -> None:
    header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
    route = f"eno3\t00000000\t0100A8C0\t{flags}\t0\t0\t{metric}\t00000000\t0\t0\t0"
    (tree / "proc/net/route").write_text(f"{header}\n{route}\n")
    done = bmslice("plan", SERVER1 / "spec.yaml", "--host-root", tree)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "proc/net/route" in lines[0], done.stderr


def test_unknown_minus_one_stays_silent_where_the_kernel_writes_it(tree: Path) -> None:
    plant(tree, f"{PF}/numa_node", "-1")
    plant(tree, "sys/devices/system/cpu/cpu2/topology/physical_package_id", "-1")
    topo = read_host_tree(tree)
    assert not [w for w in topo.warnings if "expected an integer" in w], topo.warnings
    assert next(d for d in topo.pci_devices if d.address == "0000:01:00.0").numa_node is None


@pytest.mark.parametrize("mask", ["١", "0000000f,١", "f_f", "0x1", "ff,,1", ",", "ｆｆ"])
def test_cpu_masks_are_ascii_hex_words(mask: str) -> None:
    with pytest.raises(CpuListError, match="bad CPU mask"):
        CpuSet.parse_mask(mask)
    assert CpuSet.parse_mask("00000000,00000f0f\n").format() == "0-3,8-11"


def test_an_irq_mask_in_foreign_digits_is_not_read_as_cpus(tree: Path) -> None:
    irq = tree / "proc/irq/99"
    irq.mkdir(parents=True, exist_ok=True)
    (irq / "smp_affinity").write_text("١\n")
    from bmslice.verify.host_state import read_irq

    assert read_irq(FsRoot(tree), 99).affinity is None  # unknown, not CPU 0


@pytest.mark.parametrize(
    "schemata",
    ["L3:١=7f0\n", "L3:0=7_f0\n", "L3:0=٧f0\n", "MB:0=６0\n", "MB:0=1_00\n", "L3:0=0x7f0x\n"],
)
def test_resctrl_schemata_entries_in_other_digits_are_left_out(schemata: str) -> None:
    assert parse_schemata(schemata) == ((), ())
    assert parse_schemata("L3:0=7f0\nMB:1=60\n") == (((0, 0x7F0),), ((1, 60),))


@pytest.mark.parametrize("cell_id", ["١", "1_0", "+1", "1" + "0" * 30])
def test_libvirt_xml_numbers_are_ascii(cell_id: str) -> None:
    xml = (
        f"<capabilities><host><topology><cells num='1'><cell id='{cell_id}'/></cells></topology></host></capabilities>"
    )
    with pytest.raises(TopologyError, match="cell id is not an integer"):
        cell_ids(xml)
    assert cell_ids(xml.replace(f"id='{cell_id}'", "id='0x1'")) == [1]


def test_proc_entries_named_in_other_digits_are_no_processes(tmp_path: Path) -> None:
    """A directory proc/١٢ is not process 12: reading it as 12 would judge process 12 by another's files."""
    for name in ("١٢", "１２", "1_2"):
        (tmp_path / "proc" / name).mkdir(parents=True)
        (tmp_path / "proc" / name / "status").write_text("Name:\tevil\nCpus_allowed_list:\t0-3\n")
    real = tmp_path / "proc/12"
    real.mkdir()
    (real / "status").write_text("Name:\treal\nCpus_allowed_list:\t0\n")
    assert [(p.pid, p.comm) for p in read_processes(FsRoot(tmp_path))] == [(12, "real")]


def test_proc_fields_in_other_digits_are_unknown() -> None:
    fields = " ".join(["S"] + ["٠"] * 50)
    assert stat_flags(f"1 (qemu) {fields}") is None
    assert has_capability({"CapEff": "000001ff_ffffffff"}, "CapEff", 0) is None
    assert has_capability({"CapEff": "000001ffffffffff"}, "CapEff", 0) is True
    assert parse_interrupts("  CPU0 CPU١\n ٢٤: 5 ٧ PCI-MSI eth0\n 24: 5 7 PCI-MSI\n", CpuSet.of(0, 1)) == {0: 5}
    assert thread_role("CPU ١/KVM") == thread_role("IO iothread١") == ("emulator", 0)  # no vCPU 1, no IOThread 1
    assert thread_role("CPU 1/KVM") == ("vcpu", 1)


def test_host_config_names_a_foreign_digit_value_and_never_writes_it(tree: Path, tmp_path: Path) -> None:
    """host-config on a tree with a foreign-digit value: the files are written, the value named, never used."""
    plant(tree, f"{HUGE}/nr_hugepages", "٢٠٤٨")
    out = tmp_path / "out"
    done = bmslice("host-config", SERVER1 / "spec.yaml", "--host-root", tree, "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"{HUGE}/nr_hugepages: expected an integer, got '٢٠٤٨'" in done.stderr
    assert "٢" not in "".join(p.read_text() for p in out.rglob("*") if p.is_file())


def test_a_cpu_list_in_foreign_digits_is_named_not_read(tree: Path) -> None:
    """A node's cpulist in foreign digits: discovery names the file and never reads CPUs 0-11 from it."""
    plant(tree, "sys/devices/system/node/node0/cpulist", "٠-١١")
    done = bmslice("discover", "--host-root", tree, "--json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert any("node0/cpulist" in w and "not a number or range" in w for w in json.loads(done.stdout)["warnings"])


@pytest.mark.parametrize("port", ["ge-٠/٠/٩", "ge-０/０/９", "ge-0/0/" + "9" * 30, "ae٣"])
def test_the_lab_switch_reads_junos_ports_in_the_fleet_files_grammar(port: str) -> None:
    """The lab's switch parsed ports with `\\d`: Arabic-Indic or fullwidth digits made a port."""
    from bmslice.errors import LabError
    from bmslice.lab.switch import parse_junos_set

    assert parse_junos_set("set interfaces ge-0/0/9 description red\n", "f.set").ports
    with pytest.raises(LabError, match="not a switch port"):
        parse_junos_set(f"set interfaces {port} description red\n", "f.set")


HUGE_DIGITS = "9" * 5000  # past Python's 4,300-digit int() limit: a ValueError traceback before


def test_sizes_in_mounts_meminfo_and_caches_are_bounded_ascii() -> None:
    from bmslice.topology.caches import parse_cache_size
    from bmslice.topology.mounts import hugetlbfs_mounts

    line = "hugetlbfs /dev/hugepages{n} hugetlbfs rw,relatime,pagesize={size} 0 0\n"
    text = "".join(line.format(n=n, size=size) for n, size in enumerate(["2M", f"{HUGE_DIGITS}M", "٢M", "1_0M"]))
    assert hugetlbfs_mounts(text, 2048) == {2048: ("/dev/hugepages0",)}  # never at the default size either
    assert [parse_cache_size(s) for s in ("32768K", f"{HUGE_DIGITS}K", "３２K", "1" + "0" * 30)] == [
        32768,
        None,
        None,
        None,
    ]


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        ("proc/mounts", f"hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize={HUGE_DIGITS}M 0 0"),
        ("proc/meminfo", f"MemTotal: 67108864 kB\nHugepagesize:    {HUGE_DIGITS} kB"),
        ("sys/devices/system/cpu/cpu0/cache/index3/size", f"{HUGE_DIGITS}K"),
    ],
    ids=["mount pagesize", "meminfo Hugepagesize", "cache size"],
)
def test_preflight_reads_a_5000_digit_size_without_a_traceback(tree: Path, rel: str, text: str) -> None:
    path = tree / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if rel.endswith("cache/index3/size"):
        for name, value in (("level", "3"), ("type", "Unified"), ("shared_cpu_list", "0-23")):
            (path.parent / name).write_text(value + "\n")
    if rel == "proc/meminfo":  # the default page size is read for a mount that names none
        (tree / "proc/mounts").write_text("hugetlbfs /dev/hugepages hugetlbfs rw,relatime 0 0\n")
    path.write_text(text + "\n")
    done = bmslice("preflight", SERVER1 / "spec.yaml", "--host-root", tree)
    assert "Traceback" not in done.stderr and done.returncode in (0, 1), done.stderr
