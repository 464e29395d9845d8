"""`bmslice metrics` and `bmslice exporter`: the host and its slices as Prometheus metrics.

    bmslice metrics  SPEC [--connect URI] [--host-root DIR] [--textfile DIR]
    bmslice exporter SPEC [--connect URI] [--host-root DIR] --listen ADDR:PORT

`metrics` prints the text exposition once (or writes it for node_exporter's textfile
collector); `exporter` serves it at http://ADDR:PORT/metrics, checking at each scrape, from
the host's reserved CPUs. Metric names: src/bmslice/metrics/families.py; alert rules:
src/bmslice/metrics/alerts.rules.yml.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bmslice.cli.common import EXIT_DRIFT, EXIT_OK, path_arg, print_warnings, run, standalone_parser

if TYPE_CHECKING:
    from bmslice.metrics.host import WatchedHost

ERROR_POLL_S = 1.0  # how often the exporter prints what its collectors could not read


def _watched(args: argparse.Namespace) -> WatchedHost:
    from bmslice.metrics.host import WatchedHost
    from bmslice.model.spec import load_spec

    return WatchedHost(load_spec(args.spec), str(args.spec), args.connect, args.host_root)


def cmd_metrics(args: argparse.Namespace) -> int:
    from prometheus_client import generate_latest

    from bmslice.metrics.collectors import registry_for
    from bmslice.metrics.textfile import write_textfile

    host = _watched(args)
    registry, stats = registry_for(host)
    data = generate_latest(registry)
    if args.textfile is not None:
        print(write_textfile(args.textfile, data))
    else:
        sys.stdout.write(data.decode())
    errors = stats.take_errors()
    print_warnings(errors)
    return EXIT_DRIFT if errors else EXIT_OK


def cmd_exporter(args: argparse.Namespace) -> int:
    from bmslice.metrics.collectors import registry_for
    from bmslice.metrics.serve import pin_to, serve
    from bmslice.model.listen import parse_listen

    address, port = parse_listen(args.listen)  # before anything is read: a bad address changes nothing
    host = _watched(args)
    pinned = ""
    if host.this_kernel:  # the reserved CPUs are this machine's only when the host is this machine
        pinned = f"; on CPUs {pin_to(host.start_plan.host.reserved_cpus)}"
    registry, stats = registry_for(host)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _sig, _frame: stop.set())
    server, _thread = serve(registry, address, port)
    shown = f"[{address}]" if ":" in address else address
    print(f"serving http://{shown}:{port}/metrics for {args.spec} on {args.connect}{pinned}", flush=True)
    try:
        while not stop.wait(ERROR_POLL_S):
            print_warnings(stats.take_errors())
    finally:
        server.shutdown()
    print("stopped", flush=True)
    return EXIT_OK


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", type=path_arg, metavar="SPEC")
    parser.add_argument(
        "--connect", default="qemu:///system", metavar="URI", help="libvirt URI (default qemu:///system)"
    )
    parser.add_argument("--host-root", type=path_arg, metavar="DIR", help="read the host from DIR/sys, DIR/proc")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    metrics = sub.add_parser("metrics", help="print the Prometheus metrics of the host and its slices once")
    _args(metrics)
    metrics.add_argument(
        "--textfile", type=path_arg, metavar="DIR", help="write DIR/bmslice.prom atomically (node_exporter's textfile)"
    )
    metrics.set_defaults(handler=cmd_metrics)

    exporter = sub.add_parser("exporter", help="serve the metrics at http://ADDR:PORT/metrics, from the reserved CPUs")
    _args(exporter)
    exporter.add_argument("--listen", required=True, metavar="ADDR:PORT", help="e.g. 127.0.0.1:9963 or [::1]:9963")
    exporter.set_defaults(handler=cmd_exporter)


def main(argv: Sequence[str] | None = None) -> int:
    return run(standalone_parser(register), argv)


if __name__ == "__main__":
    sys.exit(main())
