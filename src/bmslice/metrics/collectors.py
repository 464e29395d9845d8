"""One Prometheus collector per source (node_exporter's shape): slices, isolation, hugepages,
capacity, and the scrape's own figures. Each reads its source when Prometheus scrapes, through
`WatchedHost`; a source that fails costs its own metrics only, and says so in
bmslice_scrape_collector_success.

The registry collects in registration order: slices first, since the plan of the running
slices it reads is what isolation, hugepages and capacity are judged against.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import Metric
from prometheus_client.registry import CollectorRegistry

from bmslice.metrics import families as F
from bmslice.metrics.host import WatchedHost
from bmslice.safe_text import one_line
from bmslice.verify.compare import DriftKind
from bmslice.verify.verifier import HELD, NOT_BMSLICES

# HELD: its bmslice metadata is unreadable; NOT_BMSLICES: a domain of its name that bmslice did not define
STATES = ("running", "shut off", "not defined", HELD, NOT_BMSLICES)
MAX_ERRORS = 50  # failures kept for the exporter to print before older ones are dropped


@dataclass
class ScrapeStats:
    """How each collector's last check went, for bmslice_scrape_collector_* and the exporter's log."""

    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    success: dict[str, bool] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def take_errors(self) -> list[str]:
        errors, self.errors = self.errors, []
        return errors


class SourceCollector:
    """A collector of one source: `name` is its `collector` label, `families` what it may yield."""

    name = ""
    families: tuple[F.Family, ...] = ()

    def __init__(self, host: WatchedHost, stats: ScrapeStats) -> None:
        self.host, self.stats = host, stats

    def describe(self) -> list[Metric]:
        return [family.new() for family in self.families]

    def read(self) -> Iterator[Metric]:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            metrics = list(self.read())
        except Exception as exc:  # one source down (libvirtd restarting) must not cost the others
            metrics = []
            self.stats.success[self.name] = False
            if len(self.stats.errors) < MAX_ERRORS:
                self.stats.errors.append(f"{self.name}: {one_line(str(exc)) or type(exc).__name__}")
        else:
            self.stats.success[self.name] = True
        self.stats.seconds[self.name] = time.perf_counter() - start
        self.stats.cpu_seconds[self.name] = time.thread_time() - cpu
        yield from metrics


class SlicesCollector(SourceCollector):
    name = "slices"
    families = (F.SLICE_STATE, F.SLICE_DRIFT, F.REBOOT_PENDING, F.KERNEL_ARGS_MISSING)

    def read(self) -> Iterator[Metric]:
        report = self.host.check_slices()
        state, drift = F.SLICE_STATE.new(), F.SLICE_DRIFT.new()
        for status in report.slices:
            for name in STATES:
                state.add_metric([status.name, name], 1.0 if status.state == name else 0.0)
            for kind in DriftKind:
                drift.add_metric([status.name, kind.value], float(status.count(kind)))
        plan = self.host.plan
        pending, missing = F.REBOOT_PENDING.new(), F.KERNEL_ARGS_MISSING.new()
        pending.add_metric([], 1.0 if plan.host.reboot_required else 0.0)
        missing.add_metric([], float(len(plan.host.missing_kernel_args)))
        yield from (state, drift, pending, missing)


class IsolationCollector(SourceCollector):
    name = "isolation"
    families = (
        F.ISOLATED_CPUS,
        F.KERNEL_LIST_MATCHES,
        F.FOREIGN_THREADS,
        F.FOREIGN_PROCESS,
        F.EXCEPTED_THREADS,
        F.ISOLATION_IRQS,
        F.ISOLATION_IRQ,
        F.DEVICE_INTERRUPTS,
    )

    def read(self) -> Iterator[Metric]:
        found = self.host.check_isolation()
        if found is None:
            return
        report = found.report
        isolated = F.ISOLATED_CPUS.new()
        isolated.add_metric([], float(len(found.isolated)))
        lists = F.KERNEL_LIST_MATCHES.new()
        for finding in report.findings:
            if finding.check in ("isolated", "nohz_full"):
                lists.add_metric([finding.check], 1.0 if finding.level.value == "ok" else 0.0)
        threads, named = F.FOREIGN_THREADS.new(), F.FOREIGN_PROCESS.new()
        threads.add_metric([], float(sum(i.threads for i in report.intruders)))
        for intruder in report.intruders[: F.MAX_NAMED]:
            named.add_metric([str(intruder.pid), intruder.comm, intruder.cpus.format()], float(intruder.threads))
        excepted = F.EXCEPTED_THREADS.new()
        excepted.add_metric([], float(len(report.excepted)))
        irqs, irq = F.ISOLATION_IRQS.new(), F.ISOLATION_IRQ.new()
        irqs.add_metric([], float(len(report.irq_hits)))
        for hit in report.irq_hits[: F.MAX_NAMED]:
            irq.add_metric([str(hit.number), hit.label, hit.cpus.format()], 1.0)
        interrupts = F.DEVICE_INTERRUPTS.new()
        for cpu, count in sorted(found.interrupts.items()):
            interrupts.add_metric([str(cpu)], float(count))
        yield from (isolated, lists, threads, named, excepted, irqs, irq, interrupts)


class HugepagesCollector(SourceCollector):
    name = "hugepages"
    families = (F.HUGEPAGES_TOTAL, F.HUGEPAGES_FREE, F.HUGEPAGES_PLANNED, F.HUGEPAGES_WANTED)

    def read(self) -> Iterator[Metric]:
        plan = self.host.plan
        planned: dict[tuple[int, int], int] = defaultdict(int)
        wanted: dict[tuple[int, int], int] = defaultdict(int)
        running = {s.name for s in self.host.slices.slices if s.state == "running"} if self.host.slices else None
        for vm in plan.vms:
            if not vm.hugepage_kib:
                continue
            for node_id, mib in vm.memory_by_node().items():
                pages = mib * 1024 // vm.hugepage_kib
                planned[(node_id, vm.hugepage_kib)] += pages
                if running is not None and vm.name not in running:
                    wanted[(node_id, vm.hugepage_kib)] += pages
        total, free = F.HUGEPAGES_TOTAL.new(), F.HUGEPAGES_FREE.new()
        sizes: set[tuple[int, int]] = set(planned)
        for node in self.host.numa_nodes():
            for pool in node.hugepages:
                labels = [str(node.id), str(pool.size_kib * 1024)]
                total.add_metric(labels, float(pool.total))
                free.add_metric(labels, float(pool.free))
                sizes.add((node.id, pool.size_kib))
        planned_f, wanted_f = F.HUGEPAGES_PLANNED.new(), F.HUGEPAGES_WANTED.new()
        for node_id, size in sorted(sizes):
            labels = [str(node_id), str(size * 1024)]
            planned_f.add_metric(labels, float(planned.get((node_id, size), 0)))
            if running is not None:
                wanted_f.add_metric(labels, float(wanted.get((node_id, size), 0)))
        yield from (total, free, planned_f, wanted_f)


class CapacityCollector(SourceCollector):
    name = "capacity"
    families = (F.CAPACITY_MORE, F.CAPACITY_RUNS_OUT, F.NODE_MORE, F.NODE_FREE_CORES, F.NODE_FREE_MEMORY)

    def read(self) -> Iterator[Metric]:
        room = self.host.room()
        more, runs_out = F.CAPACITY_MORE.new(), F.CAPACITY_RUNS_OUT.new()
        for shape in room.shapes:
            more.add_metric([shape.shape], float(shape.more))
            for resource in shape.limits:
                runs_out.add_metric([shape.shape, resource], 1.0)
        node_more, cores, memory = F.NODE_MORE.new(), F.NODE_FREE_CORES.new(), F.NODE_FREE_MEMORY.new()
        for node in room.nodes:
            cores.add_metric([str(node.node)], float(node.cores))
            memory.add_metric([str(node.node)], float(node.memory_mib) * 1024 * 1024)
            for shape_name, count in node.fits:
                node_more.add_metric([shape_name, str(node.node)], float(count))
        yield from (more, runs_out, node_more, cores, memory)


class ScrapeCollector:
    """The scrape's own figures: registered last, it reports the checks of this very scrape."""

    def __init__(self, stats: ScrapeStats) -> None:
        self.stats = stats

    def describe(self) -> list[Metric]:
        return [F.SCRAPE_DURATION.new(), F.SCRAPE_CPU.new(), F.SCRAPE_SUCCESS.new()]

    def collect(self) -> Iterator[Metric]:
        duration, cpu, success = F.SCRAPE_DURATION.new(), F.SCRAPE_CPU.new(), F.SCRAPE_SUCCESS.new()
        for name in sorted(self.stats.success):
            duration.add_metric([name], self.stats.seconds[name])
            cpu.add_metric([name], self.stats.cpu_seconds[name])
            success.add_metric([name], 1.0 if self.stats.success[name] else 0.0)
        yield from (duration, cpu, success)


class SerialRegistry(CollectorRegistry):
    """A registry scraped by one request at a time: its collectors share the scrape's host state
    (two Prometheus servers may scrape at once; the second waits)."""

    def __init__(self) -> None:
        super().__init__(auto_describe=False)
        self._scrape = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._scrape:
            yield from list(super().collect())


def registry_for(host: WatchedHost) -> tuple[CollectorRegistry, ScrapeStats]:
    """A registry with every collector the host's sources allow (isolation needs its /proc)."""
    stats = ScrapeStats()
    registry = SerialRegistry()
    kinds: list[type[SourceCollector]] = [SlicesCollector]
    if host.procfs is not None:
        kinds.append(IsolationCollector)
    kinds += [HugepagesCollector, CapacityCollector]
    for kind in kinds:
        registry.register(kind(host, stats))
    registry.register(ScrapeCollector(stats))
    return registry, stats
