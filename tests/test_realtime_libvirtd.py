# ruff: noqa: F811 - test parameters take the names of the fixtures imported from libvirt_fixtures
"""A realtime slice against this machine's real libvirtd (QEMU driver), as far as it can go here.

The QEMU driver validates the realtime XML at define (hugepages, locked memory, hard_limit,
vcpusched, PMU) and writes it back; read through bmslice's model it equals the plan, so
`apply` and `verify` see no difference. Starting it is the lab's part
(tests/lab/test_6_realtime.py): here a realtime slice cannot run (2 CPUs; no
CAP_SYS_RESOURCE for locked memory; RT group scheduling on cgroup v1), as docs/realtime.md
says. The plan is made on a host tree of 4 cores (the slice needs two CPUs besides the
host's), which defining does not mind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bmslice.model.spec import load_spec
from bmslice.plan.planner import make_plan
from bmslice.render.domain_model import domain_from_plan
from bmslice.render.domain_xml import from_xml, to_xml
from bmslice.topology.sysfs import read_host_tree
from bmslice.verify.compare import compare_definition
from libvirt_fixtures import (  # the fixtures are imported here; pytest finds them by name
    Slices,
    host_section,
    host_tree,
    qemu_conn,  # noqa: F401
    qemu_slices,  # noqa: F401
    vm_entry,
    write_spec,
)


@pytest.mark.libvirtd
def test_the_qemu_driver_accepts_a_realtime_slice_and_reads_back_the_plan(qemu_slices: Slices, tmp_path: Path) -> None:
    import libvirt

    tree = host_tree(tmp_path / "host", cores=4, threads=2)
    name = qemu_slices.name("rt")
    realtime = {"housekeeping_vcpus": 2, "priority": 5}
    vm = vm_entry(name, vcpus=4, memory="128MiB", hugepages="2M", realtime=realtime)
    spec = write_spec(tmp_path / "spec.yaml", [vm], host_section(domain_type="qemu"))
    plan = make_plan(read_host_tree(tree), load_spec(spec), origin=str(spec)).vm(name)
    desired = domain_from_plan(plan)

    dom: Any = qemu_slices.conn.defineXMLFlags(to_xml(desired), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    written = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert written.count("<vcpusched ") == 2  # libvirt's own form: one element per vCPU
    assert "<locked/>" in written and "<nosharepages/>" in written and "<pmu state='off'/>" in written
    back = from_xml(written)
    assert (back.vcpusched, back.hard_limit_kib) == (desired.vcpusched, (128 + 2048) * 1024)
    assert compare_definition(name, desired, written) == []
    dom.undefine()
    assert qemu_slices.domains() == []
