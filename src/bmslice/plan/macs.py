"""One MAC address, one NIC: the VF MACs of a plan are unique on the host.

Two guests with the same MAC on one host break the fabric in ways that are slow to find
(the switch learns the MAC on whichever port spoke last). A planned VF MAC — fixed in the
spec or derived from the VM's name — is refused when another planned VF has it, when a
host interface carries it, or when a VF outside the plan already has it set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bmslice.errors import PlanError
from bmslice.model.plan import DeviceAssignment, VmPlan
from bmslice.model.topology import HostTopology


def _label(vm: str, dev: DeviceAssignment) -> str:
    return f"{vm} VF {dev.vf_index} of {dev.interface or dev.pf}"


def check_macs(
    topo: HostTopology, new: Mapping[str, Sequence[DeviceAssignment]], kept: Sequence[VmPlan], origin: str
) -> None:
    planned = [(vm, dev) for vm, devices in new.items() for dev in devices if dev.type == "vf" and dev.mac]
    planned += [(vm.name, dev) for vm in kept for dev in vm.devices if dev.type == "vf" and dev.mac]
    owner: dict[str, str] = {}
    for vm, dev in planned:
        assert dev.mac is not None
        mac = dev.mac.lower()
        if mac in owner:
            raise PlanError(f"{origin}: {_label(vm, dev)} and {owner[mac]} would both have MAC {mac}")
        owner[mac] = _label(vm, dev)
    ours = {(dev.interface, dev.vf_index) for _vm, dev in planned}
    vf_addresses = {dev.address for _vm, dev in planned if dev.address}
    for iface in topo.net_interfaces:
        if iface.mac and iface.mac.lower() in owner and iface.pci_address not in vf_addresses:
            raise PlanError(f"{origin}: {owner[iface.mac.lower()]}: MAC {iface.mac.lower()} is the host's {iface.name}")
    for vf in topo.vf_states:
        if vf.mac and vf.mac in owner and (vf.pf_interface, vf.index) not in ours:
            raise PlanError(
                f"{origin}: {owner[vf.mac]}: MAC {vf.mac} is already set on VF {vf.index} of {vf.pf_interface}"
            )
