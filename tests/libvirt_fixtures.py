"""Fixtures and helpers for the lifecycle tests (apply / verify / status / destroy).

Imported by the test modules that need them (not conftest.py, which other work shares).

* `qemu_conn` talks to the real libvirtd at qemu:///system. When it does not answer, the test
  FAILS with a message saying how to start it: CI starts libvirtd, and a silent skip would
  hide a broken CI. Set BMSLICE_SKIP_LIBVIRTD=1 to skip those tests instead.
* `qemu_slices` gives each test a unique `bmslice-test-<random>` name prefix and, on teardown,
  destroys and undefines every domain, deletes every volume and kills any QEMU process
  whose name carries that prefix, so nothing is left behind even when the test fails.
* `bmslice_lock_dir` gives each test its own lock directory (in-process and for subprocesses).
* `bmslice_cli` runs `python -m bmslice.cli.main ...` the way a user would; `bmslice_cli.start(...)`
  runs it in the background (`Running`), to signal it while it works.
* `libvirt_test_driver` holds a connection to libvirt's in-process test:///default driver open for
  the test, so that every connection bmslice opens in this process sees the same state.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

QEMU_URI = "qemu:///system"
TEST_URI = "test:///default"
SKIP_ENV = "BMSLICE_SKIP_LIBVIRTD"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHKe test@bmslice"
HAS_KVM = os.path.exists("/dev/kvm")
QEMU_PID_DIR = Path("/run/libvirt/qemu")


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        pytest.fail(
            "libvirt-python is not installed in this venv: pip install -e '.[dev,libvirt]' (scripts/setup-host.sh does)",
            pytrace=False,
        )
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def open_qemu() -> Any:
    """A connection to qemu:///system, or a clear failure (skip only under BMSLICE_SKIP_LIBVIRTD=1)."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: tests against the real libvirtd are skipped")
    libvirt = _libvirt()
    try:
        conn = libvirt.open(QEMU_URI)
    except libvirt.libvirtError as exc:
        pytest.fail(
            f"libvirtd does not answer on {QEMU_URI}: {exc.get_error_message()}. "
            f"Start it with `bash scripts/start-libvirtd.sh` (as root), or set {SKIP_ENV}=1 to skip these tests.",
            pytrace=False,
        )
    try:
        pool = conn.storagePoolLookupByName("default")
        active = bool(pool.isActive())
    except libvirt.libvirtError:
        active = False
    if not active:
        conn.close()
        pytest.fail(
            f"libvirt storage pool 'default' is missing or inactive on {QEMU_URI}; scripts/setup-host.sh creates it",
            pytrace=False,
        )
    return conn


@pytest.fixture
def qemu_conn() -> Iterator[Any]:
    conn = open_qemu()
    try:
        yield conn
    finally:
        conn.close()


# --- unique names and the cleanup that always runs ------------------------------------


def _qemu_pids(prefix: str) -> list[int]:
    """PIDs of QEMU processes libvirt started for domains named with `prefix` (-name guest=<name>,...)."""
    pids = []
    needle = f"guest={prefix}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"qemu" in cmdline.split(b"\0", 1)[0]:
            pids.append(int(entry.name))
    return pids


def purge(conn: Any, prefix: str) -> list[str]:
    """Remove every domain and volume named with `prefix`; return what was found."""
    libvirt = _libvirt()
    found = []
    for dom in conn.listAllDomains(0):
        if not dom.name().startswith(prefix):
            continue
        found.append(f"domain {dom.name()}")
        try:
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
        except libvirt.libvirtError:
            pass
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        try:
            pool.refresh(0)
            volumes = pool.listAllVolumes(0)
        except libvirt.libvirtError:
            continue
        for vol in volumes:
            if vol.name().startswith(prefix):
                found.append(f"volume {vol.path()}")
                with contextlib.suppress(libvirt.libvirtError):
                    vol.delete(0)
    return found


def kill_leftover_qemu(prefix: str) -> list[int]:
    """Last resort: QEMU processes started for this test's domains that libvirt no longer tracks."""
    pids = _qemu_pids(prefix)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


@dataclass
class Slices:
    """This test's name space on the real libvirtd."""

    prefix: str
    conn: Any

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def domains(self) -> list[str]:
        return sorted(d.name() for d in self.conn.listAllDomains(0) if d.name().startswith(self.prefix))

    def volumes(self) -> list[str]:
        libvirt = _libvirt()
        out: list[str] = []
        for pool in self.conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            pool.refresh(0)
            out.extend(v.path() for v in pool.listAllVolumes(0) if v.name().startswith(self.prefix))
        return sorted(out)

    def pool_files(self) -> list[str]:
        """Files named with the prefix in the default pool's directory (what the storage API may miss)."""
        pool_dir = Path("/var/lib/libvirt/images")
        return sorted(str(p) for p in pool_dir.glob(f"{self.prefix}*")) if pool_dir.is_dir() else []

    def processes(self) -> list[int]:
        return _qemu_pids(self.prefix)

    def leftovers(self) -> list[str]:
        return [*self.domains(), *self.volumes(), *self.pool_files(), *(f"pid {p}" for p in self.processes())]


def unique_prefix(kind: str = "test") -> str:
    return f"bmslice-{kind}-{secrets.token_hex(4)}"


def clean_up(prefix: str) -> None:
    """Whatever a test left under `prefix`, gone: domains, volumes, then QEMU processes."""
    conn = open_qemu()
    try:
        purge(conn, prefix)
    finally:
        conn.close()
    kill_leftover_qemu(prefix)


@pytest.fixture
def qemu_slices(qemu_conn: Any) -> Iterator[Slices]:
    prefix = unique_prefix()
    try:
        yield Slices(prefix, qemu_conn)
    finally:
        clean_up(prefix)


# --- lock directory and the command line ----------------------------------------------


@pytest.fixture
def bmslice_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lock directory of this test's own, for in-process calls and for the CLI subprocesses."""
    import bmslice.apply.lock

    path = tmp_path / "lock"
    monkeypatch.setattr(bmslice.apply.lock, "LOCK_DIR", path)
    monkeypatch.setenv("BMSLICE_LOCK_DIR", str(path))
    return path


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.stdout.splitlines()]

    def __str__(self) -> str:  # shown by pytest when an assertion about the run fails
        return f"bmslice {' '.join(self.args)} -> {self.returncode}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def one_error(run: Run) -> str:
    """A refusal is exactly one `error:` line on stderr, exit 2, no traceback."""
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr, run
    lines = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), run
    return lines[0]


def steps(run: Run) -> list[str]:
    """The step lines an apply/destroy printed (indented by two spaces)."""
    return [line[2:] for line in run.stdout.splitlines() if line.startswith("  ")]


class Running:
    """A bmslice run in the background: read its stdout line by line as it comes, signal it, wait."""

    def __init__(self, argv: tuple[str, ...], proc: subprocess.Popen[str]) -> None:
        self.argv = argv
        self.proc = proc
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_line(self, wanted: str, seconds: float = 60.0) -> str:
        """Block until a stdout line contains `wanted`; fail (after killing the run) if it never comes."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.proc.kill()
                pytest.fail(f"bmslice {' '.join(self.argv)} never printed {wanted!r}; it printed: {self.seen}")
            self.seen.append(line)
            if wanted in line:
                return line

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, seconds: float = 120.0) -> Run:
        """Wait for the end; the whole stdout (lines already read included) and stderr."""
        assert self.proc.stderr is not None
        self.proc.wait(timeout=seconds)
        rest = []
        while (line := self._lines.get(timeout=10)) is not None:
            rest.append(line)
        return Run(self.argv, self.proc.returncode, "".join([*self.seen, *rest]), self.proc.stderr.read())


class Cli:
    def __init__(self, cwd: Path, lock: Path) -> None:
        self.cwd = cwd
        self.env = {**os.environ, "BMSLICE_LOCK_DIR": str(lock)}

    def __call__(self, *args: str | Path) -> Run:
        argv = tuple(str(a) for a in args)
        proc = subprocess.run(
            [sys.executable, "-m", "bmslice.cli.main", *argv],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return Run(argv, proc.returncode, proc.stdout, proc.stderr)

    def start(self, *args: str | Path) -> Running:
        argv = tuple(str(a) for a in args)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bmslice.cli.main", *argv],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return Running(argv, proc)


@pytest.fixture
def bmslice_cli(tmp_path: Path, bmslice_lock_dir: Path) -> Cli:
    return Cli(tmp_path, bmslice_lock_dir)


# --- specs -----------------------------------------------------------------------------


def host_section(**extra: object) -> dict[str, object]:
    """Host keeps one core per node; TCG where this machine has no KVM."""
    host: dict[str, object] = {"reserved_cores_per_node": 1, "reserved_memory_per_node": "512MiB"}
    if not HAS_KVM:
        host["domain_type"] = "qemu"
    host.update(extra)
    return host


def vm_entry(name: str, **extra: object) -> dict[str, object]:
    """The smallest slice: 1 vCPU, 128 MiB, emulator on the host CPUs, one IOThread."""
    vm: dict[str, object] = {"name": name, "vcpus": 1, "memory": "128MiB", "emulator": "host", "iothreads": 1}
    if HAS_KVM:  # nested virtualisation here: host-passthrough needs IA32_ARCH_CAPABILITIES off
        vm["disable_cpu_features"] = ["arch-capabilities"]
    vm.update(extra)
    return vm


def with_disk(vm: dict[str, object]) -> dict[str, object]:
    return {**vm, "disk": {"size": "64MiB"}, "cloud_init": {"ssh_authorized_keys": [SSH_KEY]}}


def write_spec(path: Path, vms: Sequence[Mapping[str, object]], host: Mapping[str, object] | None = None) -> Path:
    path.write_text(yaml.safe_dump({"host": dict(host or host_section()), "vms": [dict(v) for v in vms]}))
    return path


# --- host trees ------------------------------------------------------------------------


def host_tree(root: Path, cores: int, threads: int = 1, **spec: Any) -> Path:
    """A one-socket, one-node sysfs/procfs tree with `cores` x `threads` CPUs and 16 GiB."""
    from treebuilder import HostSpec, NodeMemory, cpu_layout, write_tree

    return write_tree(
        HostSpec(cpus=cpu_layout(1, cores, threads, siblings="spread"), node_memory={0: NodeMemory(16384)}, **spec),
        root,
    )


# --- what the kernel and libvirt say about a running slice ------------------------------


def qemu_pid(name: str) -> int:
    return int((QEMU_PID_DIR / f"{name}.pid").read_text().strip())


def thread_cpus(pid: int) -> dict[int, tuple[str, str]]:
    """tid -> (comm, Cpus_allowed_list) for every thread of `pid`, straight from /proc."""
    out = {}
    for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
        try:
            comm = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except OSError:
            continue
        allowed = next(
            line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list:")
        )
        out[int(task.name)] = (comm, allowed)
    return out


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def libvirt_test_driver() -> Iterator[Any]:
    """test:///default kept open for the test: bmslice's own connections in this process share its state."""
    libvirt = _libvirt()
    conn = libvirt.open(TEST_URI)
    try:
        yield conn
    finally:
        conn.close()  # the last connection gone, the driver's state is dropped
