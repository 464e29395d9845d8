"""preflight, host-config, host-apply and audit plan around the slices libvirt defines (field truth).

The lab found it after a real reboot: the slices were running on their VFs (vfio-pci), and
`bmslice audit` refused the host ("enp65s0 has 1 VFs, 1 in use; 2 are needed ..."): it planned
the spec afresh, so the slice's own VF looked taken by someone else. libvirt keeps each
definition in /etc/libvirt/qemu/<name>.xml with bmslice's recorded plan in it; the host
commands now keep those slices where they are, as apply, verify and destroy do through libvirt.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bmslice.cli import host_cmds
from bmslice.errors import PlanError, TopologyError
from bmslice.model.spec import spec_from_data
from bmslice.plan.planner import make_plan
from bmslice.render.artifacts import render_plan
from bmslice.topology.fsroot import FsRoot
from bmslice.topology.sysfs import read_host_tree
from bmslice.verify.defined_slices import defined_slices
from test_sriov import two_socket_sriov
from treebuilder import vf_specs, write_tree

SPEC = {
    "host": {"reserved_cores_per_node": 1},
    "vms": [{"name": "vf-vm", "vcpus": 2, "memory": "2GiB", "nics": [{"sriov": {"pf": "ens1f0", "vlan": 10}}]}],
}


def _trees(tmp_path: Path) -> tuple[Path, Path]:
    """The host before apply, and after: ens1f0 has 1 VF, held by the slice (vfio-pci), defined in libvirt."""
    before = write_tree(two_socket_sriov(), tmp_path / "before")
    plan = make_plan(read_host_tree(before), spec_from_data(SPEC, "spec.yaml"))
    host = two_socket_sriov()
    pf = next(p for p in host.pci if p.interfaces == ("ens1f0",))
    [vf] = vf_specs(replace(pf, sriov_numvfs=1), 1, 60)
    pci = tuple(replace(p, sriov_numvfs=1) if p is pf else p for p in host.pci)
    after = write_tree(replace(host, pci=(*pci, replace(vf, driver="vfio-pci"))), tmp_path / "after")
    assert plan.vms[0].devices[0].address == vf.address
    qemu = after / "etc/libvirt/qemu"
    qemu.mkdir(parents=True)
    (qemu / "vf-vm.xml").write_text(render_plan(plan)["vf-vm.xml"])
    (qemu / "other.xml").write_text("<domain type='kvm'><name>other</name></domain>")  # not bmslice's
    return before, after


def test_the_host_commands_keep_the_defined_slices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _before, after = _trees(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    [kept] = defined_slices(FsRoot(after))
    assert kept.name == "vf-vm" and kept.devices[0].address == "0000:18:10.0"
    for command in ("audit", "preflight", "host-config"):
        extra = ["--out", str(tmp_path / "out")] if command == "host-config" else []
        code = host_cmds.main([command, str(spec), "--host-root", str(after), *extra])
        err = capsys.readouterr().err
        assert "while VFs are in use" not in err and code in (0, 1), (command, err)
    # without libvirt's definition, the slice's own VF looks taken: the refusal the lab met
    (after / "etc/libvirt/qemu/vf-vm.xml").unlink()
    assert host_cmds.main(["audit", str(spec), "--host-root", str(after)]) == 2
    assert "while VFs are in use" in capsys.readouterr().err


def test_unreadable_metadata_is_one_error_line(tmp_path: Path) -> None:
    _before, after = _trees(tmp_path)
    xml = after / "etc/libvirt/qemu/vf-vm.xml"
    text = xml.read_text()
    start = text.index(">", text.index("<bmslice:slice")) + 1
    xml.write_text(text[:start] + "{not json" + text[text.index("</bmslice:slice>") :])
    with pytest.raises(TopologyError, match=r"vf-vm\.xml: its bmslice metadata is unreadable"):
        defined_slices(FsRoot(after))
    xml.write_text("<domain")  # not XML at all: libvirt would not load it either, it is left out
    assert defined_slices(FsRoot(after)) == []


def test_no_libvirt_directory_means_no_slices(tmp_path: Path) -> None:
    assert defined_slices(FsRoot(write_tree(two_socket_sriov(), tmp_path / "host"))) == []


def test_metrics_keep_the_running_slices_on_their_vfs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the boot lab: after a reboot the exporter's unit failed at every start ("enp65s0 has
    1 VFs, 1 in use; 2 are needed"): it planned the spec afresh, so the running slice's own VF
    looked taken. It now plans around the slices libvirt runs, as verify does."""
    from bmslice.cli import metrics_cmd
    from bmslice.metrics.host import WatchedHost
    from metrics_fixtures import node_xml, samples, value

    _before, after = _trees(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    planned = make_plan(read_host_tree(_before), spec_from_data(SPEC, "spec.yaml"))
    uri = f"test://{node_xml(tmp_path / 'node.xml', list(planned.vms))}"
    (after / "etc/libvirt/qemu/vf-vm.xml").unlink()  # libvirt alone says what runs (a live host's libvirtd)
    with pytest.raises(PlanError, match="while VFs are in use"):  # the fresh plan the exporter made before
        make_plan(read_host_tree(after), spec_from_data(SPEC, "spec.yaml"))

    host = WatchedHost(spec_from_data(SPEC, str(spec)), str(spec), uri, after)
    assert host.start_plan.vms[0].devices[0].address == planned.vms[0].devices[0].address
    assert host.start_plan.host.reserved_cpus == planned.host.reserved_cpus
    code = metrics_cmd.main(["metrics", str(spec), "--connect", uri, "--host-root", str(after)])
    out, err = capsys.readouterr()
    assert "while VFs are in use" not in err, err
    found = samples(out)
    assert value(found, "bmslice_slice_state", slice="vf-vm", state="running") == 1, out
    assert value(found, "bmslice_scrape_collector_success", collector="slices") == 1, (code, err)
