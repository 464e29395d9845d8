"""The files the lab boots from: its initramfs (busybox + the few modules that reach the
root file system) and the stage-2 script it switches to. Built from the cached assets;
the same assets give the same bytes.
"""

from __future__ import annotations

import gzip
import lzma
from importlib.resources import files
from pathlib import Path

from bmslice.errors import LabError
from bmslice.lab.cpio import Cpio
from bmslice.lab.kmod import load_order, parse_modules_dep
from bmslice.lab.qemu_cmdline import ROOT_TAG, SHARE_TAG

# What stage 1 needs to reach the root: virtio-pci, 9p over virtio, overlayfs; and a root disk
# when the lab has one (ext4 asks the crypto API for crc32c when it mounts: loaded first).
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_blk", "crc32c_generic", "ext4")


def guest_script(name: str) -> str:
    return files("bmslice.lab.guest").joinpath(name).read_text()


def init_script(modules: list[str], kernel_release: str, modules_dir: Path) -> str:
    text = guest_script("init.sh")
    for key, value in {
        "@MODULES@": " ".join(modules),
        "@KVER@": kernel_release,
        "@MODDIR@": str(modules_dir),
        "@ROOT_TAG@": ROOT_TAG,
        "@SHARE_TAG@": SHARE_TAG,
    }.items():
        text = text.replace(key, value)
    return text


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else data


def build_initramfs(busybox: Path, modules_dir: Path, kernel_release: str) -> bytes:
    """A gzip'd newc cpio: /init, /bin/busybox, /modules/*.ko, the mount points, /dev/console."""
    try:
        deps = parse_modules_dep((modules_dir / "modules.dep").read_text())
        order = load_order(deps, INITRAMFS_MODULES)
        archive = Cpio()
        for directory in ("bin", "dev", "proc", "sys", "lower", "rw", "newroot", "modules"):
            archive.directory(directory)
        archive.char_device("dev/console", 5, 1)
        archive.file("bin/busybox", busybox.read_bytes(), 0o755)
        names = []
        for rel in order:
            name = Path(rel).name.removesuffix(".xz")
            archive.file(f"modules/{name}", _module_bytes(modules_dir / rel))
            names.append(name)
        archive.file("init", init_script(names, kernel_release, modules_dir).encode(), 0o755)
    except OSError as exc:
        raise LabError(f"cannot build the lab's initramfs: {exc.filename}: {exc.strerror or exc}") from None
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)
