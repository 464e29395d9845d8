# ruff: noqa: F811 - test parameters take the names of the fixtures imported from libvirt_fixtures
"""Slices whose bmslice metadata does not read back, on the real libvirtd (issue 19, classes 3 and 4).

A domain carrying bmslice metadata that is truncated, not JSON, XML where JSON belongs, of
the wrong types, of another bmslice version, or holding hostile names is defined by hand
(each test's own `bmslice-test-<random>` prefix, removed afterwards). Then:

- verify, status, apply and destroy of OTHER specs go on, with one line about it;
- apply places new VMs around the CPUs libvirt says it is pinned to, and refuses, naming it,
  when nothing else is left; apply of its own spec refuses with the way out;
- `destroy SPEC --vm NAME` removes it from what libvirt says, deleting only volumes that carry
  bmslice's mark and keeping the others.

The machine has 2 CPUs (the host keeps CPU 0), so the cheap per-variant tests read a larger
host from a sysfs tree (--host-root) and never start a guest; the end-to-end test starts real
guests on CPU 1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from bmslice.cpuset import CpuSet
from bmslice.render.domain_model import BMSLICE_NS
from libvirt_fixtures import (  # the fixtures are imported here; pytest finds them by name
    QEMU_URI,
    Cli,
    Run,
    Slices,
    bmslice_cli,  # noqa: F401
    bmslice_lock_dir,  # noqa: F401
    host_tree,
    one_error,
    qemu_conn,  # noqa: F401
    qemu_slices,  # noqa: F401
    steps,
    vm_entry,
    with_disk,
    write_spec,
)

libvirtd = pytest.mark.libvirtd
IMAGES = Path("/var/lib/libvirt/images")
HOSTDEV, VF = "0000:81:00.0", "0000:81:10.1"  # no such devices here: libvirt defines, never starts, them


def record(name: str, cpu: int = 1, **change: Any) -> dict[str, Any]:
    """The record apply would write for a 1-vCPU slice on `cpu` (emulator on the host's CPU 0)."""
    return {
        "name": name,
        "numa_nodes": [0],
        "vcpu_pins": [cpu],
        "emulator_cpus": [0],
        "iothread_cpus": [0],
        "iothreads": 1,
        "emulator_policy": "host",
        "cores": [[cpu]],
        "guest_topology": {"sockets": 1, "dies": 1, "cores": 1, "threads": 1},
        "memory_mib": 128,
        "hugepage_kib": None,
        "devices": [],
        "disable_cpu_features": [],
        "domain_type": "qemu",
        "warnings": [],
        **change,
    }


def element(text: str | None = None, namespace: str = BMSLICE_NS, children: int = 0) -> str:
    el = etree.Element(f"{{{namespace}}}slice", nsmap={"bmslice": namespace})
    el.text = text
    for i in range(children):
        etree.SubElement(el, f"{{{namespace}}}vcpus").text = str(i + 2)
    return etree.tostring(el, encoding="unicode")


# (id, the bmslice metadata element for a domain `name`, what the one line says about it)
VARIANTS = {
    "truncated": (lambda n: element(json.dumps(record(n))[:90]), "not JSON"),
    "not-json": (lambda n: element("slice of Red, 1 vCPU <on CPU 1> & more"), "not JSON"),
    "xml-not-json": (lambda n: element(children=2), "XML elements where bmslice writes the plan's JSON"),
    "string-for-int": (
        lambda n: element(json.dumps(record(n, vcpu_pins="1"))),
        "vcpu_pins: Expected `array`",
    ),
    "list-for-dict": (
        lambda n: element(json.dumps(record(n, guest_topology=[1, 1, 1]))),
        "guest_topology: Expected `object`",
    ),
    "other-version": (
        lambda n: element(json.dumps(record(n)), namespace="https://bmslice.dev/xmlns/slice/2"),
        "written by another bmslice version",
    ),
    "name-newline": (
        lambda n: element(json.dumps(record(n + "\nGRUB_CMDLINE_LINUX=x"))),
        "\\nGRUB_CMDLINE_LINUX=x' is not a valid domain name",
    ),
    "name-jinja": (lambda n: element(json.dumps(record("{{ lookup('pipe','id') }}"))), "is not a valid domain name"),
    "name-too-long": (lambda n: element(json.dumps(record("r" * 300))), "(300 characters) is not a valid domain name"),
    "another-slice": (lambda n: element(json.dumps(record("someone-else"))), "records the plan of someone-else"),
    "huge": (
        lambda n: element(json.dumps(record(n, warnings=["w" * 1000] * 1100))),
        "more than any plan bmslice records",
    ),
    "duplicated": (  # libvirt keeps one element per namespace: a second one comes in another version's
        lambda n: (
            element(json.dumps(record(n)))
            + element(json.dumps(record(n, vcpu_pins=[2], cores=[[2]])), namespace="https://bmslice.dev/xmlns/slice/2")
        ),
        "2 bmslice metadata elements where bmslice writes one",
    ),
    "cpus-beyond-host": (
        lambda n: element(json.dumps(record(n, vcpu_pins=[4095], cores=[[4095]]))),
        "its plan names CPUs 4095, which this host does not have online",
    ),
    "memory-beyond-node": (
        lambda n: element(json.dumps(record(n, memory_mib=1 << 30))),
        "its plan puts 1073741824 MiB on NUMA node 0, which has 16384 MiB",
    ),
    "node-absent": (
        lambda n: element(json.dumps(record(n, numa_nodes=[7]))),
        "its plan puts memory on NUMA node 7, which this host does not have",
    ),
    "negative-cpu": (lambda n: element(json.dumps(record(n, vcpu_pins=[-1], cores=[[-1]]))), "vcpu_pins[0]"),
    "empty": (lambda n: element(""), "not JSON"),
    "mac-multicast": (
        lambda n: element(json.dumps(record(n, devices=[{**vf_device(), "mac": "01:00:5e:00:00:01"}]))),
        "devices[0].mac: 01:00:5e:00:00:01 is a multicast or broadcast MAC",
    ),
}


def vf_device() -> dict[str, Any]:
    return {
        "address": VF,
        "type": "vf",
        "numa_node": 0,
        "interface": "eno9",
        "driver": None,
        "pf": "0000:81:00.1",
        "vf_index": 0,
        "vlan": None,
        "mac": "02:00:00:00:00:09",
        "trust": False,
        "spoofchk": True,
        "created_vfs": False,
    }


def domain_xml(name: str, metadata: str, cpu: int = 1, disks: tuple[str, ...] = ()) -> str:
    """A slice as libvirt keeps it after someone edited its bmslice metadata: pinned, with a
    hostdev and a VF interface, its disks (none of them started: these devices do not exist)."""
    disk_xml = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{path}'/>"
        f"<target dev='vd{chr(ord('a') + i)}' bus='virtio'/></disk>"
        for i, path in enumerate(disks)
    )
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <metadata>{metadata}</metadata>
  <memory unit='MiB'>128</memory>
  <vcpu placement='static'>1</vcpu>
  <iothreads>1</iothreads>
  <cputune><vcpupin vcpu='0' cpuset='{cpu}'/><emulatorpin cpuset='{cpu}'/><iothreadpin iothread='1' cpuset='{cpu}'/></cputune>
  <numatune><memory mode='strict' nodeset='0'/></numatune>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    {disk_xml}
    <hostdev mode='subsystem' type='pci' managed='yes'><source>
      <address domain='0x0000' bus='0x81' slot='0x00' function='0x0'/></source></hostdev>
    <interface type='hostdev' managed='yes'><mac address='02:00:00:00:00:09'/><source>
      <address type='pci' domain='0x0000' bus='0x81' slot='0x10' function='0x1'/></source></interface>
  </devices>
</domain>"""


def unmarked_volume(slices: Slices, name: str) -> str:
    """A qcow2 volume libvirt made (no bmslice mark) under `name` in the default pool."""
    pool = slices.conn.storagePoolLookupByName("default")
    xml = (
        f"<volume><name>{name}</name><capacity unit='MiB'>1</capacity><target><format type='qcow2'/></target></volume>"
    )
    vol = pool.createXML(xml, 0)
    return str(vol.path())


def lines_naming(run: Run, name: str) -> list[str]:
    return [line for line in (run.stdout + run.stderr).splitlines() if name in line]


def no_traceback(run: Run) -> None:
    assert "Traceback" not in run.stderr, run


def define_ghost(slices: Slices, tmp_path: Path, metadata: str) -> tuple[str, str, Path, Path]:
    """The ghost, pinned to CPU 1 of a 4-CPU tree, naming an unmarked volume under its disk name."""
    ghost, other = slices.name("ghost"), slices.name("other")
    disk = unmarked_volume(slices, f"{ghost}.qcow2")
    slices.conn.defineXML(domain_xml(ghost, metadata, cpu=1, disks=(disk,)))
    host_tree(tmp_path / "host", cores=4)  # CPUs 0-3: the host keeps 0, the ghost is pinned to 1
    own = write_spec(tmp_path / "own.yaml", [with_disk(vm_entry(ghost)), vm_entry(other)])
    return ghost, disk, own, write_spec(tmp_path / "other.yaml", [vm_entry(other)])


@libvirtd
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_corrupt_slice_is_reported_once_refused_in_its_spec_and_destroyed_by_name(
    variant: str, qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    make, says = VARIANTS[variant]
    ghost, disk, own, others = define_ghost(qemu_slices, tmp_path, make(qemu_slices.name("ghost")))
    tree = tmp_path / "host"

    # another spec: verify goes on, with one line about the ghost
    run = bmslice_cli("verify", others, "--host-root", tree)
    no_traceback(run)
    assert run.returncode == 1 and f"{qemu_slices.name('other')} is not defined" in run.lines, run  # its own drift
    (line,) = lines_naming(run, ghost)
    assert line.startswith(f"note: {ghost}: its bmslice metadata is unreadable (") and says in line, run
    assert f"CPUs 1, PCI devices {HOSTDEV}, {VF}" in line

    # its own spec: apply refuses with the way out
    error = one_error(bmslice_cli("apply", own, "--host-root", tree))
    assert error.startswith(f"error: {ghost}: its bmslice metadata is unreadable (") and says in error, error
    assert f"`bmslice destroy {own} --vm {ghost}` removes it" in error

    # destroy by name: the domain goes, the volume it names without bmslice's mark stays
    run = bmslice_cli("destroy", own, "--vm", ghost, "--host-root", tree)
    no_traceback(run)
    assert run.returncode == 0, run
    assert f"undefine {ghost}" in steps(run) and f"stop {ghost}" not in steps(run), run
    assert f"keep volume {disk}: bmslice did not create it (it carries no bmslice mark)" in steps(run), run
    assert any(f"{HOSTDEV} stays on its current driver" in s for s in steps(run)), run
    assert qemu_slices.domains() == [] and disk in qemu_slices.volumes()


@libvirtd
def test_apply_goes_around_a_corrupt_slice_and_names_it_when_nothing_is_left(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    from bmslice.apply.context import load_context
    from bmslice.model.spec import load_spec

    ghost, _disk, own, others = define_ghost(qemu_slices, tmp_path, VARIANTS["truncated"][0](qemu_slices.name("ghost")))
    tree, other = tmp_path / "host", qemu_slices.name("other")
    run = bmslice_cli("apply", others, "--host-root", tree, "--dry-run")
    no_traceback(run)
    assert run.returncode == 0 and f"would define {other}" in run.lines, run
    (line,) = lines_naming(run, ghost)
    assert line.startswith(f"warning: {ghost}: its bmslice metadata is unreadable (not JSON"), run

    # planned from scratch the new slice would take CPU 1; the ghost holds it
    ctx = load_context(load_spec(others), str(others), QEMU_URI, qemu_slices.conn, tree, allow_move=False)
    assert ghost in ctx.held and ghost not in ctx.recorded and ctx.held[ghost].cpus == CpuSet.of(1)
    assert ctx.plan.vm(other).owned_cpus == CpuSet.of(2)
    three = write_spec(tmp_path / "three.yaml", [vm_entry(qemu_slices.name(f"n{i}")) for i in range(3)])
    error = one_error(bmslice_cli("apply", three, "--host-root", tree, "--dry-run"))
    assert "most free on any node is 2" in error or "only 2 are free" in error, error
    assert f"{ghost} (CPUs 1, PCI devices {HOSTDEV}, {VF})" in error
    run = bmslice_cli("status", own, "--host-root", tree)  # the spec naming it: its row says so
    no_traceback(run)
    assert run.returncode == 1 and re.search(rf"{re.escape(ghost)}\s.*metadata unreadable", run.stdout), run


@libvirtd
def test_destroy_refuses_a_vm_the_spec_does_not_name(bmslice_cli: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", [vm_entry("bmslice-test-only")])
    error = one_error(bmslice_cli("destroy", spec, "--vm", "bmslice-test-only\nx"))
    assert "--vm 'bmslice-test-only\\nx': the spec names no such VM" in error


@libvirtd
def test_other_specs_run_for_real_beside_a_corrupt_slice(qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path) -> None:
    """Real guests: a slice applied by bmslice, hand-edited (metadata cut short, pinned elsewhere),
    and another spec applied, checked and destroyed beside it; then a running slice whose
    metadata is broken live: the next apply does not take its CPU, destroy stops and removes it."""
    import libvirt

    conn = qemu_slices.conn
    x, y = qemu_slices.name("x"), qemu_slices.name("y")
    mine = write_spec(tmp_path / "mine.yaml", [with_disk(vm_entry(x))])
    others = write_spec(tmp_path / "others.yaml", [vm_entry(y)])
    assert bmslice_cli("apply", mine).returncode == 0  # X runs on CPU 1 with its marked disk and seed

    # Hand work on X: stopped, its metadata cut short, moved onto the host's CPU 0, its disk
    # replaced by a volume bmslice did not make.
    dom = conn.lookupByName(x)
    dom.destroy()
    root = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    meta = root.find(f"metadata/{{{BMSLICE_NS}}}slice")
    assert meta is not None and meta.text
    meta.text = meta.text[: len(meta.text) // 3]
    for pin in root.iterfind("cputune/*"):
        pin.set("cpuset", "0")
    conn.defineXML(etree.tostring(root, encoding="unicode"))
    conn.storageVolLookupByPath(str(IMAGES / f"{x}.qcow2")).delete(0)
    disk = unmarked_volume(qemu_slices, f"{x}.qcow2")

    run = bmslice_cli("apply", others)
    assert run.returncode == 0 and f"start {y}" in steps(run), run
    (line,) = lines_naming(run, x)
    assert line.startswith(f"warning: {x}: its bmslice metadata is unreadable (not JSON") and "CPUs 0" in line
    for command in ("status", "verify"):
        run = bmslice_cli(command, others)
        assert run.returncode == 0, run  # Y matches its plan; X is a note, not drift
        (line,) = lines_naming(run, x)
        assert line.startswith(f"note: {x}: its bmslice metadata is unreadable")
    error = one_error(bmslice_cli("apply", mine))
    assert f"`bmslice destroy {mine} --vm {x}` removes it" in error

    run = bmslice_cli("destroy", mine, "--vm", x)
    assert run.returncode == 0, run
    assert f"undefine {x}" in steps(run) and f"stop {x}" not in steps(run), run  # shut off: nothing to stop
    assert f"delete volume {IMAGES / f'{x}-seed.iso'}" in steps(run)  # bmslice's mark: deleted
    assert any(s.startswith(f"keep volume {disk}: bmslice did not create it") for s in steps(run)), run
    assert qemu_slices.domains() == [y] and qemu_slices.volumes() == [disk]

    # Y's metadata broken while it runs: libvirt's live pins hold its CPU 1 against a new slice.
    ydom = conn.lookupByName(y)
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
    ydom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<slice>[1, 2]</slice>", "bmslice", BMSLICE_NS, flags)
    newcomer = write_spec(tmp_path / "newcomer.yaml", [vm_entry(qemu_slices.name("z"))])
    error = one_error(bmslice_cli("apply", newcomer, "--dry-run"))
    assert f"{y} (CPUs 0-1" in error and "whose bmslice metadata is unreadable" in error, error
    run = bmslice_cli("destroy", others)
    assert run.returncode == 0, run
    assert steps(run)[:2] == [f"stop {y}", f"undefine {y}"], run
    assert qemu_slices.domains() == [] and qemu_slices.processes() == []


def without_devices(xml: str) -> str:
    """The slice with no hostdev or VF, so that libvirt can start it here."""
    return re.sub(r"<hostdev.*?</hostdev>|<interface.*?</interface>", "", xml, flags=re.S)


@libvirtd
@pytest.mark.parametrize("how", ["transient", "paused"])
def test_a_transient_or_paused_corrupt_slice_is_destroyed_by_name(
    how: str, qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path
) -> None:
    """A slice started with `virsh create` (never defined) or paused, its metadata cut short:
    the others go on, and destroy --vm stops it; a transient one is gone once stopped."""
    ghost, other = qemu_slices.name("ghost"), qemu_slices.name("other")
    xml = without_devices(domain_xml(ghost, VARIANTS["truncated"][0](ghost)))
    if how == "transient":
        qemu_slices.conn.createXML(xml, 0)
    else:
        dom = qemu_slices.conn.defineXML(xml)
        dom.create()
        dom.suspend()
    tree = host_tree(tmp_path / "host", cores=4)
    own = write_spec(tmp_path / "own.yaml", [vm_entry(ghost), vm_entry(other)])
    others = write_spec(tmp_path / "other.yaml", [vm_entry(other)])
    for command in ("verify", "status"):
        run = bmslice_cli(command, others, "--host-root", tree)
        no_traceback(run)
        assert run.returncode == 1, run  # `other` is not defined: its own drift
        (line,) = lines_naming(run, ghost)
        assert line.startswith(f"note: {ghost}: its bmslice metadata is unreadable (not JSON") and "CPUs 1" in line

    run = bmslice_cli("destroy", own, "--vm", ghost, "--host-root", tree)
    no_traceback(run)
    assert run.returncode == 0, run
    assert steps(run)[0] == f"stop {ghost}", run
    if how == "transient":
        assert f"undefine {ghost}" not in steps(run), run
        assert f"{ghost} was transient (never defined): stopping it removed it" in steps(run), run
    else:
        assert f"undefine {ghost}" in steps(run), run
    assert qemu_slices.domains() == [] and qemu_slices.processes() == []


@libvirtd
@pytest.mark.parametrize("shared", ["cpu", "memory"])
def test_two_readable_records_of_the_same_cpu_hold_the_second_and_the_rest_goes_on(
    qemu_slices: Slices, bmslice_cli: Cli, tmp_path: Path, shared: str
) -> None:
    """Each record reads back, but a hand edit gave both slices CPU 1 (or 10 GiB each of a 16 GiB
    node): the planner cannot keep both, so the second (by name) is held and reported; other
    specs plan around it."""
    first, second, other = qemu_slices.name("a"), qemu_slices.name("b"), qemu_slices.name("other")
    for cpu, name in enumerate((first, second), start=1):
        change = {"vcpu_pins": [cpu], "cores": [[cpu]], "memory_mib": 10240} if shared == "memory" else {}
        qemu_slices.conn.defineXML(domain_xml(name, element(json.dumps(record(name, **change))), cpu=cpu))
    tree = host_tree(tmp_path / "host", cores=4)
    others = write_spec(tmp_path / "other.yaml", [vm_entry(other)])
    run = bmslice_cli("apply", others, "--host-root", tree, "--dry-run")
    no_traceback(run)
    assert run.returncode == 0 and f"would define {other}" in run.lines, run
    (line,) = lines_naming(run, f"{second}:")
    says = {
        "cpu": f"its plan names CPUs 1, which the plan of {first} names too",
        "memory": "its plan puts 10240 MiB on NUMA node 0, which has 16384 MiB (10240 MiB of it in other slices' plans)",
    }
    assert says[shared] in line, run
    run = bmslice_cli("verify", others, "--host-root", tree)
    no_traceback(run)
    assert run.returncode == 1 and f"{other} is not defined" in run.lines, run
    both = write_spec(tmp_path / "both.yaml", [vm_entry(first), vm_entry(second)])
    run = bmslice_cli("destroy", both, "--host-root", tree)
    no_traceback(run)
    assert run.returncode == 0 and {f"undefine {first}", f"undefine {second}"} <= set(steps(run)), run
    assert qemu_slices.domains() == []
