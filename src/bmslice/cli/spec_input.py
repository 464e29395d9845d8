"""Loading a spec for a command: the model's own checks, then the files the spec names.

plan, render and show check disk images when the host they read is this machine; apply
also reads every cloud-init file through the bounded reader before it changes anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bmslice.safe_text import one_line

if TYPE_CHECKING:
    from bmslice.model.spec import Spec


def uri_is_local(uri: str) -> bool:
    from bmslice.apply.context import is_local  # the one definition of a local URI

    return is_local(uri)


def reads_this_machine(args: argparse.Namespace) -> bool:
    """The command's host source is this machine: no --host-root tree, no hwloc file, no remote URI."""
    if getattr(args, "host_root", None) is not None or getattr(args, "hwloc", None) is not None:
        return False
    uri = getattr(args, "connect", None)
    return uri is None or uri_is_local(uri)


def load_spec_for(path: Path, *, local_host: bool, cloud_init: bool = False) -> Spec:
    from bmslice.model.spec import load_spec
    from bmslice.model.spec_files import check_cloud_init_files, check_disk_images

    spec = load_spec(path)
    origin = one_line(str(path))
    if local_host:
        check_disk_images(spec, origin)
    if cloud_init:
        check_cloud_init_files(spec, origin, path.resolve().parent)
    return spec
