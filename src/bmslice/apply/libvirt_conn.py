"""Opening a read-write libvirt connection and reading live domains back.

An error is never taken for an absence: only libvirt's own "no such domain" code means "not
there"; anything else (a lost connection above all) is raised, so a dropped libvirtd cannot
make a slice look undefined or unmanaged. A slice is a domain whose XML carries bmslice
metadata (read from the XML, so another version's namespace counts too).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import libvirt

from bmslice.apply.connection import libvirt_error_text, open_connection
from bmslice.apply.uri import is_local_system
from bmslice.cpuset import CpuSet
from bmslice.errors import ApplyError
from bmslice.model.live import LiveDomain
from bmslice.render.domain_xml import slice_metadata

LibvirtError = libvirt.libvirtError
VALIDATE = libvirt.VIR_DOMAIN_DEFINE_VALIDATE
AFFECT_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
NO_VOLUME = libvirt.VIR_ERR_NO_STORAGE_VOL
_UNSUPPORTED = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, libvirt.VIR_ERR_OPERATION_INVALID)


def reason(exc: BaseException) -> str:
    return libvirt_error_text(exc) if isinstance(exc, libvirt.libvirtError) else str(exc)


def open_rw(uri: str) -> Any:
    return open_connection(uri, read_only=False, error=ApplyError)


@contextmanager
def connected(uri: str) -> Iterator[Any]:
    """A read-write connection, closed on the way out (a connection already lost closes quietly)."""
    conn = open_rw(uri)
    try:
        yield conn
    finally:
        with suppress(libvirt.libvirtError):
            conn.close()


@contextmanager
def libvirt_errors(uri: str) -> Iterator[None]:
    """The boundary of apply, verify and destroy: a libvirt error that escaped becomes one line."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise ApplyError(f"libvirt on {uri}: {libvirt_error_text(exc)}") from None


def host_key(conn: Any) -> str:
    """Which host a connection reaches, as the host itself says (for the one-run-per-host lock).

    Asked of libvirt, not read off the URI, so `qemu:///system`, `qemu+unix:///system` and
    `qemu+ssh://` to this machine's own name are one host. The driver is part of the key
    because libvirt's test driver answers with this machine's name for a host it invents.
    """
    return f"{conn.getType().lower()}@{conn.getHostname()}"


def host_cpu_count(conn: Any) -> int:
    return int(conn.getCPUMap(0)[0])


def cpumap(cpus: CpuSet, count: int) -> tuple[bool, ...]:
    """libvirt's CPU map; a CPU the host does not have is refused, never silently dropped."""
    missing = CpuSet.from_iter(i for i in cpus if i >= count)
    if missing:
        raise ApplyError(f"CPUs {missing} are not on this host (libvirt reports CPUs 0-{count - 1})")
    return tuple(i in cpus for i in range(count))


def _cpuset(mask: Any) -> CpuSet:
    return CpuSet.from_iter(i for i, on in enumerate(mask) if on)


def stop_domain(dom: Any) -> None:
    """Stop (destroy) the domain; one that stopped meanwhile is what was wanted, not a failure."""
    try:
        dom.destroy()
    except libvirt.libvirtError:
        if dom.isActive():
            raise


def lookup(conn: Any, name: str) -> Any | None:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise ApplyError(f"cannot look up domain {name}: {libvirt_error_text(exc)}") from None


def _pid(conn: Any, name: str) -> int | None:
    if not is_local_system(conn.getURI()):
        return None
    try:
        return int(open(f"/run/libvirt/qemu/{name}.pid").read().strip())
    except (OSError, ValueError):
        return None


def read_live(conn: Any, dom: Any, inactive_xml: str | None = None) -> LiveDomain:
    """Everything verify needs about one domain; pin info is the live one when running."""
    name = dom.name()
    active = bool(dom.isActive())
    if inactive_xml is None:
        inactive_xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    xml = dom.XMLDesc(0) if active else inactive_xml
    flags = AFFECT_LIVE if active else AFFECT_CONFIG
    try:
        vcpus = tuple(_cpuset(m) for m in dom.vcpuPinInfo(flags))
        emulator = _cpuset(dom.emulatorPinInfo(flags))
        iothreads = tuple((int(i), _cpuset(m)) for i, m in dom.ioThreadInfo(flags))
    except libvirt.libvirtError as exc:  # a driver without pin info still reports XML
        if exc.get_error_code() not in _UNSUPPORTED:
            raise
        vcpus, emulator, iothreads = (), None, ()
    return LiveDomain(
        name=name,
        active=active,
        autostart=bool(dom.autostart()),
        xml=xml,
        inactive_xml=inactive_xml,
        vcpu_pins=vcpus,
        emulator_pin=emulator,
        iothread_pins=iothreads,
        pid=_pid(conn, name) if active else None,
    )


def managed_domains(conn: Any) -> dict[str, LiveDomain]:
    """Every domain bmslice defined, by name: it carries bmslice metadata, this version's or
    another's (whether that metadata reads back as a plan is apply/context.py's question)."""
    found = {}
    for dom in conn.listAllDomains(0):
        try:
            inactive_xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            if slice_metadata(inactive_xml) is not None:
                found[dom.name()] = read_live(conn, dom, inactive_xml)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # undefined meanwhile: simply not there
                raise
    return found
