"""A VM shape asked of `bmslice capacity --vm VCPUS:MEMORY[:NICS]`: what one more VM would take.

NICS is a comma-separated list of NIC entries: `pt` (a whole NIC, any the host may pass
through), `pt=NAME` (that one), `vf` (a VF of any SR-IOV NIC the host may use) or
`vf=NAME` (a VF of that PF; `vf=NAME/NAME` names several, the planner prefers a local one).
The whole value must match, as every bmslice validator does.

>>> parse_vm_shape("8:8GiB:pt,vf=eno2")
VmShape(label='8:8GiB:pt,vf=eno2', vcpus=8, memory_mib=8192, nics=(ShapeNic(kind='pt', names=()), \
ShapeNic(kind='vf', names=('eno2',))))
>>> parse_vm_shape("4:4GiB").nics
()
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bmslice.errors import SpecError
from bmslice.model.fields import device_ref
from bmslice.model.sizes import parse_size_mib
from bmslice.model.spec import MAX_VFS
from bmslice.safe_text import shown

MAX_SHAPE_VCPUS = 4096  # as a spec's vcpus
_NAME = r"[A-Za-z0-9_.@:-]+"
_NIC = rf"(?:pt|vf)(?:={_NAME}(?:/{_NAME})*)?"
_SHAPE_RE = re.compile(rf"([0-9]{{1,4}}):([0-9][0-9.]*[ A-Za-z]{{0,4}})(?::({_NIC}(?:,{_NIC})*))?")

NicKind = Literal["pt", "vf"]


@dataclass(frozen=True)
class ShapeNic:
    kind: NicKind  # "pt": a whole NIC passed through; "vf": an SR-IOV VF
    names: tuple[str, ...] = ()  # interface names or PCI addresses it may come from; (): any the host may use


@dataclass(frozen=True)
class VmShape:
    label: str  # as the user wrote it, for reports
    vcpus: int
    memory_mib: int
    nics: tuple[ShapeNic, ...] = ()


def parse_vm_shape(text: str) -> VmShape:
    """One --vm value; a bad one is a SpecError naming it and what is wrong."""
    match = _SHAPE_RE.fullmatch(text)
    if not match:
        raise SpecError(
            f"--vm {shown(text)}: expected VCPUS:MEMORY[:NICS] such as 8:8GiB or 8:8GiB:vf,pt=eno1 "
            "(NICS: pt, vf, pt=NAME, vf=NAME[/NAME...], comma-separated)"
        )
    vcpus_text, memory_text, nics_text = match.groups()
    vcpus = int(vcpus_text)
    if not 1 <= vcpus <= MAX_SHAPE_VCPUS:
        raise SpecError(f"--vm {shown(text)}: vCPUs must be from 1 to {MAX_SHAPE_VCPUS}, got {vcpus}")
    try:
        memory = parse_size_mib(memory_text)
    except ValueError as exc:
        raise SpecError(f"--vm {shown(text)}: memory: {exc}") from None
    nics = []
    for entry in nics_text.split(",") if nics_text else []:
        kind, _, names = entry.partition("=")
        try:
            refs = tuple(device_ref(name) for name in names.split("/")) if names else ()
        except ValueError as exc:
            raise SpecError(f"--vm {shown(text)}: {exc}") from None
        nics.append(ShapeNic("pt" if kind == "pt" else "vf", refs))
    if sum(1 for nic in nics if nic.kind == "vf") > MAX_VFS:
        raise SpecError(f"--vm {shown(text)}: more than {MAX_VFS} VFs")
    return VmShape(text, vcpus, memory, tuple(nics))
