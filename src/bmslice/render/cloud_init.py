"""cloud-init NoCloud seed contents and the ISO that carries them (pure: text in, bytes out).

Only SSH keys or a crypt(3) hash ever reach the seed: bmslice has no way to take a
plain password (faults.md 31).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

SEED_LABEL = "cidata"
# libyaml's emitter where PyYAML has it: the same text, and an 11 MB user-data in 0.2 s, not 6.
_DUMPER = yaml.CSafeDumper if yaml.__with_libyaml__ else yaml.SafeDumper


def user_data(
    hostname: str,
    ssh_keys: Sequence[str],
    password_hash: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """#cloud-config text; keys in `extra` (the user's own user-data) win over ours."""
    config: dict[str, Any] = {"hostname": hostname, "preserve_hostname": False}
    if ssh_keys:
        config["ssh_authorized_keys"] = list(ssh_keys)
    if password_hash:
        config["chpasswd"] = {"expire": False, "users": [{"name": "root", "password": password_hash, "type": "hash"}]}
        config["ssh_pwauth"] = False
    config.update(extra or {})
    return "#cloud-config\n" + yaml.dump(config, Dumper=_DUMPER, sort_keys=True, default_flow_style=False)


def meta_data(hostname: str, instance_id: str) -> str:
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname}, sort_keys=True)


def seed_iso(files: Mapping[str, str]) -> bytes:
    """An ISO 9660 image labelled "cidata" holding `files` (Joliet + Rock Ridge names)."""
    import pycdlib  # imported here: only apply needs it, and it costs start-up time

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    for i, (name, text) in enumerate(sorted(files.items())):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()
