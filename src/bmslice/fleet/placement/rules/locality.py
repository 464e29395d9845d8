"""O3 cross-NUMA NICs: each NIC entry (a passed-through PF, the PF of a VM's VFs) whose PF is on
none of the VM's nodes counts one; a PF of unknown node counts as cross.

Lower bound (no search): an entry is local only on a node holding its PF, so per node at most
as many local entries as its PFs can serve and as many NIC VMs' shares as fit in its free
cores and memory; every entry beyond the sum over all nodes is cross."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from bmslice.fleet.placement.problem import Nodes, Problem, Spot
from bmslice.fleet.placement.rules.base import ObjectiveRule, Term
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import NicAssignment, NicKind

if TYPE_CHECKING:
    from bmslice.fleet.placement.cpsat_model import FleetModel


def cross(nodes: Nodes, nics: tuple[NicAssignment, ...]) -> int:
    return sum(1 for nic in nics if nic.numa_node is None or nic.numa_node not in nodes)


class NicLocality(ObjectiveRule):
    name = "cross-NUMA NICs"
    level = 2

    def cost(self, problem: Problem, layout: Mapping[str, Spot]) -> int:
        return sum(cross(spot.nodes, spot.nics) for spot in layout.values())

    def lower_bound(self, problem: Problem, base: Tally) -> int:
        fixed = self.cost(problem, base.spots)
        local = 0
        entries = 0
        for role, hosts in problem.role_hosts.items():
            classes = [c for c in problem.classes if c.role is role and c.nic is not None]
            if not classes:
                continue
            entries += sum(c.count * c.entries for c in classes)
            most_entries = max(c.entries for c in classes)
            vf_count = min((c.nic.count for c in classes if c.nic and c.nic.kind is NicKind.SRIOV), default=0)
            whole = any(c.nic and c.nic.kind is NicKind.PASSTHROUGH for c in classes)
            share_cores = min(min(s.singles + s.pairs for s in c.shares) for c in classes)
            share_memory = min(min(s.memory_mib for s in c.shares) for c in classes)
            for host in hosts:
                for node in host.nodes:
                    serve = 0
                    for pf in host.pfs:
                        if pf.numa_node != node.id:
                            continue
                        by_vfs = base.vfs_left(host, pf.address) // vf_count if vf_count else 0
                        by_whole = 1 if whole and base.whole_free(host, pf.address) and pf.passable else 0
                        serve += max(by_vfs, by_whole)
                    if not serve:
                        continue
                    fit = min(
                        base.cores_left(host, node.id) // max(share_cores, 1),
                        base.memory_left(host, node.id) // max(share_memory, 1),
                    )
                    local += min(serve, fit * most_entries)
        return fixed + max(entries - local, 0)

    def constrain(self, m: FleetModel) -> None:
        terms = []
        upper = 0
        for (k, host, nodes, pf), var in (*m.sriov.items(), *m.whole.items()):
            if m.problem.host(host).pf(pf).numa_node not in nodes:
                terms.append(var)
                upper += m.upper[(k, host, nodes)]
        if terms:
            m.terms[self.level].append(Term(m.total(terms), 0, upper))
