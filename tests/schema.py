"""libvirt's own RelaxNG schema for domain XML (package libvirt0)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from lxml import etree

DOMAIN_RNG = Path("/usr/share/libvirt/schemas/domain.rng")


@cache
def domain_schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(DOMAIN_RNG)))


def schema_errors(xml: str) -> str | None:
    """None when `xml` validates, else libvirt's schema complaint."""
    schema = domain_schema()
    if schema.validate(etree.fromstring(xml.encode())):
        return None
    return str(schema.error_log.last_error)
