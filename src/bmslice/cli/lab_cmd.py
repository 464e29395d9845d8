"""bmslice lab: rehearse on an emulated twin of a server (IOMMU, NUMA, SR-IOV NICs) before touching it.

bmslice lab up [--like SOURCE]        boot a lab (default: a small twin of the design note's server)
bmslice lab run COMMAND|SCRIPT [ARGS] run something inside; its output and exit code come back
bmslice lab reboot [--append ARGS]    power it off and boot it again from its disk (a --systemd lab)
bmslice lab down                      power it off and remove its state
bmslice lab status | assets           what runs; what the lab boots (versions, cache)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bmslice.cli.common import EXIT_OK, path_arg, print_json, run, standalone_parser
from bmslice.errors import LabError
from bmslice.numbers import is_decimal

DEFAULT_NAME = "lab"
MAX_COPY_BYTES = 64 * 1024 * 1024


def _say(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def _cache(args: argparse.Namespace) -> Path:
    from bmslice.lab.assets import DEFAULT_CACHE

    return args.cache or DEFAULT_CACHE


def _like(source: str) -> Any:
    """A host to shape the lab after: a libvirt URI, an hwloc XML file or a sysfs tree ('/' is this host)."""
    from bmslice.model.topology import HostTopology

    topo: HostTopology
    if "://" in source:
        from bmslice.apply.connection import read_libvirt_topology

        topo = read_libvirt_topology(source)
    elif Path(source).is_file():
        from bmslice.model.input_file import read_input_bytes
        from bmslice.topology.hwloc import topology_from_hwloc

        topo = topology_from_hwloc(read_input_bytes(Path(source), "hwloc XML", error=LabError), source=source)
    elif Path(source).is_dir():
        from bmslice.topology.sysfs import read_host_tree

        topo = read_host_tree(Path(source))
    else:
        raise LabError(f"--like {source}: not a libvirt URI, an hwloc XML file or a host tree directory")
    return topo


def _wire(value: str) -> str:
    """LAB:PORT, a port of a lab up with --switch-ports: the socket its QEMU listens on."""
    from bmslice.lab.qemu_cmdline import switch_port_socket
    from bmslice.lab.state import LabDir

    lab, _, port = value.partition(":")
    if not is_decimal(port) or len(port) > 2:
        raise LabError(f"--wire {value}: LAB:PORT, a port number of a lab up with --switch-ports")
    return str(switch_port_socket(LabDir.of(lab).share, int(port)))


def cmd_up(args: argparse.Namespace) -> int:
    from bmslice.lab import assets, machine
    from bmslice.lab.qemu_cmdline import BootOptions, check_kernel_args
    from bmslice.lab.shape import DESIGN_NOTE_TWIN, ShapedLab, shape_like
    from bmslice.model.sizes import parse_size_mib

    machine.refuse_if_up(args.name)  # before anything is fetched or printed under that name
    boot = BootOptions(
        extra_kernel_args=check_kernel_args(args.append or ""),
        systemd=args.systemd,
        disk_mib=parse_size_mib(args.disk_size) if args.disk_size else BootOptions.disk_mib,
        wires=tuple(_wire(port) for value in args.wire for port in value.split(",")),
        switch_ports=args.switch_ports,
        ssh_port=args.ssh_port,
        trace=tuple(args.trace),
    )
    memory = parse_size_mib(args.memory_per_node) if args.memory_per_node else None
    if args.like:
        shaped = shape_like(_like(args.like), memory) if memory else shape_like(_like(args.like))
    else:
        from dataclasses import replace

        shaped = ShapedLab(replace(DESIGN_NOTE_TWIN, node_memory_mib=memory) if memory else DESIGN_NOTE_TWIN)
    print(f"lab {args.name}: {shaped.shape.describe()}")
    for note in shaped.scaled_down:
        print(f"  scaled down: {note}")
    found = assets.ensure(_cache(args), refresh=args.refresh, say=_say)
    print(
        f"  QEMU {found.version_of('qemu-system-x86')}, kernel {found.kernel_release}, cache {found.cache}",
        flush=True,
    )
    info = machine.up(
        args.name,
        shaped.shape,
        found,
        boot=boot,
        ttl_s=args.ttl,
        boot_timeout_s=args.boot_timeout,
        libvirtd=not args.no_libvirtd,
        scaled_down=shaped.scaled_down,
        say=_say,
    )
    print(f"lab {info.name} is up; kernel args: {info.kernel_args}")
    print(f"run things in it: bmslice lab run --name {info.name} COMMAND; stop it: bmslice lab down --name {info.name}")
    return EXIT_OK


def cmd_reboot(args: argparse.Namespace) -> int:
    from bmslice.lab import assets, machine
    from bmslice.lab.qemu_cmdline import check_kernel_args

    extra = check_kernel_args(args.append) if args.append is not None else None
    machine.rebootable(args.name)  # before anything is checked or printed
    found = assets.ensure(_cache(args), say=_say)
    info = machine.reboot(args.name, found, extra, boot_timeout_s=args.boot_timeout, say=_say)
    print(f"lab {info.name} is up again; kernel args: {info.kernel_args}")
    return EXIT_OK


def _copy_in(path: Path) -> bytes:
    """A host file for the lab (it has its own /tmp, and sees the rest as it was at boot)."""
    try:
        if not path.is_file():
            raise LabError(f"{path}: not a regular file")
        if path.stat().st_size > MAX_COPY_BYTES:
            raise LabError(f"{path}: larger than {MAX_COPY_BYTES >> 20} MiB")
        return path.read_bytes()
    except OSError as exc:
        raise LabError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _is_script(word: str) -> bool:
    """A path to a host file that is not a compiled program: it is copied in (the lab may not see it)."""
    path = Path(word)
    if "/" not in word or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(4) != b"\x7fELF"
    except OSError:
        return False


def _job(args: argparse.Namespace) -> Any:
    from bmslice.lab.machine import Job

    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LabError("lab run: give a COMMAND or a SCRIPT to run")
    names = [path.name for path in args.file]
    if len(set(names)) != len(names):
        raise LabError("lab run: two --file arguments have the same file name")
    files = tuple((path.name, _copy_in(path)) for path in args.file)
    cwd = args.cwd or (None if files else os.getcwd())
    if _is_script(command[0]):
        script = _copy_in(Path(command[0]))
        return Job(tuple(command[1:]), script, cwd, args.timeout, files, args.fresh)
    return Job(tuple(command), None, cwd, args.timeout, files, args.fresh)


def _write(stream: Any) -> Any:
    def sink(data: bytes) -> None:
        stream.buffer.write(data)
        stream.flush()

    return sink


def cmd_run(args: argparse.Namespace) -> int:
    from bmslice.lab import machine

    job = _job(args)
    return machine.run(args.name, job, _write(sys.stdout), _write(sys.stderr), heartbeat_s=args.heartbeat, say=_say)


def cmd_down(args: argparse.Namespace) -> int:
    from bmslice.lab import machine

    was_up = machine.down(args.name, say=_say)
    print(f"lab {args.name} is down" if was_up else f"lab {args.name} was not up")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from bmslice.lab import machine

    found = machine.labs()
    if args.json:
        print_json([{**info.to_dict(), "running": alive} for info, alive in found])
        return EXIT_OK
    if not found:
        print("no lab is up")
    for info, alive in found:
        boot = info.boot
        extra = "; systemd as PID 1 on a root disk" if boot.systemd else ""
        extra += f"; {boot.switch_ports} switch port(s)" if boot.switch_ports else ""
        extra += f"; wired to {', '.join(boot.wires)}" if boot.wires else ""
        extra += f"; ssh on 127.0.0.1:{boot.ssh_port}" if boot.ssh_port else ""
        state = "up" if alive else "stopped"
        print(f"{info.name}: {state}; {info.shape.describe()}{extra}; kernel args: {info.kernel_args}")
    return EXIT_OK


def cmd_assets(args: argparse.Namespace) -> int:
    from bmslice.lab import assets

    found = assets.ensure(_cache(args), refresh=args.refresh, say=_say)
    if args.json:
        print_json(
            {
                "cache": str(found.cache),
                "kernel_release": found.kernel_release,
                "packages": [vars(p) for p in found.packages],
            }
        )
        return EXIT_OK
    print(f"lab cache {found.cache} (kernel {found.kernel_release})")
    for package in found.packages:
        print(f"  {package.package} {package.version} sha256:{package.sha256[:16]}")
    return EXIT_OK


def _name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"the lab's name (default {DEFAULT_NAME})")


def _cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=path_arg, metavar="DIR", help="where the lab's packages are cached")
    parser.add_argument("--refresh", action="store_true", help="fetch the current package versions again")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    lab = sub.add_parser("lab", help="an emulated twin of a server (IOMMU, NUMA, SR-IOV NICs) to rehearse in")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, metavar="LAB_COMMAND")

    up = lab_sub.add_parser("up", help="boot a lab and wait until it runs commands")
    _name(up)
    up.add_argument(
        "--like",
        metavar="SOURCE",
        help="shape it after a host: a sysfs tree ('/' for this one), a libvirt URI or an hwloc XML file",
    )
    up.add_argument("--memory-per-node", metavar="SIZE", help="RAM per NUMA node (default 1536MiB)")
    up.add_argument("--append", metavar="ARGS", help="extra kernel args, e.g. the ones `bmslice plan` gives")
    up.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", help="stop the lab after this long (3600)")
    up.add_argument("--boot-timeout", type=int, default=300, metavar="SECONDS")
    up.add_argument("--no-libvirtd", action="store_true", help="do not start libvirtd inside")
    up.add_argument(
        "--systemd",
        action="store_true",
        help="boot this machine's systemd as PID 1, on a root disk kept across `lab reboot`",
    )
    up.add_argument("--disk-size", metavar="SIZE", help="the root disk of a --systemd lab (default 4GiB, sparse)")
    up.add_argument(
        "--wire",
        action="append",
        default=[],
        metavar="LAB:PORT[,...]",
        help="plug the SR-IOV NICs, in order, into these ports of a lab up with --switch-ports",
    )
    up.add_argument(
        "--switch-ports",
        type=int,
        default=0,
        metavar="N",
        help="give the lab N NICs that are a switch's ports (other labs' --wire plug into them)",
    )
    up.add_argument("--ssh-port", type=int, metavar="PORT", help="forward 127.0.0.1:PORT here to the lab's port 22")
    up.add_argument(
        "--trace",
        action="append",
        default=[],
        metavar="EVENT",
        help="log this QEMU trace event (or NAME* for a prefix) to the lab's qemu.log, e.g. e1000e_core_write",
    )
    _cache_args(up)
    up.set_defaults(handler=cmd_up)

    reboot = lab_sub.add_parser("reboot", help="power a --systemd lab off and boot it again from its disk")
    _name(reboot)
    reboot.add_argument("--append", metavar="ARGS", help="boot with these extra kernel args instead of the last ones")
    reboot.add_argument("--boot-timeout", type=int, default=300, metavar="SECONDS")
    reboot.add_argument("--cache", type=path_arg, metavar="DIR", help="where the lab's packages are cached")
    reboot.set_defaults(handler=cmd_reboot)

    run_p = lab_sub.add_parser(
        "run",
        help="run COMMAND (a program as the lab sees it) or SCRIPT (a host script file, copied in) inside the lab",
    )
    _name(run_p)
    run_p.add_argument("--timeout", type=int, default=600, metavar="SECONDS", help="kill it after this long (600)")
    run_p.add_argument(
        "--file",
        type=path_arg,
        action="append",
        default=[],
        metavar="PATH",
        help="copy a host file in (repeatable); the command then runs where the copies are",
    )
    run_p.add_argument("--cwd", metavar="DIR", help="working directory in the lab (default: the current one)")
    run_p.add_argument(
        "--fresh", action="store_true", help="first drop the lab's cache of this machine's files (changed since boot)"
    )
    run_p.add_argument("--heartbeat", type=float, default=0, metavar="SECONDS", help="say it still runs this often")
    run_p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND|SCRIPT [ARGS]")
    run_p.set_defaults(handler=cmd_run)

    down = lab_sub.add_parser("down", help="power the lab off and remove its state")
    _name(down)
    down.set_defaults(handler=cmd_down)

    status = lab_sub.add_parser("status", help="the labs on this machine")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    assets_p = lab_sub.add_parser("assets", help="fetch or check what the lab boots, and print the versions")
    _cache_args(assets_p)
    assets_p.add_argument("--json", action="store_true")
    assets_p.set_defaults(handler=cmd_assets)


def main(argv: Sequence[str] | None = None) -> int:
    return run(standalone_parser(register), argv)


if __name__ == "__main__":
    sys.exit(main())
