"""The slicing spec: what the user asks for, validated strictly at load time.

Unknown keys, non-positive counts, bad sizes, bad PCI addresses, duplicate names and MACs
are refused with one line naming the file, the field and the reason. Counts are strict
integers and switches strict booleans: YAML's `true` is not a vCPU count, and the string
"false" is not False.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta, field

from bmslice.cpuset import MAX_CPU_ID, CpuListError, CpuSet
from bmslice.errors import SpecError
from bmslice.model.fields import (
    CpuFeature,
    DeviceRef,
    checked,
    device_ref,
    expect,
    kind,
    matching,
    printable_path,
    text,
)
from bmslice.model.input_file import read_yaml, validated
from bmslice.model.sizes import parse_size_kib, parse_size_mib
from bmslice.safe_text import one_line, shown

VM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
MAX_NUMA_NODE = 1023  # Linux has at most 1024 NUMA nodes (NODES_SHIFT 10)
MAX_VFS = 65535  # TotalVFs is a 16-bit field of the PCI SR-IOV capability
MAX_RT_PRIORITY = 99  # SCHED_FIFO priorities are 1..99 (sched_get_priority_max)


class EmulatorPolicy(StrEnum):
    DEDICATED = "dedicated"  # one whole core of the VM's node for emulator + IOThreads
    HOST = "host"  # share the host-reserved CPUs of the VM's node


class HugepageSize(StrEnum):
    NONE = "none"
    SIZE_2M = "2M"
    SIZE_1G = "1G"

    @property
    def kib(self) -> int | None:
        return {"none": None, "2M": 2048, "1G": 1048576}[self.value]


class NicNumaPolicy(StrEnum):
    PREFER = "prefer"  # a cross-NUMA NIC is a warning
    REQUIRE = "require"  # a cross-NUMA NIC is a refusal


class IsolateScope(StrEnum):
    ALL = "all"  # every online CPU the host does not keep: a later slice needs no reboot
    VMS = "vms"  # only the CPUs planned for VMs


class DomainType(StrEnum):
    KVM = "kvm"
    QEMU = "qemu"  # TCG, for machines without /dev/kvm


class Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A model read from a user's file: immutable, no key it does not know, keyword arguments."""


def _vf_pools(value: object) -> dict[str, int]:
    """PF -> VFs to create, PFs canonicalised."""
    expect(value, dict)
    assert isinstance(value, dict)
    out = {}
    for pf, count in value.items():
        expect(pf, str)
        if type(count) is not int:
            raise TypeError(f"{shown(pf)}: Expected `int`, got `{kind(count)}`")
        if not 1 <= count <= MAX_VFS:
            raise ValueError(f"{shown(pf)}: VF count must be from 1 to {MAX_VFS}")
        out[device_ref(pf)] = count
    return out


def _cpu_list(value: str) -> str:
    try:
        cpus = CpuSet.parse(value)
    except CpuListError as exc:
        raise ValueError(str(exc)) from None
    if not cpus:
        raise ValueError("must name at least one CPU")
    return cpus.format()


if TYPE_CHECKING:
    VmName = str
    SizeMiB = int
    SizeKiB = int
    CpuList = str
    VfPools = dict[str, int]
else:
    VmName = matching("VmName", VM_NAME_RE, "a valid domain name (letters, digits, '_', '.', '+', '-'; max 64)")
    SizeMiB = checked("SizeMiB", int, parse_size_mib)  # "8GiB", or an integer of MiB
    SizeKiB = checked("SizeKiB", int, parse_size_kib)
    CpuList = text("CpuList", _cpu_list)
    VfPools = checked("VfPools", dict, _vf_pools)


class HostSpec(Strict, frozen=True):
    reserved_cores_per_node: Annotated[int, Meta(ge=0, le=MAX_CPU_ID)] = 1
    reserved_cpus: CpuList | None = None  # explicit list instead of reserved_cores_per_node
    reserved_memory_per_node: SizeMiB = 2048
    nic_numa_policy: NicNumaPolicy = NicNumaPolicy.PREFER
    isolate: IsolateScope = IsolateScope.ALL
    allow_management_nic: bool = False
    domain_type: DomainType = DomainType.KVM
    sriov_vfs: VfPools = field(default_factory=dict)  # PF -> VFs to create (a pool), else what VMs need

    @property
    def reserved_cpuset(self) -> CpuSet | None:
        return CpuSet.parse(self.reserved_cpus) if self.reserved_cpus is not None else None


MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def unicast_mac(value: str) -> str:
    """A MAC a VF can carry, lower case: not all-zero (unset), not multicast or broadcast."""
    if not MAC_RE.fullmatch(value):
        raise ValueError(f"{shown(value)} is not a MAC address like 02:00:00:00:00:01")
    if int(value.replace(":", ""), 16) == 0:
        raise ValueError(f"{value} is the all-zero MAC, which means 'unset'; give a unicast MAC like 02:00:00:00:00:01")
    if int(value[:2], 16) & 1:
        raise ValueError(f"{value} is a multicast or broadcast MAC; give a unicast MAC like 02:00:00:00:00:01")
    return value.lower()


def _pf_list(value: object) -> tuple[str, ...]:
    """One PF, or a list of them (the planner prefers one local to the VM)."""
    items = [value] if type(value) is str else value
    if not isinstance(items, list | tuple):
        raise TypeError(f"Expected `str` or `array`, got `{kind(value)}`")
    if not items:
        raise ValueError("name at least one PF")
    for item in items:
        expect(item, str)
    return tuple(device_ref(item) for item in items)


if TYPE_CHECKING:
    PfList = tuple[str, ...]
    Mac = str
else:
    PfList = checked("PfList", tuple, _pf_list)
    Mac = text("Mac", unicast_mac)


class SriovSpec(Strict, frozen=True):
    """VFs of a PF for one VM. `pf` may list several PFs: the planner prefers one local to the VM."""

    pf: PfList
    vlan: Annotated[int, Meta(ge=1, le=4094)] | None = None  # None: untagged (VLAN 0 is set explicitly)
    mac: Mac | None = None
    trust: bool = False
    spoofchk: bool = True
    count: Annotated[int, Meta(ge=1, le=256)] = 1

    def __post_init__(self) -> None:
        if self.mac is not None and self.count != 1:
            raise ValueError("a fixed mac needs count: 1 (one MAC per VF)")


class NicSpec(Strict, frozen=True):
    """One VM NIC: a whole PCI device (`passthrough`) or SR-IOV VFs (`sriov`).

    `allow_non_nic: true` lets `passthrough` name a PCI function that is not a network
    device (a GPU, an NVMe drive): without it the planner refuses one, so that a typo in a
    PCI address cannot hand the host's storage controller to a guest. Bridges are never
    passed through.
    """

    passthrough: DeviceRef | None = None
    sriov: SriovSpec | None = None
    allow_non_nic: bool = False

    def __post_init__(self) -> None:
        if (self.passthrough is None) == (self.sriov is None):
            raise ValueError("give exactly one of passthrough or sriov")
        if self.allow_non_nic and self.passthrough is None:
            raise ValueError("allow_non_nic applies to passthrough only (VFs are network functions)")


HASH_PREFIXES = ("$6$", "$5$", "$y$", "$2b$", "$2y$", "$gy$")
# One line: type, base64 and an optional comment; no control character anywhere, so a key
# cannot smuggle a second authorized_keys line ("...\ncommand=... ssh-rsa ...") into a guest.
SSH_KEY_RE = re.compile(
    r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp[0-9]+|sk-[A-Za-z0-9@._-]+)[ \t]+[A-Za-z0-9+/=]+([ \t][^\x00-\x1f\x7f]*)?$"
)
POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+:-]{0,63}")


def _host_path(value: object) -> Path:
    path = printable_path(value)
    if not path.is_absolute():
        raise ValueError(
            f"{shown(str(value))} must be an absolute path on the host (libvirt does not know the spec's directory)"
        )
    return path


if TYPE_CHECKING:
    HostPath = Path
    PoolName = str
else:
    HostPath = checked("HostPath", Path, _host_path)
    PoolName = matching("PoolName", POOL_NAME_RE, "a storage pool name")


class DiskSpec(Strict, frozen=True):
    """The VM's root disk: a qcow2 volume in a libvirt pool, backed by `image` when given."""

    size: SizeMiB = 10240
    image: HostPath | None = None
    pool: PoolName = "default"


SEED_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _seed_name(name: str) -> str:
    if name in ("user-data", "meta-data") or not SEED_NAME_RE.fullmatch(name):
        raise ValueError(f"{shown(name)} is not a usable seed file name")
    return name


def _ssh_key(key: str) -> str:
    if not SSH_KEY_RE.fullmatch(key.strip()):
        raise ValueError(f"{shown(key, 24)} is not an SSH public key (one line: type, key, comment)")
    return key.strip()


if TYPE_CHECKING:
    SeedName = str
    SshKey = str
else:
    SeedName = text("SeedName", _seed_name)
    SshKey = text("SshKey", _ssh_key)


class CloudInitSpec(Strict, frozen=True):
    """A NoCloud seed. Keys only, or a *hashed* password read from a file: never a password."""

    ssh_authorized_keys: tuple[SshKey, ...] = ()
    ssh_authorized_keys_file: Path | None = None
    password_hash_file: Path | None = None
    user_data: Path | None = None
    # Extra files for the seed, by name on the seed (e.g. a kubeadm join config the guest
    # reads at boot): their contents go to the guest only, never into a generated file.
    seed_files: dict[SeedName, Path] = field(default_factory=dict)


class RealtimeSpec(Strict, frozen=True):
    """Realtime vCPUs: the first `housekeeping_vcpus` stay ordinary (the guest's OS, I/O);
    every later vCPU runs SCHED_FIFO at `priority` on the host (Nova's hw:cpu_realtime_mask)."""

    housekeeping_vcpus: Annotated[int, Meta(ge=1, le=4096)] = 1
    priority: Annotated[int, Meta(ge=1, le=MAX_RT_PRIORITY)] = 1


def check_realtime(realtime: RealtimeSpec | None, vcpus: int, hugepages: HugepageSize) -> None:
    """What a realtime VM needs of its own size: a realtime vCPU, and hugepages (its memory is locked)."""
    if realtime is None:
        return
    if realtime.housekeeping_vcpus >= vcpus:
        raise ValueError(
            f"realtime.housekeeping_vcpus: {realtime.housekeeping_vcpus} leaves no realtime vCPU of the "
            f"{vcpus}; give fewer housekeeping vCPUs than vcpus"
        )
    if hugepages is HugepageSize.NONE:
        raise ValueError(
            "realtime: a realtime VM needs hugepages: 2M or 1G (its memory is locked, and 4 KiB pages would "
            "cost it TLB misses)"
        )


MAX_GUEST_CELLS = 8


def check_cells(cells: int, numa_node: int | None, vcpus: int, memory_mib: int, page_kib: int | None) -> None:
    """A VM over `cells` host nodes gets an equal share of each: its numbers must split evenly."""
    if cells == 1:
        return
    if numa_node is not None:
        raise ValueError(f"numa_node pins a VM to one node; with numa_nodes: {cells} leave numa_node out")
    if vcpus % cells:
        raise ValueError(f"numa_nodes: {cells} needs vcpus divisible by {cells} (an equal share per node), got {vcpus}")
    share = memory_mib // cells
    if memory_mib % cells or (page_kib and (share * 1024) % page_kib):
        unit = f"whole {page_kib} KiB hugepages" if page_kib else "whole MiB"
        raise ValueError(
            f"numa_nodes: {cells} needs memory that splits into {cells} equal shares of {unit} "
            f"(an equal share per node), got {memory_mib} MiB"
        )


class CacheSpec(Strict, frozen=True):
    """L3 ways and a memory bandwidth cap for the VM's vCPUs, through resctrl (libvirt's
    <cachetune>/<memorytune>). `l3` is reserved on each L3 domain the vCPUs use, rounded up
    to whole ways; `memory_bandwidth` is a percentage (Intel MBA) on the same domains."""

    l3: SizeKiB | None = None
    memory_bandwidth: Annotated[int, Meta(ge=1, le=100)] | None = None

    def __post_init__(self) -> None:
        if self.l3 is None and self.memory_bandwidth is None:
            raise ValueError("give l3, memory_bandwidth or both")


class VmSpec(Strict, frozen=True):
    name: VmName
    vcpus: Annotated[int, Meta(gt=0, le=4096)]
    memory: SizeMiB
    numa_node: Annotated[int, Meta(ge=0, le=MAX_NUMA_NODE)] | None = None
    # Guest NUMA: the VM spans this many host nodes, an equal share of its vCPUs and memory on
    # each, and its guest sees as many NUMA cells (`numa_node` then cannot pin it to one).
    numa_nodes: Annotated[int, Meta(ge=1, le=MAX_GUEST_CELLS)] = 1
    emulator: EmulatorPolicy = EmulatorPolicy.DEDICATED
    iothreads: Annotated[int, Meta(ge=0, le=64)] = 1
    hugepages: HugepageSize = HugepageSize.NONE
    realtime: RealtimeSpec | None = None
    disable_cpu_features: tuple[CpuFeature, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    disk: DiskSpec | None = None
    cloud_init: CloudInitSpec | None = None
    cache: CacheSpec | None = None

    def __post_init__(self) -> None:
        page_kib = self.hugepages.kib
        if page_kib and (self.memory * 1024) % page_kib:
            raise ValueError(f"memory {self.memory} MiB is not a whole number of {self.hugepages.value} hugepages")
        check_realtime(self.realtime, self.vcpus, self.hugepages)
        check_cells(self.numa_nodes, self.numa_node, self.vcpus, self.memory, page_kib)


class Spec(Strict, frozen=True, kw_only=True):
    host: HostSpec = field(default_factory=HostSpec)
    vms: Annotated[tuple[VmSpec, ...], Meta(min_length=1)]

    def vm(self, name: str) -> VmSpec:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)


def spec_from_data(data: Any, origin: str) -> Spec:
    """Validate already-parsed data; errors name `origin`, the field and the reason."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: the spec must be a mapping with 'vms' (and optionally 'host')")
    spec = validated(data, Spec, origin)
    first_index: dict[str, int] = {}
    for i, vm in enumerate(spec.vms):
        if vm.name in first_index:
            raise SpecError(
                f"{origin}: vms[{i}].name: duplicate VM name {vm.name!r} (also vms[{first_index[vm.name]}])"
            )
        first_index[vm.name] = i
    _check_unique_macs(spec, origin)
    return spec


def _check_unique_macs(spec: Spec, origin: str) -> None:
    """Two VFs with one fixed MAC on one host: the switch would flap between them."""
    first: dict[str, str] = {}
    for vi, vm in enumerate(spec.vms):
        for ni, nic in enumerate(vm.nics):
            if nic.sriov is None or nic.sriov.mac is None:
                continue
            field = f"vms[{vi}].nics[{ni}].sriov.mac"
            if nic.sriov.mac in first:
                raise SpecError(f"{origin}: {field}: MAC {nic.sriov.mac} is also given at {first[nic.sriov.mac]}")
            first[nic.sriov.mac] = field


def load_spec(path: Path) -> Spec:
    return spec_from_data(read_yaml(path, "spec"), one_line(str(path)))
