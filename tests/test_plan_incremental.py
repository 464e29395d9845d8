"""Incremental placement leaves room: VM after VM, bmslice fits at least as many as Nova's pack policy.

tests/incremental.py generates a host and a list of VMs, places them one at a time with the
running ones kept (`make_plan(..., keep=...)`), and models Nova's NUMA fitting under
`packing_host_numa_cells_allocation_strategy = True` on the same whole-core accounting.
The seeds here are cases where choosing the lowest-numbered node that fits (bmslice before
it weighed the room a node keeps, and the NICs no VM has taken yet) placed fewer VMs than
Nova pack; bench/incremental_bench.py runs hundreds.
"""

from __future__ import annotations

import pytest

from incremental import bmslice_run, generate, nova_run

SEEDS = [16, 34, 91, 97, 178, 394]


@pytest.mark.parametrize("seed", SEEDS)
def test_never_fewer_vms_than_nova_pack(seed: int) -> None:
    case = generate(seed)
    ours, nova = bmslice_run(case), nova_run(case)
    assert 0 < len(nova) < len(case.vms), "the case fills the host: some VMs fit, not all"
    assert len(ours) >= len(nova), f"{case.label}: bmslice placed {ours}, Nova pack {nova}"
