"""A PCI address is domain:bus:slot.function with a 5-bit slot (issue 19, classes 2 and 8).

libvirt's reader already held the slot to 0x1f; the spec's and the host tree's did not, so
a tree listing a device 0000:01:20.0 (or a spec naming one) rendered a domain whose hostdev
`<address slot="0x20">` libvirt's own schema refuses (virt-xml-validate: "Element domain
failed to validate content"). The one address grammar now refuses it where it is read: a
tree entry that is no address is one `error:` line naming the directory, never skipped in
silence (the NIC it held then went missing from the plan without a word).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bmslice.model.topology import canonical_pci_address
from cli_errors import one_error

REPO = Path(__file__).resolve().parents[1]
SERVER1 = REPO / "examples/server1"
PCI = "sys/bus/pci/devices"


def bmslice(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "bmslice.cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)


@pytest.mark.parametrize("text", ["0000:01:20.0", "0000:01:ff.0", "01:3f.1", "0000:01:00.8", "0000:01:00.0\n"])
def test_addresses_past_a_5_bit_slot_or_3_bit_function_are_none(text: str) -> None:
    assert canonical_pci_address(text) is None
    assert canonical_pci_address("0000:01:1f.7") == "0000:01:1f.7"
    assert canonical_pci_address("10000:3a:00.0") == "10000:3a:00.0"  # VMD domains are wider than 16 bits


@pytest.mark.parametrize("name", ["0000:01:20.0", "0000:01:00.0 ", "٠٠٠٠:01:00.0", "0000:01:00.0\ninstall x"])
def test_a_tree_entry_that_is_no_pci_address_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    root = tmp_path / "host"
    shutil.copytree(SERVER1 / "host", root, symlinks=True)
    os.symlink("../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0", root / PCI / name)
    out = tmp_path / "out"
    for argv in (
        ["discover", "--host-root", root],
        ["render", SERVER1 / "spec.yaml", "--host-root", root, "--out", out],
    ):
        one_error(bmslice(*argv), f"{PCI}: ", "is not a PCI address")
    assert not out.exists()


def test_a_spec_naming_slot_0x20_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text((SERVER1 / "spec.yaml").read_text().replace("passthrough: eno1", "passthrough: '0000:01:20.0'", 1))
    assert "0000:01:20.0" in spec.read_text()
    refusal = bmslice("render", spec, "--host-root", SERVER1 / "host", "--out", tmp_path / "out")
    one_error(refusal, "0000:01:20.0", "is neither an interface name nor a PCI address")
    assert not (tmp_path / "out").exists()
