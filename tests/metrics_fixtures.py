"""A small sliced host for the metrics, exporter and alert tests: a host tree (its /sys and /proc)
and libvirt's test:/// driver holding its slices, as `bmslice metrics --connect test:///FILE
--host-root TREE` reads them.

The host: 2 sockets x 2 cores x 2 threads, a NUMA node per socket (8 CPUs: libvirt's test driver
reports pins of 8 host CPUs). The host keeps one core per node; the spec's one slice, `du`, takes
node 0's other core on 2 MiB hugepages; node 1's core is free room.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bmslice.model.plan import Plan, VmPlan
from bmslice.render.domain_model import domain_from_plan
from bmslice.render.domain_xml import to_xml
from hosttrees import Built, Machine, build, clean_runtime, violating_runtime
from treebuilder import HostSpec, NodeMemory, cpu_layout

SPEC: dict[str, Any] = {
    "host": {"reserved_cores_per_node": 1, "reserved_memory_per_node": "1GiB"},
    "vms": [{"name": "du", "vcpus": 2, "memory": "2GiB", "emulator": "host", "numa_node": 0, "hugepages": "2M"}],
}
RUNTIMES = {"clean": clean_runtime, "violating": violating_runtime}
# /proc/interrupts as Linux 6.1 prints it (CPU columns, device lines, then per-CPU events)
INTERRUPTS = (
    "            CPU0       CPU1       CPU2       CPU3       CPU4       CPU5       CPU6       CPU7\n"
    "   0:         40          0          0          0          0          0          0          0   IO-APIC   2-edge      timer\n"
    "  24:       1200          0          0          0         10          0          0          0   PCI-MSI 524288-edge      eth0-TxRx-0\n"
    "  90:          0          0          0          7          0          0          0          3   PCI-MSI 524291-edge      eth1-TxRx-3\n"
    " LOC:      99999      99999      99999      99999      99999      99999      99999      99999   Local timer interrupts\n"
    " RES:          5          5          5          5          5          5          5          5   Rescheduling interrupts\n"
)


def machine(spec: dict[str, Any] | None = None) -> Machine:
    host = HostSpec(
        cpus=cpu_layout(2, 2, 2),
        node_memory={0: NodeMemory(8192), 1: NodeMemory(8192)},
        hostname="edge1",
    )
    return Machine("edge1", host, spec or SPEC)


@dataclass(frozen=True)
class SlicedHost:
    built: Built
    node_xml: Path  # test:///<this>: the slices libvirt runs

    @property
    def uri(self) -> str:
        return f"test://{self.node_xml}"

    @property
    def plan(self) -> Plan:
        return self.built.plan

    def metrics_args(self) -> list[str]:
        return [str(self.built.spec_path), "--connect", self.uri, "--host-root", str(self.built.root)]


def node_xml(path: Path, vms: list[VmPlan], xml_of: dict[str, str] | None = None) -> Path:
    """A test:/// host file of this machine's shape holding `vms` (running), as rendered from their plans
    (or the XML `xml_of` gives a VM instead: a slice changed behind bmslice's back)."""
    xml_of = xml_of or {}
    domains = "".join(xml_of.get(vm.name) or to_xml(domain_from_plan(vm)) for vm in vms)
    path.write_text(
        "<node><cpu><mhz>2000</mhz><model>x86_64</model><active>8</active><total>8</total><nodes>2</nodes>"
        f"<sockets>1</sockets><cores>2</cores><threads>2</threads></cpu><memory>16777216</memory>{domains}</node>"
    )
    return path


def sliced_host(
    tmp: Path, runtime: str = "clean", running: bool = True, xml_of: dict[str, str] | None = None
) -> SlicedHost:
    """The host tree with `runtime` ("clean": isolation holds; "violating": one breach of each kind),
    its slices in a test:/// file (none when not `running`), and /proc/interrupts."""
    built = build(tmp, machine(), RUNTIMES[runtime])
    (built.root / "proc" / "interrupts").write_text(INTERRUPTS)
    vms = list(built.plan.vms) if running else []
    return SlicedHost(built, node_xml(tmp / "node.xml", vms, xml_of))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus-client's own parser: (name, labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]
