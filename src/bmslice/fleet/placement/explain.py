"""Why no placement exists, in operator terms (the solver proved it; this says it).

1. A VM that fits on no host even alone (with only the VMs that stay where they are): the
   refusal names it and what each candidate host lacks, in the cores it needs on that server.
2. A class of VMs the hosts cannot hold even counted one host at a time (rules/room.py).
3. Else what binds - each rule left out in turn (cores, memory, VFs, whole NICs,
   max_per_host, control planes apart...), naming those whose absence lets the VMs fit - and
   the fewest VMs that cannot all be placed together: whole classes dropped while the rest
   still does not fit, then each count cut by bisection (fewer VMs never fit worse), each
   probe a CP-SAT feasibility solve of at most PROBE_S:

    red-worker-1, red-worker-2, blue-worker-1 cannot all be placed: too few free whole cores.
    Each red worker needs 4 cores and 1GiB on one NUMA node; blue-worker-1 needs 2 cores and
    1GiB on one NUMA node. Free on the worker hosts: a (SMT) node 0 5 cores 30GiB; ..."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from bmslice.fleet.placement.first_pass import best_spot, order
from bmslice.fleet.placement.inputs import nic_phrase
from bmslice.fleet.placement.problem import Host, Problem, VmClass
from bmslice.fleet.placement.rules import Rules
from bmslice.fleet.placement.rules.capacity import CORES, MEMORY
from bmslice.fleet.placement.rules.control_apart import RACKS
from bmslice.fleet.placement.rules.host_planner import NAME as HOST_PLANNER
from bmslice.fleet.placement.rules.nics import VFS, WHOLE
from bmslice.fleet.placement.rules.room import Room
from bmslice.fleet.placement.tally import Tally
from bmslice.model.fleet import NicKind, Role
from bmslice.model.sizes import format_mib
from bmslice.plan.capacity import Load, plural

MESSAGE_HOSTS = 4  # per-host reasons quoted in a refusal before "and N more"
# A probe near the edge of feasibility can take long to decide; one that does not decide in this
# time counts as "fits" (its VMs stay in the set, which is then not shown to be the fewest).
PROBE_S = 0.5
# The search for the fewest VMs stops after this long (or at the budget): the refusal is
# proven once the solver said "infeasible"; finding the fewest VMs is help, not proof.
EXPLAIN_S = 1.5

BINDS = {
    CORES: "too few free whole cores",
    MEMORY: "too little free memory",
    VFS: "too few free VFs",
    WHOLE: "too few free NICs to pass through",
    "max_per_host": "spread.max_per_host",
    "control planes apart": "control planes apart (one per host)",
    RACKS: RACKS,
    HOST_PLANNER: "the host planner refuses the layouts left",
}


def refusal(problem: Problem, base: Tally, rules: Rules, deadline: float) -> str:
    kept = " (with the kept VMs where they are)" if problem.fixed else ""
    for cls in dict.fromkeys(cls for cls, _name in order(problem)):
        if best_spot(base, rules, cls, list(problem.role_hosts[cls.role])) is None:
            return alone(problem, base, rules, replace(cls, names=cls.names[:1]))
    short = Room().check(problem, base)
    if short is not None:
        return short
    deadline = min(deadline, time.monotonic() + EXPLAIN_S)
    binds = _binding(problem, base, rules, deadline)  # first: naming what binds is the refusal's core
    counts, minimal = _smallest(problem, base, rules, deadline)
    classes = tuple(replace(cls, names=cls.names[:n]) for cls, n in zip(problem.classes, counts, strict=True) if n)
    names = ", ".join(cls.label for cls in classes)
    what = " or ".join(BINDS[key] for key in binds) if binds else "cores, memory and NICs together"
    if len(binds) > 1:
        what += " (any one of them relaxed would let them fit)"
    if HOST_PLANNER in binds:
        reasons = sorted({ng.reason for ng in rules.host_planner.no_goods})
        what += f" ({'; '.join(reasons)})"
    shown = "" if minimal else " (not shown to be the fewest within the time budget)"
    needs = "; ".join(_needs(problem, cls) for cls in classes)
    needs = needs[:1].upper() + needs[1:]
    roles = " and ".join(sorted({cls.role.value for cls in classes}))
    return (
        f"{names} cannot all be placed{kept}{shown}: {what}. {needs}. Free on the {roles} hosts: "
        f"{_free(problem, base, classes)}"
    )


# --- one VM ----------------------------------------------------------------------------------


def alone(problem: Problem, base: Tally, rules: Rules, cls: VmClass) -> str:
    """`cls`'s first VM fits on no host: what each candidate lacks."""
    name = cls.names[0]
    role = cls.role.value
    candidates = problem.role_hosts[cls.role]
    limit = cls.max_per_host
    if all(not rules.max_per_host.host_ok(base, cls, h) for h in candidates):
        return (
            f"{name}: every {role} host already runs {limit} {cls.cluster} {role} VM(s) "
            f"(spread.max_per_host {limit}); add {role} hosts or raise max_per_host"
        )
    mixed = len({_cores(h, cls.shares[0]) for h in candidates}) > 1
    reasons = []
    for host in candidates:
        why = next(
            (text for rule in rules.hard if (text := rule.shortfall(base, cls, host)) is not None),
            "no node with room and a NIC it may use at once",
        )
        need = f"needs {_cores(host, cls.shares[0])} cores; " if mixed and "max_per_host" not in why else ""
        reasons.append(f"{host.name}: {need}{why}")
    shown = reasons[:MESSAGE_HOSTS]
    if len(reasons) > MESSAGE_HOSTS:
        shown.append(f"and {len(reasons) - MESSAGE_HOSTS} more")
    shares = cls.shares
    memory = format_mib(shares[0].memory_mib)
    if len(shares) == 1:
        room = f"{_cores_text(candidates, shares[0])} and {memory} free on one NUMA node"
    else:
        room = f"{_cores_text(candidates, shares[-1])} and {memory} free on each of {len(shares)} NUMA nodes"
        first, other = _cores_text(candidates, shares[0]), _cores_text(candidates, shares[-1])
        if first != other:
            room += f" ({first.split(' free core')[0]} on one of them, for the emulator core)"
    return f"{name}: no {role} host left with {room}{nic_phrase(problem.requests[name], cls.vlan)} ({'; '.join(shown)})"


def mib(value: int) -> str:
    return format_mib(value) if value > 0 else "0MiB"


def _cores(host: Host, load: Load) -> int:
    return host.cores_for(load)


def _cores_text(hosts: Sequence[Host], load: Load) -> str:
    """'5 free cores', or with SMT and non-SMT servers both: '5 free cores (9 without SMT)'."""
    smt = sorted({_cores(h, load) for h in hosts if h.topo.smt})
    plain = sorted({_cores(h, load) for h in hosts if not h.topo.smt})
    if smt and plain:
        return f"{plural(smt[0], 'free core')} ({plain[0]} without SMT)"
    return plural((smt or plain)[0], "free core")


# --- a set of VMs ------------------------------------------------------------------------------


def _feasible(problem: Problem, base: Tally, rules: Rules, relax: frozenset[str], deadline: float) -> bool | None:
    """Whether `problem` has a placement; None: not decided within PROBE_S (or the budget)."""
    from bmslice.fleet.placement.cpsat_model import build, solve

    left = min(deadline - time.monotonic(), PROBE_S)
    if left <= 0:
        return None
    solved = solve(build(problem, base, rules.hard, relax), left)
    if solved.status == "unknown":
        return None
    return solved.found


def _smallest(problem: Problem, base: Tally, rules: Rules, deadline: float) -> tuple[list[int], bool]:
    """Counts per class of a set that cannot all be placed, and whether it is shown irreducible
    (dropping any one VM of it lets the rest fit). Fewer VMs never fit worse, so: a class that
    does not fit on its own is cut down by bisection alone; else whole classes are dropped while
    the rest still does not fit, then each count left is cut down by bisection."""
    minimal = True

    def infeasible(trial: list[int]) -> bool:
        nonlocal minimal
        classes = tuple(replace(c, names=c.names[:n]) for c, n in zip(problem.classes, trial, strict=True) if n)
        verdict = _feasible(problem.with_classes(classes), base, rules, frozenset(), deadline)
        if verdict is None:
            minimal = False
        return verdict is False

    def bisect(counts: list[int], i: int) -> None:
        lo, hi = 0, counts[i]  # infeasible with hi; find the least such count
        while lo < hi:
            mid = (lo + hi) // 2
            if infeasible([*counts[:i], mid, *counts[i + 1 :]]):
                hi = mid
            else:
                lo = mid + 1
        counts[i] = hi

    full = [cls.count for cls in problem.classes]
    counts = list(full)
    for i in range(len(counts)):
        if infeasible([*counts[:i], 0, *counts[i + 1 :]]):
            counts[i] = 0
    for i in range(len(counts)):
        if counts[i]:
            bisect(counts, i)
    return counts, minimal


def _binding(problem: Problem, base: Tally, rules: Rules, deadline: float) -> list[str]:
    nics = {cls.nic.kind for cls in problem.classes if cls.nic is not None}
    keys = [CORES, MEMORY]
    if NicKind.SRIOV in nics:
        keys.append(VFS)
    if NicKind.PASSTHROUGH in nics:
        keys.append(WHOLE)
    keys.append("max_per_host")
    if any(cls.role is Role.CONTROL for cls in problem.classes):
        keys += ["control planes apart", RACKS]
    if rules.host_planner.no_goods:
        keys.append(HOST_PLANNER)
    return [key for key in keys if _feasible(problem, base, rules, frozenset({key}), deadline)]


def _needs(problem: Problem, cls: VmClass) -> str:
    hosts = problem.role_hosts[cls.role]
    shares = cls.shares
    each = f"each {cls.cluster} {cls.role.value}" if cls.count > 1 else cls.names[0]
    where = "on one NUMA node" if len(shares) == 1 else f"on each of {len(shares)} NUMA nodes"
    nic = nic_phrase(problem.requests[cls.names[0]], cls.vlan)
    return (
        f"{each} needs {_cores_text(hosts, shares[-1]).replace(' free', '')} and "
        f"{format_mib(shares[-1].memory_mib)} {where}{nic}"
    )


def _free(problem: Problem, base: Tally, classes: Sequence[VmClass]) -> str:
    roles = {cls.role for cls in classes}
    hosts = [h for h in problem.hosts if h.role in roles]
    parts = []
    for host in hosts[:MESSAGE_HOSTS]:
        nodes = ", ".join(
            f"node {n.id} {base.cores_left(host, n.id)} cores {mib(base.memory_left(host, n.id))}" for n in host.nodes
        )
        parts.append(f"{host.name} ({'SMT' if host.topo.smt else 'no SMT'}) {nodes}")
    if len(hosts) > MESSAGE_HOSTS:
        parts.append(f"and {len(hosts) - MESSAGE_HOSTS} more")
    return "; ".join(parts)
