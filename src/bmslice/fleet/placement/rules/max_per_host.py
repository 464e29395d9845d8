"""H2 max_per_host: at most `spread.max_per_host` VMs of one cluster and role on one host."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from bmslice.fleet.placement.problem import Host, Problem, VmClass
from bmslice.fleet.placement.rules.base import Rule
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import Role

if TYPE_CHECKING:
    from bmslice.fleet.placement.cpsat_model import FleetModel


def limit(problem: Problem, cluster: str) -> int:
    return problem.cluster(cluster).spread.max_per_host


class MaxPerHost(Rule):
    name = "max_per_host"

    def check(self, problem: Problem, base: Tally) -> str | None:
        """More VMs of a cluster and role than its hosts may hold at max_per_host each."""
        wanted: Counter[tuple[str, Role]] = Counter()
        first: dict[tuple[str, Role], str] = {}
        for cls in problem.classes:
            wanted[(cls.cluster, cls.role)] += cls.count
            first.setdefault((cls.cluster, cls.role), cls.names[0])
        for (cluster, role), count in wanted.items():
            hosts = problem.role_hosts[role]
            if not hosts:
                continue  # roles.py says so
            most = limit(problem, cluster)
            fixed = sum(n for (h, c, r), n in base.per_host.items() if c == cluster and r is role)
            room = sum(max(most - base.per_host[(h.name, cluster, role)], 0) for h in hosts)
            if count <= room:
                continue
            what = f"{role.value} host"
            if room == 0:
                return (
                    f"{first[(cluster, role)]}: every {what} already runs {most} {cluster} {role.value} VM(s) "
                    f"(spread.max_per_host {most}); add {what}s or raise max_per_host"
                )
            return (
                f"{cluster}: {count + fixed} {role.value} VMs, at most {most} per host (spread.max_per_host) on "
                f"{len(hosts)} {what}(s) is {most * len(hosts)}; add {what}s or raise max_per_host"
            )
        return None

    def host_ok(self, tally: Tally, cls: VmClass, host: Host) -> bool:
        return tally.per_host[(host.name, cls.cluster, cls.role)] < cls.max_per_host

    def shortfall(self, tally: Tally, cls: VmClass, host: Host) -> str | None:
        if self.host_ok(tally, cls, host):
            return None
        role = cls.role.value
        return f"runs {cls.max_per_host} {cls.cluster} {role} VM(s) already (max_per_host {cls.max_per_host})"

    def constrain(self, m: FleetModel) -> None:
        if m.relaxed(self.name):
            return
        for host in m.problem.hosts:
            groups: dict[tuple[str, Role], list[int]] = {}
            for (k, _h, _nodes), var in m.on_host(host.name):
                cls = m.problem.cls(k)
                groups.setdefault((cls.cluster, cls.role), []).append(var)
            for (cluster, role), variables in groups.items():
                room = limit(m.problem, cluster) - m.base.per_host[(host.name, cluster, role)]
                m.sat.at_most(m.total(variables), room)
