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
