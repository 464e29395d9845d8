"""What a libvirt URI says about where the host is (no connection needed).

`qemu:///system`, `qemu:///system?` and `qemu+unix:///system[?socket=...]` all reach the
libvirtd of this machine: a Unix socket is local whatever the URI's host part says. A
URI with a host and a network transport (`qemu+ssh://h/system`, `qemu://localhost/system`
over TLS) is treated as remote, even when it loops back, so bmslice never reads this
machine's /sys for another machine. Which *host* a URI reaches (for the lock) is asked of
the connection itself: see `libvirt_conn.host_key`.

>>> is_local("qemu+unix:///system?socket=/run/libvirt/libvirt-sock"), is_local("qemu+ssh://h/system")
(True, False)
"""

from __future__ import annotations

from urllib.parse import urlsplit


def is_local(uri: str) -> bool:
    """A QEMU driver URI that reaches this machine's own libvirtd."""
    parts = urlsplit(uri)
    driver, _, transport = parts.scheme.partition("+")
    return driver == "qemu" and (transport == "unix" or (transport == "" and parts.netloc == ""))


def is_local_system(uri: str) -> bool:
    """This machine's system instance (its QEMU pid files live under /run/libvirt/qemu)."""
    return is_local(uri) and urlsplit(uri).path.rstrip("/") == "/system"
