"""libvirt's own validator on every domain bmslice renders: `virt-xml-validate FILE domain`.

tests/schema.py validates with the same RelaxNG schemas through lxml; this runs the tool an
operator would run (libvirt-clients), on every golden domain file and on what `bmslice
render` writes for the examples, so a schema or tool difference shows the day it appears.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests/golden"


def _validator() -> str:
    tool = shutil.which("virt-xml-validate")
    assert tool is not None, "virt-xml-validate is missing: install libvirt-clients (scripts/setup-host.sh does)"
    return tool


def _is_domain(path: Path) -> bool:
    try:
        return etree.parse(str(path)).getroot().tag == "domain"
    except etree.XMLSyntaxError:
        return False


GOLDEN_DOMAINS = sorted(p for p in GOLDEN.rglob("*.xml") if _is_domain(p))


def _validate(path: Path) -> None:
    done = subprocess.run([_validator(), str(path), "domain"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{path}: {done.stdout}{done.stderr}"


def test_there_are_golden_domains_to_validate() -> None:
    names = {p.parent.name for p in GOLDEN_DOMAINS}
    assert {"server1", "epyc1", "skx1"} <= names, names


@pytest.mark.parametrize("path", GOLDEN_DOMAINS, ids=lambda p: str(p.relative_to(GOLDEN)))
def test_golden_domain_xml_passes_virt_xml_validate(path: Path) -> None:
    _validate(path)


@pytest.mark.parametrize(
    ("spec", "host"),
    [
        ("examples/server1/spec.yaml", "examples/server1/host"),
        ("tests/data/realtime/server1-spec.yaml", "examples/server1/host"),
        ("tests/data/multinode/server1-spec.yaml", "examples/server1/host"),
        ("tests/data/server1-kernel4.15-vfs.yaml", "tests/data/trees/server1-kernel4.15"),
    ],
)
def test_rendered_examples_pass_virt_xml_validate(tmp_path: Path, spec: str, host: str) -> None:
    out = tmp_path / "out"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bmslice.cli.main",
            "render",
            str(ROOT / spec),
            "--host-root",
            str(ROOT / host),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    rendered = sorted(out.glob("*.xml"))
    assert rendered
    for path in rendered:
        _validate(path)


# Odd but valid names and the option combinations that change the XML most: a realtime guest over
# two nodes with a passed-through NIC and a VF whose address is known only at apply time, no or 64
# IOThreads, the emulator on the host's CPUs, 1 GiB or 2 MiB pages.
ODD_VMS = [
    {
        "name": "A.b+c_d-e",
        "vcpus": 4,
        "memory": "4GiB",
        "numa_nodes": 2,
        "hugepages": "1G",
        "iothreads": 0,
        "realtime": {"housekeeping_vcpus": 2, "priority": 1},
        "nics": [{"passthrough": "eno1"}, {"sriov": {"pf": "eno2", "vlan": 4094}}],
    },
    {
        "name": "9" + "x" * 63,
        "vcpus": 4,
        "memory": "4GiB",
        "emulator": "host",
        "iothreads": 64,
        "hugepages": "2M",
        "nics": [{"sriov": {"pf": "eno2"}}, {"sriov": {"pf": "eno2", "vlan": 1}}],
    },
    {
        "name": "a-",
        "vcpus": 4,
        "memory": "1GiB",
        "disable_cpu_features": ["arch-capabilities"],
        "realtime": {"housekeeping_vcpus": 2, "priority": 99},
        "hugepages": "2M",
    },
]


@pytest.mark.parametrize("vm", ODD_VMS, ids=lambda vm: str(vm["name"])[:12])
def test_odd_names_and_combinations_render_what_libvirt_accepts(tmp_path: Path, vm: dict[str, object]) -> None:
    """virt-xml-validate, then `virsh define` on libvirt's test driver: the schema and libvirt's own parser."""
    import yaml

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"host": {"reserved_cores_per_node": 1}, "vms": [vm]}))
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "bmslice.cli.main",
        "render",
        str(spec),
        "--host-root",
        str(ROOT / "examples/server1/host"),
    ]
    done = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("*.xml")
    _validate(path)
    virsh = shutil.which("virsh")
    assert virsh is not None, "virsh is missing: install libvirt-clients"
    defined = subprocess.run(
        [virsh, "-c", "test:///default", "define", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert defined.returncode == 0 and f"Domain '{vm['name']}' defined" in defined.stdout, defined
