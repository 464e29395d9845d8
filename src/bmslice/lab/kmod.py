"""Which kernel modules to load, in which order, read from a kernel's `modules.dep`.

>>> dep = "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\\n" \\
...       "kernel/net/9p/9pnet.ko:\\nkernel/fs/netfs/netfs.ko:\\n"
>>> load_order(parse_modules_dep(dep), ["9p"])
['kernel/net/9p/9pnet.ko', 'kernel/fs/netfs/netfs.ko', 'kernel/fs/9p/9p.ko']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bmslice.errors import LabError


def module_name(path: str) -> str:
    """kernel/drivers/virtio/virtio_pci.ko(.xz) -> virtio_pci ('-' and '_' are one to the kernel)."""
    base = path.rsplit("/", 1)[-1]
    return base.split(".ko", 1)[0].replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    """module path -> the paths it needs, as depmod wrote them."""
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        path, sep, needs = line.partition(":")
        if sep:
            deps[path.strip()] = tuple(needs.split())
    return deps


def load_order(deps: Mapping[str, tuple[str, ...]], wanted: Iterable[str]) -> list[str]:
    """Paths of `wanted` modules and everything they need, each after what it needs."""
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str, chain: tuple[str, ...]) -> None:
        if path in seen:
            return
        if path in chain:
            raise LabError(f"kernel modules depend on each other in a loop: {' -> '.join((*chain, path))}")
        for need in deps.get(path, ()):
            visit(need, (*chain, path))
        seen.add(path)
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise LabError(f"kernel module {name} is not in modules.dep")
        visit(path, ())
    return order
