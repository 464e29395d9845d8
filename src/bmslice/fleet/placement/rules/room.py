"""How many VMs of one class the hosts can take, each host counted on its own: a refusal that
needs no search when even that is short, and an upper bound per host for the model.

On one host, VMs of one class are held back by max_per_host (one per host for control planes
apart), by the cores and memory of each NUMA node (a node takes as many shares as fit it
alone) and by its NICs (VFs per PF over the VFs a VM takes, whole PFs over the PFs it takes).
The sum over the hosts of the least of these is what the fleet can hold at best.

    c001: 71 worker VM(s) to place, the worker hosts hold at most 66 of them, so c001-worker-1
    .. c001-worker-67 (67 VMs) cannot all be placed: on each host the least of what max_per_host 2 (98 in all),
    its whole cores per NUMA node (122 in all), its memory (178 in all) and its free VFs (8701
    in all) allow
"""

from __future__ import annotations

from collections.abc import Iterable

from bmslice.fleet.placement.problem import Host, Problem, VmClass, names_text
from bmslice.fleet.placement.rules.base import Rule
from bmslice.fleet.placement.rules.control_apart import apart, racks_apart
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import NicKind, Role
from bmslice.plan.capacity import Load, NodeFree

LIMITS = ("max_per_host", "whole cores per NUMA node", "memory", "NICs")


def _fitting(free: NodeFree, used: Load, load: Load, most: int) -> int:
    """How many `load`s more fit on the node's cores (memory apart), at most `most`: bisection,
    more never fit where fewer do not."""

    def fits(n: int) -> bool:
        return free.fits(Load(used.singles + n * load.singles, used.pairs + n * load.pairs, 0))

    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def limits(base: Tally, cls: VmClass, host: Host, rule_room: int) -> dict[str, int]:
    """Each limit's bound on the VMs of `cls` on `host` (with only the VMs that stay)."""
    most = min(cls.count, rule_room)
    share = cls.shares[-1]  # the smaller share (without the emulator core) bounds from above
    k = len(cls.shares)
    cores: list[int] = []
    memory: list[int] = []
    both: list[int] = []  # a node takes a share only where its cores and its memory both have room
    for node in host.nodes:
        used = base.load[(host.name, node.id)]
        cores.append(_fitting(node.free, used, share, most * k))
        left = node.free.memory_mib - used.memory_mib
        memory.append(min(left // share.memory_mib, most * k) if share.memory_mib else most * k)
        both.append(min(cores[-1], memory[-1]))
    out = {
        "max_per_host": rule_room,
        "whole cores per NUMA node": _spread(cores, k),
        "memory": _spread(memory, k),
        "cores and memory": _spread(both, k),
    }
    nic = cls.nic
    if nic is not None:
        pfs = [pf for pf in host.pfs if pf.matches(nic.pf)]
        if nic.kind is NicKind.SRIOV:
            out["NICs"] = sum(max(base.vfs_left(host, pf.address), 0) // nic.count for pf in pfs)
        else:
            whole = sum(1 for pf in pfs if pf.passable and base.whole_free(host, pf.address))
            out["NICs"] = whole // nic.count
    return out


def _spread(per_node: list[int], k: int) -> int:
    """VMs of k shares on distinct nodes that `per_node` shares allow at most: without its j
    fullest nodes, each VM still takes k - j of the others."""
    if len(per_node) < k:
        return 0
    ordered = sorted(per_node)
    return min(sum(ordered[: len(ordered) - j]) // (k - j) for j in range(k))


def room(problem: Problem, base: Tally, cls: VmClass, host: Host) -> int:
    """How many more VMs of the cluster and role the rules let `host` take."""
    taken = base.per_host[(host.name, cls.cluster, cls.role)]
    most = problem.cluster(cls.cluster).spread.max_per_host
    if cls.role is Role.CONTROL and apart(problem, cls.cluster):
        most = 1
    return max(most - taken, 0)


class Room(Rule):
    name = "room"

    def check(self, problem: Problem, base: Tally) -> str | None:
        for cls in problem.classes:
            hosts = problem.role_hosts[cls.role]
            per_limit = {name: 0 for name in LIMITS}
            total = 0
            for host in hosts:
                bounds = limits(base, cls, host, room(problem, base, cls, host))
                total += min(bounds.values())
                for name in per_limit:
                    per_limit[name] += bounds.get(name, 0)
            if cls.role is Role.CONTROL and racks_apart(problem, cls.cluster):
                total = min(total, len(problem.racks[Role.CONTROL]))
            if total >= cls.count:
                continue
            role = cls.role.value
            # any total + 1 of the class already cannot all be placed: name that many, not the whole class
            named = names_text(cls.names[: total + 1])
            limits_text = [
                f"{_limit_text(name, problem, cls, hosts)} ({value} in all)"
                for name, value in per_limit.items()
                if name in _relevant(cls)
            ]
            kept = " with the kept VMs where they are" if base.spots else ""
            return (
                f"{cls.cluster}: {cls.count} {role} VM(s) to place, the {role} hosts hold at most {total} of them{kept}, "
                f"so {named} cannot all be placed: on each host the least of what {', '.join(limits_text[:-1])} and "
                f"{limits_text[-1]} allow"
            )
        return None


def _relevant(cls: VmClass) -> Iterable[str]:
    return LIMITS if cls.nic is not None else LIMITS[:3]


def _limit_text(name: str, problem: Problem, cls: VmClass, hosts: tuple[Host, ...]) -> str:
    if name == "max_per_host":
        if cls.role is Role.CONTROL and apart(problem, cls.cluster):
            return "control planes apart (one per host)"
        return f"max_per_host {problem.cluster(cls.cluster).spread.max_per_host}"
    if name == "NICs" and cls.nic is not None:
        return "its free VFs" if cls.nic.kind is NicKind.SRIOV else "its free NICs to pass through"
    return f"its {name}"
