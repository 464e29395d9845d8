"""The files a spec names, checked where the spec is loaded, before anything changes.

The planner is pure and reads nothing, so these checks belong to whoever loads the spec
for a command (the CLI):

- cloud-init inputs (SSH key file, password hash file, user-data, seed files) go through
  the bounded reader, so a FIFO, `/dev/zero`, a directory, a binary or a huge file is one
  line naming the field — before apply creates a volume, not halfway through; user-data
  goes through the spec's own strict YAML loader (no key twice, no alias bomb, no deep
  nesting, no million values) and must be a mapping;
- a disk image must exist when the host is this machine (a remote host's files are for its
  own libvirt to find); its being absolute is checked by the spec model itself.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bmslice.errors import SpecError
from bmslice.model.input_file import INPUT_LIMIT, MIB, parse_yaml, read_input_text
from bmslice.model.spec import Spec
from bmslice.safe_text import one_line

# Seed files may be larger than keys or user-data (a kubeadm config, a CA bundle, a script),
# and a seed above libvirt's 32 MiB stream message must still be possible: 64 MiB each.
SEED_FILE_LIMIT = 64 * MIB


def cloud_init_files(spec: Spec, base: Path) -> Iterator[tuple[str, Path, int]]:
    """(field, path resolved against the spec's directory, size limit) of every file cloud-init reads."""
    for vi, vm in enumerate(spec.vms):
        ci = vm.cloud_init
        if ci is None:
            continue
        field = f"vms[{vi}].cloud_init"
        named = [
            ("ssh_authorized_keys_file", ci.ssh_authorized_keys_file),
            ("password_hash_file", ci.password_hash_file),
            ("user_data", ci.user_data),
        ]
        for name, path in named:
            if path is not None:
                yield f"{field}.{name}", base / path, INPUT_LIMIT  # an absolute path stays what it is
        for name, path in sorted(ci.seed_files.items()):
            yield f"{field}.seed_files.{name}", base / path, SEED_FILE_LIMIT


def user_data_mapping(text: str, path: Path) -> dict[str, Any]:
    """The user's #cloud-config, parsed as strictly as the spec; SpecError naming the file."""
    data = parse_yaml(text, one_line(str(path)))
    if not isinstance(data, dict):
        raise SpecError(f"{one_line(str(path))}: user_data must be a #cloud-config mapping")
    return data


def check_cloud_init_files(spec: Spec, origin: str, base: Path) -> None:
    """Every cloud-init file is a regular UTF-8 text file within its limit, and user-data a
    strict YAML mapping (SpecError naming the field)."""
    for field, path, limit in cloud_init_files(spec, base):
        try:
            text = read_input_text(path, field, limit)
        except SpecError as exc:
            raise SpecError(f"{origin}: {exc}") from None
        if field.endswith(".user_data"):
            try:
                user_data_mapping(text, path)
            except SpecError as exc:
                raise SpecError(f"{origin}: {field}: {exc}") from None


def check_disk_images(spec: Spec, origin: str) -> None:
    """Every disk image exists on this machine as a file or a block device (an LVM volume)."""
    for vi, vm in enumerate(spec.vms):
        image = vm.disk.image if vm.disk is not None else None
        if image is None:
            continue
        where = f"{origin}: vms[{vi}].disk.image: {one_line(str(image))}"
        try:
            mode = os.stat(image).st_mode
        except OSError as exc:
            raise SpecError(f"{where}: {exc.strerror or exc} (the disk would be created on a missing base)") from None
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise SpecError(f"{where}: not a file or block device")
