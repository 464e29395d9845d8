"""The slicing spec: what the user asks for, validated strictly at load time.

Unknown keys, non-positive counts, bad sizes, bad PCI addresses and duplicate names are
refused with one line naming the file, the field and the reason.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from bmslice.cpuset import CpuListError, CpuSet
from bmslice.errors import SpecError
from bmslice.model.fields import CpuFeature, device_ref, matching
from bmslice.model.input_file import read_yaml, validation_error
from bmslice.model.sizes import parse_size_mib

VM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
VmName = Annotated[str, matching(VM_NAME_RE, "a valid domain name (letters, digits, '_', '.', '+', '-'; max 64)")]


def _size(value: Any) -> int:
    if not isinstance(value, str | int):
        raise ValueError(f"expected a size such as 8GiB, got {value!r}")
    return parse_size_mib(value)


SizeMiB = Annotated[int, BeforeValidator(_size)]


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
    reserved_cores_per_node: int = Field(default=1, ge=0)
    reserved_cpus: str | None = None  # explicit list instead of reserved_cores_per_node
    reserved_memory_per_node: SizeMiB = 2048
    nic_numa_policy: NicNumaPolicy = NicNumaPolicy.PREFER
    isolate: IsolateScope = IsolateScope.ALL
    allow_management_nic: bool = False
    domain_type: DomainType = DomainType.KVM
    sriov_vfs: dict[str, int] = Field(default_factory=dict)  # PF -> VFs to create (a pool), else what VMs need

    @field_validator("sriov_vfs")
    @classmethod
    def _vf_pools(cls, value: dict[str, int]) -> dict[str, int]:
        out = {}
        for pf, count in value.items():
            if count < 1:
                raise ValueError(f"{pf}: VF count must be 1 or more")
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


MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class SriovSpec(_Strict):
    """VFs of a PF for one VM. `pf` may list several PFs: the planner prefers one local to the VM."""

    pf: tuple[str, ...]
    vlan: int | None = Field(default=None, ge=1, le=4094)  # None: untagged (VLAN 0 is set explicitly)
    mac: str | None = None
    trust: bool = False
    spoofchk: bool = True
    count: int = Field(default=1, ge=1, le=256)

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
        if value is None:
            return None
        if not MAC_RE.match(value) or int(value[:2], 16) & 1:
            raise ValueError(f"{value!r} is not a unicast MAC address like 02:00:00:00:00:01")
        return value.lower()

    @model_validator(mode="after")
    def _one_mac_one_vf(self) -> SriovSpec:
        if self.mac is not None and self.count != 1:
            raise ValueError("a fixed mac needs count: 1 (one MAC per VF)")
        return self


class NicSpec(_Strict):
    """One VM NIC: a whole PCI device (`passthrough`) or SR-IOV VFs (`sriov`)."""

    passthrough: str | None = None
    sriov: SriovSpec | None = None

    @field_validator("passthrough")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        return None if value is None else device_ref(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> NicSpec:
        if (self.passthrough is None) == (self.sriov is None):
            raise ValueError("give exactly one of passthrough or sriov")
        return self


HASH_PREFIXES = ("$6$", "$5$", "$y$", "$2b$", "$2y$", "$gy$")
SSH_KEY_RE = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp\d+|sk-\S+)\s+[A-Za-z0-9+/=]+(\s.*)?$")


class DiskSpec(_Strict):
    """The VM's root disk: a qcow2 volume in a libvirt pool, backed by `image` when given."""

    size: SizeMiB = 10240
    image: Path | None = None
    pool: str = "default"


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
            if name in ("user-data", "meta-data") or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", name):
                raise ValueError(f"{name!r} is not a usable seed file name")
        return value

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for key in value:
            if not SSH_KEY_RE.match(key.strip()):
                raise ValueError(f"{key[:20]!r}... is not an SSH public key")
        return tuple(k.strip() for k in value)


class VmSpec(_Strict):
    name: VmName
    vcpus: int = Field(gt=0, le=4096)
    memory: SizeMiB
    numa_node: int | None = Field(default=None, ge=0)
    emulator: EmulatorPolicy = EmulatorPolicy.DEDICATED
    iothreads: int = Field(default=1, ge=0, le=64)
    hugepages: HugepageSize = HugepageSize.NONE
    disable_cpu_features: tuple[CpuFeature, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    disk: DiskSpec | None = None
    cloud_init: CloudInitSpec | None = None

    @model_validator(mode="after")
    def _hugepage_memory(self) -> VmSpec:
        page_kib = self.hugepages.kib
        if page_kib and (self.memory * 1024) % page_kib:
            raise ValueError(f"memory {self.memory} MiB is not a whole number of {self.hugepages.value} hugepages")
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
    return spec


def load_spec(path: Path) -> Spec:
    return spec_from_data(read_yaml(path, "spec"), str(path))
