"""The slices libvirt has defined on a host, read from libvirt's own files under the host root.

preflight, host-config, host-apply and audit judge a host through its files, with no libvirt
connection (a host tree works the same). libvirt keeps each persistent domain's definition in
`/etc/libvirt/qemu/<name>.xml`, and a slice's carries the plan it was applied with in its
bmslice metadata. Planning the spec around those plans keeps each slice where it runs, and
the devices it holds (a VF on vfio-pci) count as its own, not as a VF someone else uses: the
lab found `audit` refusing a host after a reboot, because the running slices' VFs looked taken.
"""

from __future__ import annotations

import json

from lxml import etree

from bmslice.errors import TopologyError
from bmslice.model.plan import VmPlan, vm_from_dict
from bmslice.render.domain_xml import from_xml
from bmslice.topology.fsroot import FsRoot

LIBVIRT_QEMU_DIR = "etc/libvirt/qemu"


def defined_slices(fs: FsRoot) -> list[VmPlan]:
    """The recorded plan of every domain libvirt defines here that bmslice applied."""
    out = []
    for name in fs.listdir(LIBVIRT_QEMU_DIR):
        if not name.endswith(".xml") or fs.is_dir(f"{LIBVIRT_QEMU_DIR}/{name}"):
            continue
        rel = f"{LIBVIRT_QEMU_DIR}/{name}"
        data = fs.read_bytes(rel)
        if data is None:
            continue
        try:
            raw = from_xml(data).plan_json
        except etree.XMLSyntaxError:
            continue  # not a definition libvirt would load either; not bmslice's to judge
        if raw is None:
            continue  # a domain bmslice did not apply
        try:
            out.append(vm_from_dict(json.loads(raw)))
        except (ValueError, KeyError, TypeError):
            raise TopologyError(
                f"{fs.display(rel)}: its bmslice metadata is unreadable; destroy and re-apply that slice"
            ) from None
    return out
