"""H6 NICs: `passthrough, count c` takes c distinct whole PFs; `sriov, count c` takes c VFs of
one PF. Only PFs a tenant may get (problem.py) and that match `pf:`; a PF passed through
serves no other VM, whole or VFs; VFs per PF within what the host offers. A PF whose IOMMU
group holds other PFs the host drives goes with them, to one VM, as the host planner wants.
With the host's nic_numa_policy `require`, only PFs on the VM's nodes (or of unknown node).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from itertools import combinations
from typing import TYPE_CHECKING

from bmslice.fleet.placement.problem import Host, Nodes, Pf, Problem, VmClass, nic_assignment
from bmslice.fleet.placement.rules.base import Rule
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import ANY, NicAssignment, NicKind, NicRequest

if TYPE_CHECKING:
    from bmslice.fleet.placement.cpsat_model import FleetModel

VFS = "VFs"
WHOLE = "whole NICs"


def local(pf: Pf, nodes: Nodes) -> bool:
    return pf.numa_node is None or pf.numa_node in nodes


def _allowed(host: Host, pf: Pf, nodes: Nodes) -> bool:
    return not host.local_nics_only or local(pf, nodes)


def _unit(host: Host, pf: Pf) -> tuple[Pf, ...]:
    """The PFs passed through together with `pf`: itself and its IOMMU mates."""
    return (pf, *(host.pf(mate) for mate in pf.mates))


def _whole_ok(tally: Tally, host: Host, want: NicRequest, pf: Pf) -> bool:
    return pf.passable and pf.matches(want.pf) and tally.whole_free(host, pf.address)


def options(tally: Tally, host: Host, want: NicRequest, nodes: Nodes, vlan: int) -> Iterator[tuple[NicAssignment, ...]]:
    """The NICs a VM on `nodes` may get, the preferred first: PFs on its nodes first, then by name."""
    candidates = sorted(
        (pf for pf in host.pfs if pf.matches(want.pf) and _allowed(host, pf, nodes)),
        key=lambda pf: (pf.numa_node not in nodes, pf.name),
    )
    if want.kind is NicKind.SRIOV:
        for pf in candidates:
            if tally.vfs_left(host, pf.address) >= want.count:
                yield (nic_assignment(pf, NicKind.SRIOV, vlan, want.count),)
        return
    chosen: list[Pf] = []
    for pf in candidates:
        if pf in chosen or not _whole_ok(tally, host, want, pf):
            continue
        unit = _unit(host, pf)
        if len(chosen) + len(unit) > want.count:
            continue
        if all(_whole_ok(tally, host, want, mate) and _allowed(host, mate, nodes) for mate in unit):
            chosen.extend(unit)
        if len(chosen) == want.count:
            yield tuple(nic_assignment(p, NicKind.PASSTHROUGH, vlan) for p in sorted(chosen, key=lambda p: p.name))
            return


def every_option(
    tally: Tally, host: Host, want: NicRequest, nodes: Nodes, vlan: int, limit: int = 64
) -> Iterator[tuple[NicAssignment, ...]]:
    """Every choice of NICs (up to `limit`), the preferred first: what the host planner is asked
    about when it refuses a VM alone."""
    if want.kind is NicKind.SRIOV:
        yield from options(tally, host, want, nodes, vlan)
        return
    units: list[tuple[Pf, ...]] = []
    for pf in sorted(host.pfs, key=lambda pf: (pf.numa_node not in nodes, pf.name)):
        unit = _unit(host, pf)
        if any(pf in u for u in units):
            continue
        if all(_whole_ok(tally, host, want, p) and _allowed(host, p, nodes) for p in unit):
            units.append(unit)
    given = 0
    for size in range(1, want.count + 1):
        for chosen in combinations(units, size):
            pfs = [pf for unit in chosen for pf in unit]
            if len(pfs) != want.count:
                continue
            yield tuple(nic_assignment(p, NicKind.PASSTHROUGH, vlan) for p in sorted(pfs, key=lambda p: p.name))
            given += 1
            if given >= limit:
                return


def pick(tally: Tally, host: Host, want: NicRequest, nodes: Nodes, vlan: int) -> tuple[NicAssignment, ...] | None:
    return next(options(tally, host, want, nodes, vlan), None)


class Nics(Rule):
    name = WHOLE

    def admits(self, problem: Problem, base: Tally, cls: VmClass, host: Host, relax: frozenset[str]) -> bool:
        want = cls.nic
        if want is None:
            return True
        if want.kind is NicKind.SRIOV:
            need = 1 if VFS in relax else want.count
            return any(pf.matches(want.pf) and base.vfs_left(host, pf.address) >= need for pf in host.pfs)
        free = [pf for pf in host.pfs if _whole_ok(base, host, want, pf) or (WHOLE in relax and pf.passable)]
        return len(free) >= want.count

    def slot_admits(self, base: Tally, cls: VmClass, host: Host, nodes: Nodes, relax: frozenset[str]) -> bool:
        want = cls.nic
        if want is None or not host.local_nics_only:
            return True
        return any(pf.matches(want.pf) and local(pf, nodes) for pf in host.pfs)

    def shortfall(self, tally: Tally, cls: VmClass, host: Host) -> str | None:
        want = cls.nic
        if want is None or any(
            next(options(tally, host, want, nodes, cls.vlan), None) is not None for nodes in cls.slots(host)
        ):
            return None
        named = [pf for pf in host.pfs if pf.matches(want.pf)]
        if not named:
            if want.pf != ANY and want.pf in host.excluded:
                return host.excluded[want.pf]
            return f"no NIC {want.pf} it may use" if want.pf != ANY else "no cabled NIC a tenant may use"
        if want.kind is NicKind.PASSTHROUGH:
            free = [pf.name for pf in named if _whole_ok(tally, host, want, pf)]
            blocked = [f"{pf.name} {pf.blocked}" for pf in named if pf.blocked]
            why = f"; {'; '.join(blocked)}" if blocked else ""
            return f"{len(free)} whole NIC(s) free ({', '.join(free) or 'none'}), needs {want.count}{why}"
        vfs = ", ".join(f"{pf.name} {max(tally.vfs_left(host, pf.address), 0)}" for pf in named)
        return f"free VFs per NIC: {vfs}; needs {want.count} on one NIC"

    def constrain(self, m: FleetModel) -> None:
        whole_of: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
        vfs_of: defaultdict[tuple[str, str], list[tuple[int, int, int]]] = defaultdict(list)  # var, VFs, most
        for key, var in sorted(m.place.items()):
            k, host_name, nodes = key
            cls = m.problem.cls(k)
            want = cls.nic
            if want is None:
                continue
            host = m.problem.host(host_name)
            label = f"{cls.label}|{host_name}|{','.join(map(str, nodes))}"
            upper = m.upper[key]
            if want.kind is NicKind.SRIOV:
                need = 1 if m.relaxed(VFS) else want.count
                pfs = [
                    pf
                    for pf in host.pfs
                    if pf.matches(want.pf) and _allowed(host, pf, nodes) and m.base.vfs_left(host, pf.address) >= need
                ]
                takes = []
                for pf in pfs:
                    z = m.sat.var(0, upper, f"vfs_from[{label}|{pf.name}]")
                    m.sriov[(*key, pf.address)] = z
                    vfs_of[(host_name, pf.address)].append((z, want.count, upper))
                    takes.append(z)
                m.sat.equal([*m.total(takes), (var, -1)], 0)
                continue
            relaxed = m.relaxed(WHOLE)
            pfs = [
                pf
                for pf in host.pfs
                if all(
                    (_whole_ok(m.base, host, want, p) or (relaxed and p.passable)) and _allowed(host, p, nodes)
                    for p in _unit(host, pf)
                )
                and len(_unit(host, pf)) <= want.count
            ]
            given = {}
            for pf in pfs:
                w = m.sat.var(0, upper if relaxed else 1, f"whole[{label}|{pf.name}]")
                if relaxed:
                    m.sat.at_most([(w, 1), (var, -1)], 0)
                m.whole[(*key, pf.address)] = w
                whole_of[(host_name, pf.address)].append(w)
                given[pf.address] = w
            m.sat.equal([*m.total(list(given.values())), (var, -want.count)], 0)
            for pf in pfs:
                for mate in pf.mates:
                    if mate in given:
                        m.sat.equal([(given[pf.address], 1), (given[mate], -1)], 0)
        m.index_nics()
        for host in m.problem.hosts:
            for pf in host.pfs:
                whole = whole_of.get((host.name, pf.address), [])
                vfs = vfs_of.get((host.name, pf.address), [])
                if whole and not m.relaxed(WHOLE):
                    m.sat.at_most(m.total(whole), 1)
                if not vfs:
                    continue
                cap = m.base.vfs_left(host, pf.address)
                if m.relaxed(VFS):
                    cap = sum(count * most for _, count, most in vfs)
                taken = m.weighted([z for z, _, _ in vfs], [count for _, count, _ in vfs])
                if whole and not m.relaxed(WHOLE):  # a PF passed through whole gives no VFs
                    m.sat.at_most(taken + [(w, cap) for w in whole], cap)
                else:
                    m.sat.at_most(taken, cap)
