"""Planner completeness: make_plan against an independent exhaustive search on small random hosts.

Run: .venv/bin/python bench/completeness_bench.py [--cases 2000] [--seed 7]

The oracle here shares no code with bmslice.plan (nor with tests/oracle.py). It rebuilds
physical cores from the raw CPU list (package, die, core id; online threads only),
recomputes the host's cores, and searches every way of handing whole free cores to VMs:

- each VM sits on one NUMA node (its numa_node if given) and owns whole cores;
- the host keeps the lowest host.reserved_cores_per_node cores of each node plus CPU 0's core;
- the VM's vCPU cores carry its vCPUs 1:1 on distinct threads, every core at least one
  vCPU, an idle thread only for an odd vCPU count (no core is wasted);
- emulator: dedicated takes one more whole core of the VM's node, emulator: host none;
- per node, the VMs' memory fits node memory - host.reserved_memory_per_node;
- nic_numa_policy: require allows only nodes holding all of the VM's NICs (with a known node);
  otherwise a NIC's node only adds to the count of cross-NUMA NICs, which is minimised.

The L3 family (hosts with 2-3 L3 cache domains per NUMA node, some straddling two nodes)
is checked against tests/oracle.py's best_l3_layout instead, an exhaustive search over how
many cores of each (L3 domain, thread count) every VM takes on every node assignment, also
sharing no code with bmslice.plan: 0 feasible specs refused, 0 infeasible accepted, and the
split VMs (cores in two or more L3 domains) equal to its minimum with the fewest cross-NUMA
NICs first. Beside it, the same specs planned with the L3 domains hidden (cores taken
lowest first, as before) show what the search saves.

The multi-node family (hosts of 2-4 NUMA nodes, 1-4 VMs, about half of them with
numa_nodes: 2 or 3) is checked against tests/oracle.py's best_layout, which gives a VM over
k nodes k distinct nodes and an equal share on each (the dedicated emulator core with share
0) by trying every such choice and every core of every node: 0 feasible specs refused, 0
infeasible accepted, cross-NUMA NICs (a NIC on none of the VM's nodes) equal to its minimum.

Cores of one node differ only in their number of online threads (1 or 2), so the search
enumerates, per VM, the node and how many 2-thread and 1-thread cores serve its vCPUs and
its emulator; a literal core-by-core brute force (every free core -> unused / VM k vCPU /
VM k emulator) re-checks the oracle's feasibility answers on the smallest cases.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from common import nic, synthetic, table

from bmslice.errors import PlanError
from bmslice.model.plan import Plan
from bmslice.model.spec import Spec, spec_from_data
from bmslice.model.topology import HostTopology
from oracle import best_l3_layout, best_layout, check_plan, split_vms
from topologies import l3_case, multinode_case

INFEASIBLE = 10**9


# --- the oracle -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OVm:
    vcpus: int
    dedicated: bool
    memory: int
    node: int | None
    nic_nodes: tuple[int, ...]  # NICs with a known NUMA node


@dataclass(frozen=True)
class OHost:
    nodes: tuple[int, ...]
    twos: tuple[int, ...]  # free 2-thread cores per node (index = position in `nodes`)
    ones: tuple[int, ...]
    memory: tuple[int, ...]  # MiB available to VMs per node
    free_cores: tuple[tuple[frozenset[int], ...], ...]  # the free cores themselves, per node
    reserved: frozenset[int]


def oracle_host(topo: HostTopology, spec: Spec) -> OHost:
    groups: dict[tuple[int, int, int], list[tuple[int, int]]] = defaultdict(list)
    for cpu in topo.cpus:
        if cpu.online:
            groups[(cpu.package, cpu.die, cpu.core)].append((cpu.id, cpu.node if cpu.node is not None else 0))
    cores = sorted((min(c for c, _ in m), frozenset(c for c, _ in m), min(m)[1]) for m in groups.values())
    per_node: dict[int, list[frozenset[int]]] = defaultdict(list)
    for _first, cpus, node in cores:
        per_node[node].append(cpus)
    keep = spec.host.reserved_cores_per_node
    reserved: set[int] = set()
    for node_cores in per_node.values():
        for cpus in node_cores[:keep]:
            reserved |= cpus
    for _first, cpus, _node in cores:
        if 0 in cpus:
            reserved |= cpus
    nodes = tuple(sorted(n.id for n in topo.numa_nodes))
    mem = {n.id: n.memory_mib - spec.host.reserved_memory_per_node for n in topo.numa_nodes}
    free = tuple(tuple(c for c in per_node.get(n, []) if not (c & reserved)) for n in nodes)
    return OHost(
        nodes,
        tuple(sum(len(c) == 2 for c in f) for f in free),
        tuple(sum(len(c) == 1 for c in f) for f in free),
        tuple(mem[n] for n in nodes),
        free,
        frozenset(reserved),
    )


def oracle_vms(topo: HostTopology, spec: Spec) -> tuple[OVm, ...]:
    by_name = {name: d for d in topo.pci_devices for name in d.interfaces}
    out = []
    for vm in spec.vms:
        nodes = []
        for n in vm.nics:
            dev = by_name[n.passthrough]
            if dev.numa_node is not None:
                nodes.append(dev.numa_node)
        out.append(OVm(vm.vcpus, vm.emulator.value == "dedicated", vm.memory, vm.numa_node, tuple(nodes)))
    return tuple(out)


@functools.cache
def vcpu_core_options(vcpus: int) -> tuple[tuple[int, int], ...]:
    """(2-thread cores, 1-thread cores) that carry `vcpus` with no wasted core or thread."""
    out = []
    for t in range(vcpus + 1):
        for o in range(vcpus + 1):
            idle = 2 * t + o - vcpus
            if t + o >= 1 and t + o <= vcpus and 0 <= idle <= vcpus % 2:
                out.append((t, o))
    return tuple(out)


def oracle_best(host: OHost, vms: tuple[OVm, ...], require: bool) -> int:
    """Fewest cross-NUMA NICs over all valid layouts, or INFEASIBLE. Exhaustive (memoised on what is left)."""
    n = len(host.nodes)

    @functools.cache
    def best(i: int, twos: tuple[int, ...], ones: tuple[int, ...], mem: tuple[int, ...]) -> int:
        if i == len(vms):
            return 0
        vm = vms[i]
        result = INFEASIBLE
        for k, node in enumerate(host.nodes):
            if vm.node is not None and vm.node != node:
                continue
            cross = sum(1 for nn in vm.nic_nodes if nn != node)
            if require and cross:
                continue
            if vm.memory > mem[k]:
                continue
            emulator_kinds = ((1, 0), (0, 1)) if vm.dedicated else ((0, 0),)
            for t, o in vcpu_core_options(vm.vcpus):
                for et, eo in emulator_kinds:
                    if twos[k] < t + et or ones[k] < o + eo:
                        continue
                    rest = best(
                        i + 1,
                        tuple(twos[j] - (t + et) * (j == k) for j in range(n)),
                        tuple(ones[j] - (o + eo) * (j == k) for j in range(n)),
                        tuple(mem[j] - vm.memory * (j == k) for j in range(n)),
                    )
                    result = min(result, cross + rest)
        return result

    return best(0, host.twos, host.ones, host.memory)


def literal_feasible(host: OHost, vms: tuple[OVm, ...], require: bool) -> bool:
    """Core by core: every node assignment, then every free core of a node -> unused / vCPU of k / emulator of k."""

    def node_ok(k: int, members: list[int]) -> bool:
        if sum(vms[m].memory for m in members) > host.memory[k]:
            return False
        cores = host.free_cores[k]
        owners: list[tuple[str, int] | None] = [None] + [(r, m) for m in members for r in ("v", "e")]
        for choice in itertools.product(owners, repeat=len(cores)):
            ok = True
            for m in members:
                vcores = [c for c, ch in zip(cores, choice, strict=True) if ch == ("v", m)]
                ecores = [c for c, ch in zip(cores, choice, strict=True) if ch == ("e", m)]
                threads = sum(len(c) for c in vcores)
                v = vms[m].vcpus
                if len(ecores) != int(vms[m].dedicated) or not (1 <= len(vcores) <= v <= threads <= v + v % 2):
                    ok = False
                    break
            if ok:
                return True
        return not members

    for assignment in itertools.product(range(len(host.nodes)), repeat=len(vms)):
        if any(
            (vm.node is not None and vm.node != host.nodes[k])
            or (require and any(nn != host.nodes[k] for nn in vm.nic_nodes))
            for vm, k in zip(vms, assignment, strict=True)
        ):
            continue
        if all(node_ok(k, [m for m, a in enumerate(assignment) if a == k]) for k in range(len(host.nodes))):
            return True
    return False


# --- checking the planner's plan with the oracle's rules -----------------------------------------------------


def plan_problems(topo: HostTopology, spec: Spec, host: OHost, plan: Plan) -> list[str]:
    problems = []
    if set(plan.host.reserved_cpus) != set(host.reserved):
        problems.append(f"reserved {plan.host.reserved_cpus} != {sorted(host.reserved)}")
    node_of = {c.id: c.node for c in topo.cpus}
    free_core = {cpu: core for cores in host.free_cores for core in cores for cpu in core}
    used: set[int] = set()
    mem: dict[int, int] = defaultdict(int)
    for vm, vs in zip(plan.vms, spec.vms, strict=True):
        node = vm.numa_nodes[0]
        pins = list(vm.vcpu_pins)
        owned = {cpu for core in vm.cores for cpu in core}
        if len(vm.numa_nodes) != 1 or (vs.numa_node is not None and vs.numa_node != node):
            problems.append(f"{vm.name}: node {vm.numa_nodes}")
        if len(pins) != vs.vcpus or len(set(pins)) != len(pins) or not set(pins) <= owned:
            problems.append(f"{vm.name}: pins {pins}")
        if any(cpu not in free_core or not free_core[cpu] <= owned for cpu in owned):
            problems.append(f"{vm.name}: owns a reserved CPU or part of a core")
        if any(node_of[cpu] != node for cpu in owned):
            problems.append(f"{vm.name}: a CPU off node {node}")
        if owned & used:
            problems.append(f"{vm.name}: shares CPUs with another VM")
        used |= owned
        emu = set(vm.emulator_cpus)
        if vs.emulator.value == "dedicated" and (not emu <= owned or emu & set(pins)):
            problems.append(f"{vm.name}: dedicated emulator {emu}")
        mem[node] += vm.memory_mib
    for k, node in enumerate(host.nodes):
        if mem[node] > host.memory[k]:
            problems.append(f"node {node}: memory over")
    return problems


def cross_numa(plan: Plan) -> int:
    return sum(1 for vm in plan.vms for d in vm.devices if d.numa_node is not None and d.numa_node not in vm.numa_nodes)


# --- random cases ------------------------------------------------------------------------------------------


def random_case(rng: random.Random, family: str) -> tuple[HostTopology, dict[str, Any]]:
    """family "small": 1-3 nodes of 2-8 cores, 1-4 VMs; "medium": 4-6 nodes of 3-6 cores, 4-8 VMs
    (often identical nodes, which the planner treats as interchangeable)."""
    if family == "small":
        sockets, per_socket = rng.choice([(1, 1), (1, 1), (2, 1), (2, 1), (1, 2), (3, 1)])
        nodes = sockets * per_socket
        cores = per_socket * rng.randint(2, 8 if nodes < 3 else 5)
        vm_count = rng.randint(1, 4)
    else:
        sockets, per_socket = rng.choice([(4, 1), (2, 2), (5, 1), (6, 1), (3, 2), (2, 3)])
        nodes = sockets * per_socket
        cores = per_socket * rng.randint(3, 6)
        vm_count = rng.randint(4, 8)
    threads = rng.choice([1, 2, 2])
    numbering = rng.choice(["spread", "adjacent", "interleaved"])
    total = sockets * cores * threads
    offline = (
        sorted(rng.sample(range(1, total), k=rng.randint(1, min(3, total - 1))))
        if total > 2 and rng.random() < 0.3
        else []
    )
    nics = [
        nic(
            f"0000:{i + 1:02x}:00.0",
            f"eth{i}",
            rng.choice([*range(nodes), None]) if rng.random() < 0.9 else None,
            40 + i,
        )
        for i in range(rng.randint(0, 4))
    ]
    topo = synthetic(
        sockets=sockets,
        cores=cores,
        threads=threads,
        nodes_per_socket=per_socket,
        numbering=numbering,
        memory_mib_per_node=rng.choice([6144, 8192, 12288, 16384, 32768]),
        offline=offline,
        nics=nics,
    )
    names = [n.interfaces[0] for n in nics]
    rng.shuffle(names)
    vms: list[dict[str, Any]] = []
    for k in range(vm_count):
        vm: dict[str, Any] = {
            "name": f"vm{k}",
            "vcpus": rng.choice([1, 1, 2, 2, 2, 3, 4, 4, 5, 6] if family == "small" else [1, 1, 2, 2, 2, 3, 4, 4, 6]),
            "memory": rng.choice([512, 1024, 2048, 2048, 4096, 6144]),
            "emulator": rng.choice(["dedicated", "host"]),
        }
        if rng.random() < 0.2:
            vm["numa_node"] = rng.randrange(nodes)
        if names and rng.random() < 0.6:
            vm["nics"] = [{"passthrough": names.pop()} for _ in range(rng.choice([1, 1, 2]) if len(names) > 1 else 1)]
        vms.append(vm)
    host: dict[str, Any] = {"reserved_cores_per_node": rng.choice([0, 1, 1, 1, 1, 2])}
    if rng.random() < 0.4:
        host["reserved_memory_per_node"] = rng.choice([1024, 4096])
    if rng.random() < 0.2:
        host["nic_numa_policy"] = "require"
    return topo, {"host": host, "vms": vms}


def plan_or_none(topo: HostTopology, spec: Spec) -> tuple[Plan | None, str]:
    from bmslice.plan.planner import make_plan

    try:
        return make_plan(topo, spec, "case"), ""
    except PlanError as exc:
        return None, str(exc)


def prefix_spec(data: dict[str, Any], k: int) -> Spec:
    return spec_from_data({"host": data["host"], "vms": data["vms"][:k]}, "case")


Judge = Callable[[HostTopology, Spec, Plan, Any, dict[str, int], list[str], str], None]


def against_tests_oracle(
    name: str,
    cases: int,
    case_of: Callable[[int], tuple[HostTopology, Spec]],
    oracle_of: Callable[[HostTopology, Spec], Any],
    judge: Judge,
) -> tuple[dict[str, int], list[str], float, float]:
    """(counts, findings, planner seconds, oracle seconds) of a family checked against
    tests/oracle.py: feasibility both ways and the layout rules here, the rest by `judge`
    (called on each plan of a feasible spec with the oracle's answer)."""
    st: dict[str, int] = defaultdict(int)
    misses: list[str] = []
    planner_s = oracle_s = 0.0
    for case in range(cases):
        topo, spec = case_of(case)
        t0 = time.perf_counter()
        plan, error = plan_or_none(topo, spec)
        t1 = time.perf_counter()
        best = oracle_of(topo, spec)
        oracle_s += time.perf_counter() - t1
        planner_s += t1 - t0
        where = f"{name} case {case}"
        st["cases"] += 1
        st["specs with a VM over several nodes"] += any(vm.numa_nodes > 1 for vm in spec.vms)
        if best is None:
            if plan is not None:
                st["accepted infeasible"] += 1
                misses.append(f"{where}: planner accepted an infeasible spec")
            continue
        st["feasible"] += 1
        if plan is None:
            st["refused feasible"] += 1
            misses.append(f"{where}: planner refused a feasible spec ({error})")
            continue
        try:
            check_plan(topo, spec, plan)
        except AssertionError as exc:
            st["invalid plans"] += 1
            misses.append(f"{where}: plan breaks the rules: {exc}")
        judge(topo, spec, plan, best, st, misses, where)
    return st, misses, planner_s, oracle_s


def _outcome_rows(st: dict[str, int]) -> list[list[str]]:
    return [
        ["cases", str(st["cases"]), ""],
        ["feasible (oracle)", str(st["feasible"]), ""],
        ["planner refused a feasible spec", str(st["refused feasible"]), "goal 0"],
        ["planner accepted an infeasible spec", str(st["accepted infeasible"]), "must be 0"],
        ["planner plan breaks the rules", str(st["invalid plans"]), "must be 0"],
    ]


def l3_family(cases: int, seed: int, show: int) -> tuple[list[list[str]], list[str], float, float]:
    """(table rows, findings, planner seconds, oracle seconds) of the L3 comparison."""

    def judge(
        topo: HostTopology, spec: Spec, plan: Plan, best: Any, st: dict[str, int], misses: list[str], where: str
    ) -> None:
        st["oracle split VMs"] += best[1]
        got = (cross_numa(plan), split_vms(topo, plan))
        st["planner split VMs"] += got[1]
        if got == best:
            st["optimal"] += 1
        else:
            misses.append(f"{where}: (cross-NUMA, split VMs) {got}, oracle {best}")
        st["cases with a split"] += best[1] > 0
        naive, _ = plan_or_none(replace(topo, l3_domains=()), spec)
        if naive is not None:
            st["naive split VMs"] += split_vms(topo, naive)

    st, misses, planner_s, oracle_s = against_tests_oracle(
        "l3", cases, lambda case: l3_case(random.Random(seed * 1_000_003 + case + 900_000)), best_l3_layout, judge
    )
    rows = [
        *_outcome_rows(st),
        ["(cross-NUMA, split VMs) = the oracle's minimum", f"{st['optimal']} / {st['feasible']}", "of plans made"],
        ["split VMs: oracle minimum / planner", f"{st['oracle split VMs']} / {st['planner split VMs']}", ""],
        ["cases where some VM must be split", str(st["cases with a split"]), ""],
        ["split VMs with cores taken lowest first (no L3 search)", str(st["naive split VMs"]), "for comparison"],
    ]
    return rows, misses[:show], planner_s, oracle_s


def multinode_family(cases: int, seed: int, show: int) -> tuple[list[list[str]], list[str], float, float]:
    """(table rows, findings, planner seconds, oracle seconds) of the multi-node comparison."""

    def judge(
        topo: HostTopology, spec: Spec, plan: Plan, best: Any, st: dict[str, int], misses: list[str], where: str
    ) -> None:
        st["VMs over several nodes planned"] += sum(len(vm.numa_nodes) > 1 for vm in plan.vms)
        st["with NICs"] += any(vm.nics for vm in spec.vms)
        st["oracle cross-NUMA NICs"] += best.cross_numa
        got = cross_numa(plan)
        st["planner cross-NUMA NICs"] += got
        if got == best.cross_numa:
            st["optimal"] += 1
        else:
            misses.append(f"{where}: {got} cross-NUMA NICs, oracle finds {best.cross_numa}")

    st, misses, planner_s, oracle_s = against_tests_oracle(
        "multinode",
        cases,
        lambda case: multinode_case(random.Random(seed * 1_000_003 + case + 1_900_000), max_vms=4),
        best_layout,
        judge,
    )
    rows = [
        ["cases", str(st["cases"]), ""],
        ["with a VM over several nodes", str(st["specs with a VM over several nodes"]), ""],
        *_outcome_rows(st)[1:],
        [
            "cross-NUMA NICs = the oracle's minimum",
            f"{st['optimal']} / {st['feasible'] - st['refused feasible']} ({st['with NICs']} with NICs)",
            "of plans made",
        ],
        [
            "cross-NUMA NICs: oracle minimum / planner",
            f"{st['oracle cross-NUMA NICs']} / {st['planner cross-NUMA NICs']}",
            "",
        ],
        ["VMs over several nodes in the plans", str(st["VMs over several nodes planned"]), ""],
    ]
    return rows, misses[:show], planner_s, oracle_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="small cases (default 2000)")
    parser.add_argument("--medium", type=int, default=500, help="medium cases, 4-6 nodes (default 500)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--literal", type=int, default=300, help="cases re-checked core by core (default 300)")
    parser.add_argument("--show", type=int, default=3, help="misses to print in full")
    parser.add_argument("--l3", type=int, default=1000, help="cases with several L3 domains per node (default 1000)")
    parser.add_argument(
        "--multinode", type=int, default=1000, help="cases with VMs over several NUMA nodes (default 1000)"
    )
    args = parser.parse_args()

    start = time.perf_counter()
    families = {"small": args.cases, "medium": args.medium}
    stats: dict[str, dict[str, int]] = {f: defaultdict(int) for f in families}
    prefix: dict[str, dict[str, int]] = {f: defaultdict(int) for f in families}
    misses: list[str] = []
    literal_checked = literal_disagree = 0
    planner_s = oracle_s = 0.0
    for family, count in families.items():
        st, prefix_rows = stats[family], prefix[family]
        for case in range(count):
            rng = random.Random(args.seed * 1_000_003 + case + (0 if family == "small" else 500_000))
            topo, data = random_case(rng, family)
            spec = spec_from_data(data, "case")
            host = oracle_host(topo, spec)
            vms = oracle_vms(topo, spec)
            require = spec.host.nic_numa_policy.value == "require"
            t0 = time.perf_counter()
            plan, error = plan_or_none(topo, spec)
            t1 = time.perf_counter()
            best = oracle_best(host, vms, require)
            t2 = time.perf_counter()
            planner_s += t1 - t0
            oracle_s += t2 - t1
            feasible = best < INFEASIBLE
            where = f"{family} case {case}"
            st["cases"] += 1
            st["feasible"] += feasible
            if feasible and plan is None:
                st["refused feasible"] += 1
                misses.append(
                    f"{where}: planner refused a feasible spec ({error}); oracle min cross-NUMA {best}: {data}"
                )
            elif not feasible and plan is not None:
                st["accepted infeasible"] += 1
                misses.append(f"{where}: planner accepted an infeasible spec: {data}")
            elif plan is not None:
                problems = plan_problems(topo, spec, host, plan)
                if problems:
                    st["invalid plans"] += 1
                    misses.append(f"{where}: plan breaks the rules: {problems[:3]}: {data}")
                got = cross_numa(plan)
                if got == best:
                    st["cross-NUMA optimal"] += 1
                else:
                    st["cross-NUMA worse"] += 1
                    misses.append(f"{where}: {got} cross-NUMA NICs, oracle finds {best}: {data}")
                st["cases with NICs"] += any(v.nic_nodes for v in vms)
            if literal_checked < args.literal and sum(len(f) for f in host.free_cores) <= 7 and len(vms) <= 3:
                literal_checked += 1
                if literal_feasible(host, vms, require) != feasible:
                    literal_disagree += 1
                    misses.append(f"{where}: the two oracles disagree ({feasible}): {data}")

            # Max VMs placed: the longest prefix of the VM list each can place.
            n = len(data["vms"])
            planner_prefix = oracle_prefix = 0
            for k in range(1, n + 1):
                if oracle_best(host, vms[:k], require) < INFEASIBLE:
                    oracle_prefix = k
                else:
                    break
            for k in range(1, n + 1):
                p, _ = plan_or_none(topo, prefix_spec(data, k))
                if p is not None:
                    planner_prefix = k
                else:
                    break
            prefix_rows["lists"] += 1
            prefix_rows["oracle VMs"] += oracle_prefix
            prefix_rows["planner VMs"] += planner_prefix
            prefix_rows["equal"] += planner_prefix == oracle_prefix
            prefix_rows["planner fewer"] += planner_prefix < oracle_prefix
            prefix_rows["planner more"] += planner_prefix > oracle_prefix
            prefix_rows["VMs offered"] += n

    elapsed = time.perf_counter() - start
    print(
        f"planner completeness: {sum(families.values())} random hosts and specs (seed {args.seed}), {elapsed:.1f} s\n"
        "small:  1-3 NUMA nodes, 2-8 cores per node, 1-4 VMs; medium: 4-6 nodes, 3-6 cores per node, 4-8 VMs.\n"
        "Both: SMT or not, some CPUs offline, VMs of 1-6 vCPUs, dedicated or host emulator, some numa_node pins,\n"
        "0-4 NICs (some without a NUMA node), 0-2 host cores per node, some nic_numa_policy: require"
    )

    def cell(family: str, key: str, pct_of: str | None = None) -> str:
        value = stats[family][key]
        return f"{value} ({100 * value / max(1, stats[family][pct_of]):.1f}%)" if pct_of else str(value)

    def optimal(family: str) -> str:
        st = stats[family]
        accepted = st["cross-NUMA optimal"] + st["cross-NUMA worse"]
        return f"{st['cross-NUMA optimal']} / {accepted} ({st['cases with NICs']} with NICs)"

    rows = [
        ["cases", *(cell(f, "cases") for f in families), ""],
        ["feasible (oracle)", *(cell(f, "feasible", "cases") for f in families), ""],
        ["planner refused a feasible spec", *(cell(f, "refused feasible") for f in families), "goal 0"],
        ["planner accepted an infeasible spec", *(cell(f, "accepted infeasible") for f in families), "must be 0"],
        ["planner plan breaks the oracle's rules", *(cell(f, "invalid plans") for f in families), "must be 0"],
        ["cross-NUMA NICs = the oracle's minimum", *(optimal(f) for f in families), "of plans made"],
    ]
    print(table(["", *families, ""], rows, "lrrl"))
    print(
        f"literal core-by-core re-check of the oracle's feasibility: {literal_checked - literal_disagree} / {literal_checked} agree"
    )
    print("\nMax VMs placed (each case's VM list in order; the longest prefix that can be placed):")
    rows = []
    for family in families:
        pr = prefix[family]
        rows.append(
            [
                family,
                str(pr["lists"]),
                str(pr["VMs offered"]),
                str(pr["oracle VMs"]),
                str(pr["planner VMs"]),
                str(pr["equal"]),
                str(pr["planner fewer"]),
                str(pr["planner more"]),
            ]
        )
    print(
        table(
            ["", "lists", "VMs offered", "oracle places", "planner places", "equal", "planner fewer", "planner more"],
            rows,
        )
    )
    print(f"\ntime in make_plan {planner_s:.2f} s, in the oracle {oracle_s:.2f} s (main comparison only)")
    families_against_tests_oracle = (
        (
            "L3 cache domains: 1-2 sockets, 1-2 NUMA nodes, 4-6 cores per node in L3 domains of 2-3 cores\n"
            "(some straddling two nodes), SMT or not, some CPUs offline, 1-4 VMs of 1-6 vCPUs, 0-2 NICs;\n"
            "against tests/oracle.py's exhaustive best_l3_layout:",
            "l3",
            l3_family(args.l3, args.seed, args.show),
        ),
        (
            "VMs over several NUMA nodes: 1-3 sockets, 2-4 NUMA nodes of 2-4 cores, SMT or not, some CPUs\n"
            "offline, 1-4 VMs (about half with numa_nodes: 2 or 3, an equal share per node), 1-4 NICs, some\n"
            "nic_numa_policy: require; against tests/oracle.py's exhaustive best_layout:",
            "multinode",
            multinode_family(args.multinode, args.seed, args.show),
        ),
    )
    family_misses = False
    for title, name, (family_rows, found, family_planner_s, family_oracle_s) in families_against_tests_oracle:
        print("\n" + title)
        print(table(["", name, ""], family_rows, "lrl"))
        print(f"time in make_plan {family_planner_s:.2f} s, in the oracle {family_oracle_s:.2f} s")
        misses += found
        family_misses = family_misses or bool(found)
    if misses:
        print(f"\n{len(misses)} finding(s); the first {min(args.show, len(misses))}:")
        for line in misses[: args.show]:
            print("  " + line)
    bad = any(st["accepted infeasible"] or st["invalid plans"] for st in stats.values())
    return 1 if bad or literal_disagree or family_misses else 0


if __name__ == "__main__":
    sys.exit(main())
