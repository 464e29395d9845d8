"""Every metric bmslice exports: its name, what it means and its labels, defined here and only here.

Names follow the Prometheus conventions node_exporter keeps: a `bmslice_` prefix, units in
the name (`_seconds`, `_bytes`, `_pages`), `_total` on counters. Label values are bounded:
slices, kinds, NUMA nodes and isolated CPUs come from the plan; the processes and IRQs named
on isolated CPUs are violations, at most `MAX_NAMED` each (their counts are always whole).
The alert rules (metrics/alerts.rules.yml) read these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

MAX_NAMED = 20  # processes and IRQs on isolated CPUs named one by one per scrape


@dataclass(frozen=True)
class Family:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    kind: Literal["gauge", "counter"] = "gauge"

    def new(self) -> GaugeMetricFamily | CounterMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)


# --- slices (libvirt, the QEMU threads in /proc, VF settings through netlink) ------------------

SLICE_STATE = Family(
    "bmslice_slice_state",
    "1 for the state a planned slice is in, 0 for the others "
    "(running, shut off, not defined, metadata unreadable, not bmslice's).",
    ("slice", "state"),
)
SLICE_DRIFT = Family(
    "bmslice_slice_drift",
    "Differences between a slice and its plan, by kind: state, vcpu_pins, emulator (emulator and "
    "IOThread pins), memory_binding, devices, vf_settings, scheduling, cache, definition. 0 when it matches.",
    ("slice", "kind"),
)
REBOOT_PENDING = Family(
    "bmslice_reboot_pending",
    "1 when kernel args of the plan are not on the running kernel's command line (a reboot is pending), else 0.",
)
KERNEL_ARGS_MISSING = Family(
    "bmslice_kernel_args_missing", "Kernel args of the plan that the running kernel was not booted with."
)

# --- isolation (/proc/<pid>/task/*/status and stat, /proc/irq, /proc/interrupts, sysfs CPU lists) --

ISOLATED_CPUS = Family("bmslice_isolated_cpus", "CPUs the plan isolates from the host (isolcpus, nohz_full).")
KERNEL_LIST_MATCHES = Family(
    "bmslice_isolation_kernel_list_matches",
    "1 when the kernel's own list (isolated, nohz_full under /sys/devices/system/cpu) is the plan's isolated "
    "set, else 0; only for the lists the plan's kernel args set.",
    ("list",),
)
FOREIGN_THREADS = Family(
    "bmslice_isolation_foreign_threads",
    "Threads outside the slices that may run on isolated CPUs (bmslice audit's thread violations).",
)
FOREIGN_PROCESS = Family(
    "bmslice_isolation_foreign_process_threads",
    "Threads of one process that may run on isolated CPUs, with the process and those CPUs "
    f"(the first {MAX_NAMED} processes).",
    ("pid", "comm", "cpus"),
)
EXCEPTED_THREADS = Family(
    "bmslice_isolation_excepted_threads",
    "Kernel threads bound to isolated CPUs by the kernel (per-CPU, or PF_NO_SETAFFINITY): not violations.",
)
ISOLATION_IRQS = Family(
    "bmslice_isolation_irqs",
    "IRQs with a handler whose effective affinity includes isolated CPUs (bmslice audit's IRQ violations).",
)
ISOLATION_IRQ = Family(
    "bmslice_isolation_irq",
    f"1 per IRQ that can fire on isolated CPUs, with its handlers and those CPUs (the first {MAX_NAMED}).",
    ("irq", "name", "cpus"),
)
DEVICE_INTERRUPTS = Family(
    "bmslice_isolated_cpu_device_interrupts",
    "Device interrupts (numbered IRQs of /proc/interrupts) each isolated CPU has serviced since boot.",
    ("cpu",),
    "counter",
)

# --- hugepages (sysfs, per NUMA node) ---------------------------------------------------------

_PAGES = ("node", "page_size_bytes")
HUGEPAGES_TOTAL = Family("bmslice_hugepages_total_pages", "Hugepages reserved on the node (nr_hugepages).", _PAGES)
HUGEPAGES_FREE = Family("bmslice_hugepages_free_pages", "Hugepages free on the node (free_hugepages).", _PAGES)
HUGEPAGES_PLANNED = Family(
    "bmslice_hugepages_planned_pages", "Hugepages the plan's slices use on the node, running or not.", _PAGES
)
HUGEPAGES_WANTED = Family(
    "bmslice_hugepages_wanted_pages",
    "Hugepages the planned slices that do not run now need on the node to start: more than free is a slice "
    "that cannot start.",
    _PAGES,
)

# --- free room (the planner) -----------------------------------------------------------------

CAPACITY_MORE = Family(
    "bmslice_capacity_more_vms",
    "How many more VMs of a shape (a VM of the spec, or 'mix': one of each) fit beside the running slices; "
    "the planner's answer (bmslice capacity).",
    ("shape",),
)
CAPACITY_RUNS_OUT = Family(
    "bmslice_capacity_runs_out_first",
    "1 for each resource of which more would let one more VM of the shape fit (cores, memory, whole NICs, VFs, "
    "NIC locality).",
    ("shape", "resource"),
)
NODE_MORE = Family(
    "bmslice_capacity_node_more_vms",
    "How many more VMs of a one-node shape fit on a NUMA node on its own.",
    ("shape", "node"),
)
NODE_FREE_CORES = Family(
    "bmslice_node_free_cores", "Whole cores of a NUMA node neither the host keeps nor a slice owns.", ("node",)
)
NODE_FREE_MEMORY = Family(
    "bmslice_node_free_memory_bytes",
    "Memory of a NUMA node after the host's share and the slices' memory.",
    ("node",),
)

# --- the scrape itself ------------------------------------------------------------------------

SCRAPE_DURATION = Family(
    "bmslice_scrape_collector_duration_seconds", "How long the collector's last check took.", ("collector",)
)
SCRAPE_CPU = Family(
    "bmslice_scrape_collector_cpu_seconds", "CPU time the collector's last check used (its thread's).", ("collector",)
)
SCRAPE_SUCCESS = Family(
    "bmslice_scrape_collector_success", "1 when the collector's last check succeeded, else 0.", ("collector",)
)
