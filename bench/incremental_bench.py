"""Incremental placement: VM after VM with the running ones kept, bmslice against Nova's pack policy.

Run: .venv/bin/python bench/incremental_bench.py [--cases 480] [--seed 1] [--quiet]

Each case is a generated host (1-8 NUMA nodes of 4-16 cores, SMT or not, now and then a
sibling offline, 16-64 GiB a node, 0-4 passthrough NICs on random nodes, one core a node for
the host) and a list of VMs asking for about 1.3 times what the host has (1-16 vCPUs,
emulator dedicated or on the host's CPUs, 2-16 GiB, some passing a NIC through). The VMs
arrive one at a time; each is placed around the ones already running, or refused, and the
next one comes (a later, smaller VM may still fit).

bmslice (tests/incremental.py): `make_plan(topo, spec, keep=running)` with the spec of the VMs placed so far plus
the new one; a refusal leaves the running VMs as they were.

Nova pack (tests/incremental.py: a model of its behaviour written for this bench, no Nova code): `numa_fit_instance_to_host`
tries the host's NUMA cells in an order and takes the first one the instance fits. The order
comes from three stable sorts (`packing_host_numa_cells_allocation_strategy = True`):
free memory ascending, then free pinned CPUs ascending, then PCI: for an instance that asks
for a PCI device the cells holding more free matching devices first, for one that does not
the cells holding fewer free PCI devices first. The last sort has the top priority, so the
order is (PCI, free CPUs, free memory, cell id). Modelled as:
- every VM is `hw:numa_nodes=1`, `hw:cpu_policy=dedicated`, `hw:cpu_thread_policy=prefer`,
  and a dedicated emulator is `hw:emulator_threads_policy=isolate` (one more pinned CPU);
- what a VM takes of a cell is counted as bmslice counts it, in whole cores (a vCPU pair on
  one two-thread core, an odd vCPU or the emulator a core of its own), so the two differ only
  in which cell they choose: Nova's own `prefer` can leave a core's sibling to another
  instance, which bmslice never does (a sibling shared between VMs is the noisy neighbour
  the project exists to avoid), and counting Nova's way would compare two different rules;
- "free pinned CPUs" is the cell's free threads; a NIC passthrough is a PCI request for that
  device under `hw:pci_numa_affinity_policy=preferred` (its cell first, any cell allowed),
  as bmslice's nic_numa_policy prefer allows; free PCI devices are the host's NICs not yet
  passed through.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import table

from incremental import bmslice_run, generate, nova_run

# --- the comparison -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=480)
    parser.add_argument("--seed", type=int, default=1, help="first case's seed (cases are seed, seed+1, ...)")
    parser.add_argument("--quiet", action="store_true", help="print only the cases where the two differ")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    totals = [0, 0, 0]
    worse = better = 0
    for seed in range(args.seed, args.seed + args.cases):
        case = generate(seed)
        ours, nova = bmslice_run(case), nova_run(case)
        totals[0] += len(case.vms)
        totals[1] += len(ours)
        totals[2] += len(nova)
        worse += len(ours) < len(nova)
        better += len(ours) > len(nova)
        verdict = "fewer" if len(ours) < len(nova) else "more" if len(ours) > len(nova) else ""
        if verdict or not args.quiet:
            rows.append([str(seed), case.label, str(len(case.vms)), str(len(ours)), str(len(nova)), verdict])
    print(
        f"Incremental placement, VM after VM with the running VMs kept: {args.cases} generated cases "
        f"(seeds {args.seed}-{args.seed + args.cases - 1})"
    )
    print(table(["seed", "host", "VMs", "bmslice placed", "Nova pack placed", "bmslice"], rows, "llrrrl"))
    print(
        f"\nTotals: {totals[0]:,} VMs asked for; bmslice placed {totals[1]:,}, the Nova pack model {totals[2]:,}.\n"
        f"Cases where bmslice placed fewer: {worse}; more: {better}; the same: {args.cases - worse - better}. "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
