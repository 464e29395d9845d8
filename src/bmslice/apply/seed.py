"""Gather a VM's cloud-init inputs from the files the spec names and build its seed ISO."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bmslice.apply.ownership import Mark, files_digest, iso_with_mark
from bmslice.errors import ApplyError
from bmslice.model.input_file import INPUT_LIMIT, read_input_text
from bmslice.model.spec import HASH_PREFIXES, SSH_KEY_RE, CloudInitSpec
from bmslice.model.spec_files import SEED_FILE_LIMIT, user_data_mapping
from bmslice.render.cloud_init import meta_data, seed_iso, user_data
from bmslice.render.domain_model import domain_uuid


def _read(path: Path, base: Path, what: str, limit: int = INPUT_LIMIT) -> str:
    """The file through the bounded reader: a FIFO or /dev/zero put there since the spec was loaded
    is refused, not read forever."""
    return read_input_text(path if path.is_absolute() else base / path, what, limit, ApplyError)


def _keys(spec: CloudInitSpec, base: Path) -> list[str]:
    keys = list(spec.ssh_authorized_keys)
    if spec.ssh_authorized_keys_file is not None:
        for line in _read(spec.ssh_authorized_keys_file, base, "ssh_authorized_keys_file").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not SSH_KEY_RE.fullmatch(line):
                raise ApplyError(f"ssh_authorized_keys_file {spec.ssh_authorized_keys_file}: a line is not an SSH key")
            keys.append(line)
    return keys


def _password_hash(spec: CloudInitSpec, base: Path) -> str | None:
    if spec.password_hash_file is None:
        return None
    value = _read(spec.password_hash_file, base, "password_hash_file").strip()
    if not value.startswith(HASH_PREFIXES) or len(value.split()) != 1:
        raise ApplyError(
            f"password_hash_file {spec.password_hash_file} does not hold one crypt(3) hash ($6$..., $y$...); "
            "bmslice never takes a plain password (make one with: mkpasswd -m sha-512)"
        )
    return value


def _extra(spec: CloudInitSpec, base: Path) -> dict[str, Any]:
    if spec.user_data is None:
        return {}
    return user_data_mapping(_read(spec.user_data, base, "user_data"), base / spec.user_data)


@dataclass(frozen=True)
class Seed:
    """What a VM's seed carries, by name on the seed; `digest` identifies it (ownership.files_digest)."""

    files: dict[str, str]
    digest: str

    def image(self, mark: Mark) -> bytes:
        """The ISO, carrying `mark` with this seed's digest and the image's own hash."""
        return iso_with_mark(seed_iso(self.files), replace(mark, files=self.digest))


def read_seed(vm_name: str, spec: CloudInitSpec, base: Path) -> Seed:
    files = {
        "user-data": user_data(vm_name, _keys(spec, base), _password_hash(spec, base), _extra(spec, base)),
        "meta-data": meta_data(vm_name, domain_uuid(vm_name)),
    }
    for name, path in sorted(spec.seed_files.items()):
        files[name] = _read(path, base, f"seed_files.{name}", SEED_FILE_LIMIT)
    return Seed(files, files_digest(files))
