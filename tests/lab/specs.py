"""Specs the lab scenarios apply: small TCG guests (SeaBIOS only: no disk needed to run).

The lab is the design note's twin: per node 3 cores of 2 threads; the host keeps one core
per node, each VM gets one core for its vCPUs and one for its emulator and IOThread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PT_NIC = "enp97s0"  # the igb on NUMA node 1 (bus 0x61)
VF_PF = "enp65s0"  # the igb on NUMA node 0 (bus 0x41)
HOST = {"reserved_cores_per_node": 1, "reserved_memory_per_node": "256MiB", "domain_type": "qemu"}


def slices() -> dict[str, Any]:
    return {
        "host": HOST,
        "vms": [
            {"name": "lab-pt", "vcpus": 2, "memory": "128MiB", "nics": [{"passthrough": PT_NIC}]},
            {
                "name": "lab-vf",
                "vcpus": 2,
                "memory": "128MiB",
                "nics": [
                    {"sriov": {"pf": VF_PF, "vlan": 100, "trust": True, "spoofchk": False, "count": 1}},
                    {"sriov": {"pf": VF_PF, "vlan": 200, "mac": "02:00:00:0a:b0:02", "count": 1}},
                ],
            },
        ],
    }


def write(directory: Path, name: str, spec: dict[str, Any]) -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
