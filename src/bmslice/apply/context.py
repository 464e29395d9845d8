"""What apply, verify, status and destroy share: the connection, the host, the live slices, the plan.

The applied layout is read back from the live domains themselves (each carries the plan
it was rendered from in its bmslice metadata), so re-planning keeps running slices where
they are without a state file that could disagree with libvirt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmslice.apply.libvirt_conn import managed_domains
from bmslice.apply.uri import is_local as is_local  # re-exported: callers ask context for it
from bmslice.errors import ApplyError
from bmslice.model.live import LiveDomain
from bmslice.model.plan import Plan, VmPlan, vm_from_dict
from bmslice.model.spec import Spec
from bmslice.model.topology import HostTopology
from bmslice.plan.planner import make_plan, slice_changes
from bmslice.render.domain_xml import from_xml


@dataclass
class Context:
    conn: Any
    uri: str
    topology: HostTopology
    live: dict[str, LiveDomain]
    recorded: dict[str, VmPlan]  # the plan each live slice was applied with
    plan: Plan
    moving: tuple[str, ...]  # slices whose spec changed so that they must move (--allow-move)


def discover(uri: str, host_root: Path | None) -> HostTopology:
    """A local host is read from sysfs (it knows more than libvirt); a remote one through libvirt."""
    if host_root is not None:
        from bmslice.topology.sysfs import read_host_tree

        return read_host_tree(host_root)
    if is_local(uri):
        from bmslice.topology.netlink import with_live_network
        from bmslice.topology.sysfs import read_host_tree

        return with_live_network(read_host_tree(Path("/")))
    from bmslice.apply.connection import read_libvirt_topology

    return read_libvirt_topology(uri)


def recorded_plan(live: LiveDomain) -> VmPlan | None:
    raw = from_xml(live.inactive_xml).plan_json
    if raw is None:
        return None
    try:
        return vm_from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        raise ApplyError(f"{live.name}: its bmslice metadata is unreadable; destroy and re-apply it") from None


def load_context(
    spec: Spec,
    origin: str,
    uri: str,
    conn: Any,
    host_root: Path | None,
    allow_move: bool,
    topology: HostTopology | None = None,
) -> Context:
    """Everything read about the host through `conn` (the caller's, open for the whole run);
    `topology`: the host as the caller already read it (the exporter reads it once)."""
    topology = topology or discover(uri, host_root)
    live = managed_domains(conn)
    recorded = {name: old for name, dom in live.items() if (old := recorded_plan(dom)) is not None}
    names = {vm.name for vm in spec.vms}
    moving = tuple(name for name, old in recorded.items() if name in names and slice_changes(old, spec.vm(name)))
    keep = [old for name, old in recorded.items() if not (allow_move and name in moving)]
    plan = make_plan(topology, spec, origin=origin, keep=keep)
    return Context(conn, uri, topology, live, recorded, plan, moving if allow_move else ())
