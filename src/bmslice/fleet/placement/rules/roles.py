"""H1 roles: control-plane VMs on control hosts, workers on worker hosts."""

from __future__ import annotations

from bmslice.fleet.placement.problem import Host, Problem, VmClass
from bmslice.fleet.placement.rules.base import Rule
from bmslice.fleet.placement.tally import Tally


class Roles(Rule):
    name = "roles"

    def check(self, problem: Problem, base: Tally) -> str | None:
        for cls in problem.classes:
            if not problem.role_hosts[cls.role]:
                return f"{cls.names[0]}: the inventory has no {cls.role.value} host"
        return None

    def admits(self, problem: Problem, base: Tally, cls: VmClass, host: Host, relax: frozenset[str]) -> bool:
        return host.role is cls.role

    def host_ok(self, tally: Tally, cls: VmClass, host: Host) -> bool:
        return host.role is cls.role
