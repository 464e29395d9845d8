"""Slice performance: boot a minimal Linux guest laid out by bmslice and compare it with bare metal.

Run (root, libvirtd at qemu:///system): .venv/bin/python bench/slice_perf/run.py

What it does, within about 5 minutes:
1. Fetches a Debian cloud kernel and busybox-static with `apt-get download` into bench/.cache
   (once; unpacked with dpkg-deb -x), compiles slicebench.c with gcc -static, and writes an
   initramfs (newc cpio, written in Python) holding busybox, slicebench and an /init that runs
   it and powers the guest off.
2. Plans a 1-vCPU slice on this host with bmslice's own planner (the host keeps CPU 0's core,
   the vCPU is pinned to CPU 1, the emulator and IOThread to CPU 0), renders its domain XML with
   bmslice's renderer, and adds direct kernel boot and a file serial port with lxml.
3. Measures, each under the same noisy host workload (busy loops and a memory walker):
   A  the bmslice guest, noise confined to the host CPU (CPU 0);
   B  the same guest without <cputune> (unpinned), noise free to run on every CPU;
   C  slicebench directly on the host, pinned to CPU 1, noise on CPU 0 (bare-metal baseline).
   KVM is tried first; a guest that prints nothing within the boot timeout is destroyed and
   booted again under TCG. Every figure says which accelerator produced it.
   A2 (TCG only, --no-diagnostic skips it): A with the emulator and IOThread moved to CPU 1,
   because under TCG QEMU's main-loop thread runs the guest's timers.
Every domain (transient, uniquely named) and run file is removed on exit; the download cache stays.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = ROOT / "bench" / ".cache"
sys.path.insert(0, str(HERE))

from initramfs import Newc  # noqa: E402

URI = "qemu:///system"
ACCEL_NAME = {"kvm": "KVM", "qemu": "TCG"}
HOST_CPU, SLICE_CPU = 0, 1
# slicebench arguments: 10000 wake-ups at 1 ms on an absolute schedule, 5 x 100M workload iterations, SCHED_FIFO 80.
LOOPS, INTERVAL_US, MODE, WORK_REPS, WORK_MITER = 10000, 1000, "abs", 5, 100
BOOT_TIMEOUT = {"kvm": 30.0, "qemu": 150.0}  # seconds until /init prints its first line
RUN_TIMEOUT = {"kvm": 60.0, "qemu": 150.0}  # seconds from that line to "SLICEBENCH done"
GUEST_CMDLINE = "console=ttyS0 quiet panic=-1 rdinit=/init"

NOISE = r"""
import os, sys, time
kind = sys.argv[1]
if kind == "spin":
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
else:  # memory walker: dirty 64 MiB page by page, again and again
    buf = bytearray(64 << 20)
    i = 0
    while True:
        for off in range(0, len(buf), 4096):
            buf[off] = i & 0xFF
        i += 1
"""
NOISE_KINDS = ("spin", "spin", "mem")
CREATED: list[str] = []  # every domain name this run created, for the final clean-up


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- artifacts ---------------------------------------------------------------------------------------------


def _apt_download(package: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    for attempt in range(2):
        proc = subprocess.run(["apt-get", "download", package], cwd=CACHE, capture_output=True, text=True)
        found = sorted(CACHE.glob(f"{package}_*.deb"))
        if proc.returncode == 0 and found:
            return found[-1]
        if attempt == 0:
            log(f"apt-get download {package} failed ({proc.stderr.strip()[-200:]}); running apt-get update")
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    raise SystemExit(f"cannot download {package}: {proc.stderr.strip()[-300:]}")


def _kernel_package() -> str:
    """The linux-image-<version>-cloud-amd64 the meta-package points at (a cached one if present)."""
    cached = sorted(CACHE.glob("linux-image-*-cloud-amd64_*.deb"))
    if cached:
        return cached[-1].name.split("_")[0]
    out = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True).stdout
    match = re.search(r"Depends: (linux-image-[\w.-]+-cloud-amd64)\b", out)
    if not match:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        out = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True).stdout
        match = re.search(r"Depends: (linux-image-[\w.-]+-cloud-amd64)\b", out)
    if not match:
        raise SystemExit("cannot find a linux-image-*-cloud-amd64 package (apt-cache depends linux-image-cloud-amd64)")
    return match.group(1)


def _unpack(deb: Path) -> Path:
    dest = CACHE / (deb.stem + ".d")
    if not dest.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=CACHE))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(dest)
    return dest


def kernel_and_busybox() -> tuple[Path, str, Path]:
    package = _kernel_package()
    kdir = _unpack(_apt_download(package))
    kernels = sorted((kdir / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise SystemExit(f"no vmlinuz in {package}")
    busybox = _unpack(_apt_download("busybox-static")) / "bin" / "busybox"
    return kernels[-1], kernels[-1].name.removeprefix("vmlinuz-"), busybox


def build_slicebench(out: Path) -> Path:
    binary = out / "slicebench"
    subprocess.run(
        ["gcc", "-O2", "-static", "-Wall", "-o", str(binary), str(HERE / "slicebench.c")],
        check=True,
        capture_output=True,
    )
    return binary


def build_initramfs(out: Path, busybox: Path, slicebench: Path) -> Path:
    args = f"{LOOPS} {INTERVAL_US} {MODE} {WORK_REPS} {WORK_MITER} fifo"
    init = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "SLICEBENCH boot uptime_s=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r) cpus=$(nproc) \\
clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource) \\
hypervisor=$(grep -c hypervisor /proc/cpuinfo)"
/slicebench {args}
echo "SLICEBENCH end"
poweroff -f
"""
    cpio = Newc()
    for d in ("bin", "dev", "proc", "sys", "tmp"):
        cpio.directory(d)
    cpio.device("dev/console", 5, 1)
    cpio.device("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("slicebench", slicebench.read_bytes(), 0o755)
    cpio.file("init", init.encode(), 0o755)
    path = out / "initrd.cpio"
    path.write_bytes(cpio.finish())
    return path


# --- the domain, laid out by bmslice ----------------------------------------------------------------------


def bmslice_domain(
    name: str,
    domain_type: str,
    pinned: bool,
    kernel: Path,
    initrd: Path,
    serial: Path,
    emulator_cpu: int | None = None,
) -> tuple[str, Any]:
    """bmslice plans and renders the slice; lxml adds direct kernel boot and the file serial port.

    pinned=False drops <cputune> (layout B); emulator_cpu moves the emulator and IOThread pins
    (the diagnostic layout A2), everything else stays as bmslice rendered it.
    """
    from bmslice.model.spec import spec_from_data
    from bmslice.plan.planner import make_plan
    from bmslice.render.domain_model import domain_from_plan
    from bmslice.render.domain_xml import to_element
    from bmslice.topology.sysfs import read_host_tree

    vm: dict[str, Any] = {"name": name, "vcpus": 1, "memory": "512MiB", "emulator": "host", "iothreads": 1}
    if domain_type == "kvm":
        vm["disable_cpu_features"] = ["arch-capabilities"]  # nested virtualisation (docs: environment.md)
    spec = spec_from_data(
        {"host": {"reserved_cores_per_node": 1, "domain_type": domain_type}, "vms": [vm]}, "slice_perf"
    )
    plan = make_plan(read_host_tree(Path("/")), spec, "slice_perf")
    vm_plan = plan.vms[0]
    root = to_element(domain_from_plan(vm_plan))

    os_el = root.find("os")
    for boot in os_el.findall("boot"):
        os_el.remove(boot)
    etree.SubElement(os_el, "kernel").text = str(kernel)
    etree.SubElement(os_el, "initrd").text = str(initrd)
    etree.SubElement(os_el, "cmdline").text = GUEST_CMDLINE
    root.find("on_reboot").text = "destroy"
    devices = root.find("devices")
    for tag in ("serial", "console"):
        for el in devices.findall(tag):
            devices.remove(el)
    serial_el = etree.Element("serial", type="file")
    etree.SubElement(serial_el, "source", path=str(serial))
    etree.SubElement(serial_el, "target", port="0")
    devices.insert(0, serial_el)
    tune = root.find("cputune")
    if not pinned and tune is not None:
        root.remove(tune)
    elif emulator_cpu is not None and tune is not None:
        for el in tune.findall("emulatorpin") + tune.findall("iothreadpin"):
            el.set("cpuset", str(emulator_cpu))
    return etree.tostring(root, pretty_print=True, encoding="unicode"), plan


# --- noise --------------------------------------------------------------------------------------------------


class Noise:
    """A few CPU- and memory-bound processes; confined to `cpus`, or free on every CPU."""

    def __init__(self, cpus: set[int] | None) -> None:
        self.cpus = cpus
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Noise:
        for kind in NOISE_KINDS:
            proc = subprocess.Popen([sys.executable, "-c", NOISE, kind], stdout=subprocess.DEVNULL)
            os.sched_setaffinity(proc.pid, self.cpus if self.cpus is not None else os.sched_getaffinity(0))
            self.procs.append(proc)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def where(self) -> str:
        return "CPU " + ",".join(map(str, sorted(self.cpus))) if self.cpus is not None else "all CPUs"


# --- results ------------------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    accel: str
    latency: dict[str, float] = field(default_factory=dict)
    work: dict[str, float] = field(default_factory=dict)
    info: str = ""
    error: str = ""
    notes: list[str] = field(default_factory=list)
    others: set[str] = field(default_factory=set)  # other libvirt domains running during the measurement


def parse(text: str, result: Result) -> None:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("SLICEBENCH latency") or line.startswith("SLICEBENCH work"):
            target = result.latency if "latency" in line.split()[1] else result.work
            for key, value in re.findall(r"(\w+)=([-\w.()]+)", line):
                if re.fullmatch(r"-?\d+(\.\d+)?", value):
                    target[key] = float(value)
        elif line.startswith("SLICEBENCH boot") or line.startswith("SLICEBENCH start"):
            result.info += line.removeprefix("SLICEBENCH ") + "; "


def thread_pins(conn: Any, dom: Any) -> str:
    """The kernel's own view of the QEMU threads' CPU affinity."""
    pidfile = Path(f"/run/libvirt/qemu/{dom.name()}.pid")
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return "qemu pid unknown"
    seen: dict[str, set[str]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            allowed = re.search(r"Cpus_allowed_list:\s*(\S+)", (task / "status").read_text())
        except OSError:
            continue
        kind = "vCPU" if comm.startswith("CPU ") else ("IOThread" if comm.startswith("IO iothread") else "other")
        seen.setdefault(kind, set()).add(allowed.group(1) if allowed else "?")
    return ", ".join(f"{kind} threads on {'/'.join(sorted(v))}" for kind, v in sorted(seen.items()))


def others_running(conn: Any) -> set[str]:
    """Active domains this run did not create (other users of this libvirtd disturb the figures)."""
    try:
        return {d.name() for d in conn.listAllDomains(1) if d.name() not in CREATED}  # 1: active only
    except Exception:
        return set()


def boot_guest(
    conn: Any,
    label: str,
    accel: str,
    pinned: bool,
    art: dict[str, Path],
    run_dir: Path,
    deadline: float,
    emulator_cpu: int | None = None,
) -> Result:
    import libvirt

    result = Result(label, accel)
    name = f"bmslice-perf-{uuid.uuid4().hex[:8]}-{label.lower()}"
    CREATED.append(name)
    serial = run_dir / f"{name}.serial.log"
    xml, plan = bmslice_domain(name, accel, pinned, art["kernel"], art["initrd"], serial, emulator_cpu)
    (run_dir / f"{name}.xml").write_text(xml)
    if label == "A":
        vm = plan.vms[0]
        result.notes.append(
            f"bmslice plan: host keeps CPUs {plan.host.reserved_cpus}, vCPU 0 -> CPU {vm.vcpu_pins[0]}, "
            f"emulator+IOThread -> CPUs {vm.emulator_cpus}; planned host kernel args "
            f"{' '.join(a for a in plan.host.kernel_args if a.split('=')[0] in ('isolcpus', 'nohz_full', 'irqaffinity'))}"
            " (not applied: that needs a reboot of this machine)"
        )
    dom = None
    try:
        start = time.monotonic()
        dom = conn.createXML(xml, 0)
        result.notes.append(f"QEMU threads: {thread_pins(conn, dom)}")
        boot_deadline = min(deadline, start + BOOT_TIMEOUT[accel])
        booted = None
        text = ""
        while time.monotonic() < boot_deadline + (RUN_TIMEOUT[accel] if booted else 0):
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if booted is None and "SLICEBENCH boot" in text:
                booted = time.monotonic() - start
                result.notes.append(f"guest reached /init {booted:.1f} s after start")
            if "SLICEBENCH done" in text or "SLICEBENCH end" in text:
                break
            result.others |= others_running(conn)
            try:
                if not dom.isActive():
                    break
            except libvirt.libvirtError:
                break  # transient domain gone: it powered off
            time.sleep(0.5)
        parse(text, result)
        if booted is None:
            result.error = f"no output from the guest within {BOOT_TIMEOUT[accel]:.0f} s"
        elif not result.work:
            result.error = "the guest did not finish the measurement: " + text.strip()[-300:]
    finally:
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
    return result


def run_host(art: dict[str, Path]) -> Result:
    result = Result("C", "none (bare host)")
    proc = subprocess.run(
        [str(art["slicebench"]), str(LOOPS), str(INTERVAL_US), MODE, str(WORK_REPS), str(WORK_MITER), "fifo"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.sched_setaffinity(0, {SLICE_CPU}),
    )
    parse(proc.stdout, result)
    if not result.work:
        result.error = proc.stderr.strip()[-300:] or "no output"
    return result


# --- main ---------------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(results: dict[str, Result], started: float) -> None:
    print()
    print(
        f"slice_perf {dt.date.today().isoformat()}  host: {platform.node()} {platform.release()}, "
        f"{os.cpu_count()} CPUs; took {time.monotonic() - started:.0f} s"
    )
    print(
        f"slicebench: {LOOPS} wake-ups, clock_nanosleep {INTERVAL_US} us {MODE} schedule, SCHED_FIFO 80; workload "
        f"{WORK_MITER}M xorshift+table iterations, median of {WORK_REPS}; noise: {len(NOISE_KINDS)} processes "
        f"({', '.join(NOISE_KINDS)})"
    )
    rows = []
    what = {
        "A": "bmslice slice: vCPU pinned to CPU 1, emulator on CPU 0, noise on CPU 0",
        "A2": "diagnostic: as A, but emulator + IOThread on CPU 1 with the vCPU",
        "B": "same guest unpinned (no cputune), noise on all CPUs",
        "C": "bare host: slicebench pinned to CPU 1, noise on CPU 0",
    }
    for key in ("A", "A2", "B", "C"):
        r = results.get(key)
        if r is None:
            continue
        lat, work = r.latency, r.work
        rows.append(
            f"{key:<3} {ACCEL_NAME.get(r.accel, r.accel):<16} {fmt(lat.get('p50_us')):>9} {fmt(lat.get('p99_us')):>9} {fmt(lat.get('max_us')):>9}"
            f" {fmt(work.get('median_ms')):>11}   {what[key]}"
        )
    print(f"\n    {'accelerator':<16} {'p50 us':>9} {'p99 us':>9} {'max us':>9} {'work ms':>11}   setup")
    print("\n".join(rows))
    c = results.get("C")
    for key in ("A", "A2", "B"):
        r = results.get(key)
        if r is None or c is None or not r.latency or not c.latency or not r.work or not c.work:
            continue
        ratio = [
            r.latency["p50_us"] / c.latency["p50_us"],
            r.latency["p99_us"] / c.latency["p99_us"],
            r.latency["max_us"] / c.latency["max_us"],
            r.work["median_ms"] / c.work["median_ms"],
        ]
        print(
            f"{key + '/C':<5} ({ACCEL_NAME.get(r.accel, r.accel)} vs host): p50 x{ratio[0]:.2f}  p99 x{ratio[1]:.2f}  max x{ratio[2]:.2f}  work x{ratio[3]:.2f}"
        )
    a, b = results.get("A"), results.get("B")
    if a and b and a.accel != b.accel:
        print("note: A and B ran under different accelerators; compare each with C only with that in mind")
    for key in ("A", "A2", "B", "C"):
        r = results.get(key)
        if r is None:
            continue
        for note in r.notes:
            print(f"{key}: {note}")
        if r.info:
            print(f"{key}: {r.info.rstrip('; ')}")
        if r.others:
            print(f"{key}: WARNING: other domains ran during this measurement: {', '.join(sorted(r.others))}")
        if r.error:
            print(f"{key}: ERROR {r.error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--accel", choices=("auto", "kvm", "qemu"), default="auto", help="auto: KVM, falling back to TCG"
    )
    parser.add_argument(
        "--no-diagnostic", action="store_true", help="under TCG, skip the A2 run (emulator moved to the vCPU's CPU)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run directory (XML, serial logs) for inspection")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("slice_perf needs root (QEMU runs as root here; SCHED_FIFO on the host)")
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("slice_perf needs at least 2 CPUs")
    started = time.monotonic()
    all_cpus_at_start = os.sched_getaffinity(0)
    deadline = started + 285  # stay under 5 minutes all in
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions; no stderr noise
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE if CACHE.is_dir() else None))
    results: dict[str, Result] = {}
    conn = None
    try:
        log("fetching the kernel and busybox (cached after the first run)")
        kernel, kver, busybox = kernel_and_busybox()
        slicebench = build_slicebench(run_dir)
        initrd = build_initramfs(run_dir, busybox, slicebench)
        art = {"kernel": kernel, "initrd": initrd, "slicebench": slicebench}
        log(f"kernel {kver}, initramfs {initrd.stat().st_size // 1024} KiB")
        conn = libvirt.open(URI)
        order = ["kvm", "qemu"] if args.accel == "auto" else [args.accel]
        if not Path("/dev/kvm").exists() and "kvm" in order and args.accel == "auto":
            order = ["qemu"]
        accel_ok: str | None = None
        all_cpus = os.sched_getaffinity(0)
        for label, pinned, noise_cpus in (("A", True, {HOST_CPU}), ("B", False, None)):
            tries = ["qemu"] if accel_ok == "qemu" else order
            failed: list[str] = []
            for accel in tries:
                if time.monotonic() > deadline - 20:
                    results[label] = Result(label, accel, error="skipped: out of time", notes=failed)
                    break
                # this script's own polling is host work too: on the host CPU for A, anywhere for B
                os.sched_setaffinity(0, noise_cpus if noise_cpus is not None else all_cpus)
                with Noise(noise_cpus) as noise:
                    log(f"{label}: booting under {'KVM' if accel == 'kvm' else 'TCG'}, noise on {noise.where()}")
                    result = boot_guest(conn, label, accel, pinned, art, run_dir, deadline)
                result.notes[:0] = failed
                results[label] = result
                if not result.error:
                    accel_ok = accel
                    log(f"{label}: done (p99 {result.latency.get('p99_us', 0):.0f} us)")
                    break
                log(f"{label}: {accel} failed: {result.error[:120]}")
                failed.append(f"{'KVM' if accel == 'kvm' else 'TCG'} attempt failed: {result.error[:100]}")
            if label == "A" and accel_ok == "qemu" and "kvm" in order:
                results["A"].notes.append("KVM produced no output, so B runs under TCG as well (same accelerator as A)")
        if accel_ok == "qemu" and not args.no_diagnostic and time.monotonic() < deadline - 40:
            # Under TCG QEMU's main-loop (emulator) thread runs the guest's timers: A2 shows how much of A
            # comes from that thread sharing the noisy host CPU.
            os.sched_setaffinity(0, {HOST_CPU})
            with Noise({HOST_CPU}):
                log("A2: as A, emulator + IOThread moved to CPU 1 with the vCPU (diagnostic, TCG only)")
                results["A2"] = boot_guest(conn, "A2", "qemu", True, art, run_dir, deadline, emulator_cpu=SLICE_CPU)
        os.sched_setaffinity(0, {HOST_CPU})
        with Noise({HOST_CPU}):
            log("C: slicebench on the host, pinned to CPU 1")
            before = others_running(conn)
            results["C"] = run_host(art)
            results["C"].others = before | others_running(conn)
        report(results, started)
        print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min)")
    finally:
        os.sched_setaffinity(0, all_cpus_at_start)
        if conn is not None:
            for name in CREATED:
                try:
                    dom = conn.lookupByName(name)
                    if dom.isActive():
                        dom.destroy()
                    if dom.isPersistent():
                        dom.undefine()
                except libvirt.libvirtError:
                    pass  # transient and already gone
            conn.close()
        if not args.keep:
            for name in CREATED:  # libvirtd's per-domain QEMU log
                Path(f"/var/log/libvirt/qemu/{name}.log").unlink(missing_ok=True)
        if args.keep:
            print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if all(not r.error for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
