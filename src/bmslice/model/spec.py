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
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from bmslice.cpuset import MAX_CPU_ID, CpuListError, CpuSet
from bmslice.errors import SpecError
from bmslice.model.fields import CpuFeature, device_ref, matching
from bmslice.model.input_file import read_yaml, validation_error
from bmslice.model.sizes import parse_size_kib, parse_size_mib
from bmslice.safe_text import one_line, shown

VM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
VmName = Annotated[str, matching(VM_NAME_RE, "a valid domain name (letters, digits, '_', '.', '+', '-'; max 64)")]


SizeMiB = Annotated[int, BeforeValidator(parse_size_mib)]
SizeKiB = Annotated[int, BeforeValidator(parse_size_kib)]
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostSpec(_Strict):
    reserved_cores_per_node: StrictInt = Field(default=1, ge=0, le=MAX_CPU_ID)
    reserved_cpus: str | None = None  # explicit list instead of reserved_cores_per_node
    reserved_memory_per_node: SizeMiB = 2048
    nic_numa_policy: NicNumaPolicy = NicNumaPolicy.PREFER
    isolate: IsolateScope = IsolateScope.ALL
    allow_management_nic: StrictBool = False
    domain_type: DomainType = DomainType.KVM
    sriov_vfs: dict[str, StrictInt] = Field(default_factory=dict)  # PF -> VFs to create (a pool), else what VMs need

    @field_validator("sriov_vfs")
    @classmethod
    def _vf_pools(cls, value: dict[str, int]) -> dict[str, int]:
        out = {}
        for pf, count in value.items():
            if not 1 <= count <= MAX_VFS:
                raise ValueError(f"{shown(pf)}: VF count must be from 1 to {MAX_VFS}")
            out[device_ref(pf)] = count
        return out

    @field_validator("reserved_cpus")
    @classmethod
    def _cpu_list(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            cpus = CpuSet.parse(str(value))
        except CpuListError as exc:
            raise ValueError(str(exc)) from None
        if not cpus:
            raise ValueError("must name at least one CPU")
        return cpus.format()

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


class SriovSpec(_Strict):
    """VFs of a PF for one VM. `pf` may list several PFs: the planner prefers one local to the VM."""

    pf: tuple[str, ...]
    vlan: StrictInt | None = Field(default=None, ge=1, le=4094)  # None: untagged (VLAN 0 is set explicitly)
    mac: str | None = None
    trust: StrictBool = False
    spoofchk: StrictBool = True
    count: StrictInt = Field(default=1, ge=1, le=256)

    @field_validator("pf", mode="before")
    @classmethod
    def _pf_list(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("pf")
    @classmethod
    def _pf_refs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one PF")
        return tuple(device_ref(v) for v in value)

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str | None) -> str | None:
        return None if value is None else unicast_mac(value)

    @model_validator(mode="after")
    def _one_mac_one_vf(self) -> SriovSpec:
        if self.mac is not None and self.count != 1:
            raise ValueError("a fixed mac needs count: 1 (one MAC per VF)")
        return self


class NicSpec(_Strict):
    """One VM NIC: a whole PCI device (`passthrough`) or SR-IOV VFs (`sriov`).

    `allow_non_nic: true` lets `passthrough` name a PCI function that is not a network
    device (a GPU, an NVMe drive): without it the planner refuses one, so that a typo in a
    PCI address cannot hand the host's storage controller to a guest. Bridges are never
    passed through.
    """

    passthrough: str | None = None
    sriov: SriovSpec | None = None
    allow_non_nic: StrictBool = False

    @field_validator("passthrough")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        return None if value is None else device_ref(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> NicSpec:
        if (self.passthrough is None) == (self.sriov is None):
            raise ValueError("give exactly one of passthrough or sriov")
        if self.allow_non_nic and self.passthrough is None:
            raise ValueError("allow_non_nic applies to passthrough only (VFs are network functions)")
        return self


HASH_PREFIXES = ("$6$", "$5$", "$y$", "$2b$", "$2y$", "$gy$")
# One line: type, base64 and an optional comment; no control character anywhere, so a key
# cannot smuggle a second authorized_keys line ("...\ncommand=... ssh-rsa ...") into a guest.
SSH_KEY_RE = re.compile(
    r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp[0-9]+|sk-[A-Za-z0-9@._-]+)[ \t]+[A-Za-z0-9+/=]+([ \t][^\x00-\x1f\x7f]*)?$"
)
POOL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+:-]{0,63}")


def _host_path(value: Path) -> Path:
    text = str(value)
    if not value.is_absolute():
        raise ValueError(
            f"{shown(text)} must be an absolute path on the host (libvirt does not know the spec's directory)"
        )
    if not text.isprintable():
        raise ValueError(f"{shown(text)} holds a control character; refusing it as a path")
    return value


class DiskSpec(_Strict):
    """The VM's root disk: a qcow2 volume in a libvirt pool, backed by `image` when given."""

    size: SizeMiB = 10240
    image: Path | None = None
    pool: Annotated[str, matching(POOL_NAME_RE, "a storage pool name")] = "default"

    @field_validator("image")
    @classmethod
    def _image(cls, value: Path | None) -> Path | None:
        return None if value is None else _host_path(value)


SEED_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class CloudInitSpec(_Strict):
    """A NoCloud seed. Keys only, or a *hashed* password read from a file: never a password."""

    ssh_authorized_keys: tuple[str, ...] = ()
    ssh_authorized_keys_file: Path | None = None
    password_hash_file: Path | None = None
    user_data: Path | None = None
    # Extra files for the seed, by name on the seed (e.g. a kubeadm join config the guest
    # reads at boot): their contents go to the guest only, never into a generated file.
    seed_files: dict[str, Path] = Field(default_factory=dict)

    @field_validator("seed_files")
    @classmethod
    def _seed_names(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name in value:
            if name in ("user-data", "meta-data") or not SEED_NAME_RE.fullmatch(name):
                raise ValueError(f"{shown(name)} is not a usable seed file name")
        return value

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for key in value:
            if not SSH_KEY_RE.fullmatch(key.strip()):
                raise ValueError(f"{shown(key, 24)} is not an SSH public key (one line: type, key, comment)")
        return tuple(k.strip() for k in value)


class RealtimeSpec(_Strict):
    """Realtime vCPUs: the first `housekeeping_vcpus` stay ordinary (the guest's OS, I/O);
    every later vCPU runs SCHED_FIFO at `priority` on the host (Nova's hw:cpu_realtime_mask)."""

    housekeeping_vcpus: StrictInt = Field(default=1, ge=1, le=4096)
    priority: StrictInt = Field(default=1, ge=1, le=MAX_RT_PRIORITY)


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


class CacheSpec(_Strict):
    """L3 ways and a memory bandwidth cap for the VM's vCPUs, through resctrl (libvirt's
    <cachetune>/<memorytune>). `l3` is reserved on each L3 domain the vCPUs use, rounded up
    to whole ways; `memory_bandwidth` is a percentage (Intel MBA) on the same domains."""

    l3: SizeKiB | None = None
    memory_bandwidth: StrictInt | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _something(self) -> CacheSpec:
        if self.l3 is None and self.memory_bandwidth is None:
            raise ValueError("give l3, memory_bandwidth or both")
        return self


class VmSpec(_Strict):
    name: VmName
    vcpus: StrictInt = Field(gt=0, le=4096)
    memory: SizeMiB
    numa_node: StrictInt | None = Field(default=None, ge=0, le=MAX_NUMA_NODE)
    # Guest NUMA: the VM spans this many host nodes, an equal share of its vCPUs and memory on
    # each, and its guest sees as many NUMA cells (`numa_node` then cannot pin it to one).
    numa_nodes: StrictInt = Field(default=1, ge=1, le=MAX_GUEST_CELLS)
    emulator: EmulatorPolicy = EmulatorPolicy.DEDICATED
    iothreads: StrictInt = Field(default=1, ge=0, le=64)
    hugepages: HugepageSize = HugepageSize.NONE
    realtime: RealtimeSpec | None = None
    disable_cpu_features: tuple[CpuFeature, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    disk: DiskSpec | None = None
    cloud_init: CloudInitSpec | None = None
    cache: CacheSpec | None = None

    @model_validator(mode="after")
    def _hugepage_memory(self) -> VmSpec:
        page_kib = self.hugepages.kib
        if page_kib and (self.memory * 1024) % page_kib:
            raise ValueError(f"memory {self.memory} MiB is not a whole number of {self.hugepages.value} hugepages")
        check_realtime(self.realtime, self.vcpus, self.hugepages)
        check_cells(self.numa_nodes, self.numa_node, self.vcpus, self.memory, page_kib)
        return self


class Spec(_Strict):
    host: HostSpec = HostSpec()
    vms: tuple[VmSpec, ...] = Field(min_length=1)

    def vm(self, name: str) -> VmSpec:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise KeyError(name)


def spec_from_data(data: Any, origin: str) -> Spec:
    """Validate already-parsed data; errors name `origin`, the field and the reason."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: the spec must be a mapping with 'vms' (and optionally 'host')")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(origin, exc) from None
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
