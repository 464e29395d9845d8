"""A private sshd on loopback, so the remote paths (qemu+ssh://, Ansible over ssh) run for real.

`start_sshd(work)` starts Debian's /usr/sbin/sshd in the foreground (-D) on a free port of
127.0.0.1 with a config, a host key and a client key pair made in `work`; nothing of the
machine's own ssh setup is read or changed (/etc/ssh, /root/.ssh):

- key-only: PasswordAuthentication and KbdInteractiveAuthentication off, root by key only
  (PermitRootLogin prohibit-password), AuthorizedKeysFile the client key made here;
- StrictModes off: the key files live under /tmp, whose mode (1777) sshd's check refuses;
- SetEnv: what each session on this "remote" sees, e.g. the test's BMSLICE_LOCK_DIR, so a
  bmslice run there (the Ansible module's) locks in the test's directory too;
- the client side is a config file (this key only, a known_hosts holding the host key made
  here, strict checking, batch mode) and `ssh`, a two-line wrapper running /usr/bin/ssh -F
  with it. libvirt's qemu+ssh transport takes the wrapper as its `command=` parameter (its
  `known_hosts` parameter belongs to the libssh transports only) and Ansible as
  `ansible_ssh_executable`.

sshd's privilege-separation directory /run/sshd is compiled in; the Debian package's
service makes it at start. When it is missing it is made here (empty, root, 0755, as the
package does) and removed again at the end.

A sshd that cannot start is a test FAILURE with its own words, never a skip: a skipped
remote test would hide a machine where the remote path is not tested at all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")
LISTENING = "Server listening on 127.0.0.1 port"


@dataclass(frozen=True)
class SshServer:
    port: int
    work: Path
    process: subprocess.Popen[bytes]
    client_key: Path
    ssh: Path  # /usr/bin/ssh with this server's client config

    @property
    def log(self) -> Path:
        return self.work / "sshd.log"

    def uri(self, path: str = "/system") -> str:
        """qemu+ssh to this machine's libvirtd through this sshd, with libvirt's own ssh options."""
        return f"qemu+ssh://root@127.0.0.1:{self.port}{path}?command={self.ssh}&keyfile={self.client_key}&no_tty=1"

    def logins(self) -> int:
        """Sessions sshd accepted, by public key (the only way in)."""
        return self.log.read_text().count("Accepted publickey for root from 127.0.0.1")

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.ssh), "-p", str(self.port), "root@127.0.0.1", command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _keygen(path: Path, comment: str) -> None:
    # -N '': the key has no passphrase (there is no password anywhere); it never leaves `work`
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def write_config(work: Path, port: int, env: Mapping[str, str]) -> tuple[Path, Path, Path]:
    """sshd_config, the client key and the client's ssh wrapper, all in `work`."""
    _keygen(work / "host_key", "bmslice-test-host")
    _keygen(work / "client_key", "bmslice-test-client")
    (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
    set_env = "".join(f"SetEnv {name}={value}\n" for name, value in env.items())
    (work / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1:{port}\n"
        f"HostKey {work / 'host_key'}\n"
        f"AuthorizedKeysFile {work / 'authorized_keys'}\n"
        "PidFile none\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "MaxStartups 100\n"
        f"{set_env}"
    )
    host_key = (work / "host_key.pub").read_text().split()
    (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (work / "ssh_config").write_text(
        "Host *\n"
        f"  IdentityFile {work / 'client_key'}\n"
        "  IdentitiesOnly yes\n"
        "  IdentityAgent none\n"
        f"  UserKnownHostsFile {work / 'known_hosts'}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  PasswordAuthentication no\n"
        "  KbdInteractiveAuthentication no\n"
        "  BatchMode yes\n"
    )
    wrapper = work / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F "{work / "ssh_config"}" "$@"\n')
    wrapper.chmod(0o755)
    return work / "sshd_config", work / "client_key", wrapper


def _fail(why: str, log: Path | None = None) -> None:
    said = log.read_text().strip() if log is not None and log.exists() else ""
    pytest.fail(f"sshd did not start: {why}" + (f"; sshd said: {said}" if said else ""), pytrace=False)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (sshd's sessions call setsid, so a process group would miss them)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Every session sshd forked, then the listener (which reaps them), by pid; the sessions'
    clients (libvirt's ssh, Ansible's ControlPersist master) see the connection close and end."""
    for pid in _descendants(process.pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _descendants(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _listening(process: subprocess.Popen[bytes], log: Path, seconds: float = 20.0) -> bool:
    """True once sshd listens; False when it lost its port to another process (a retry helps);
    a failure saying why otherwise."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        said = log.read_text() if log.exists() else ""
        if LISTENING in said:
            return True
        if process.poll() is not None:
            if "Address already in use" in said:
                return False
            _fail(f"{SSHD} exited with status {process.returncode}", log)
        time.sleep(0.05)
    _stop(process)
    _fail(f"{SSHD} did not listen within {seconds:.0f} s", log)
    return False  # not reached: _fail raises


@contextmanager
def start_sshd(work: Path, env: Mapping[str, str] | None = None, port: int | None = None) -> Iterator[SshServer]:
    """A running sshd (see the top) on `port` or a free one; stopped, with its sessions, on the way out."""
    if not SSHD.exists():
        _fail(f"{SSHD} is missing: apt-get install openssh-server (scripts/setup-host.sh does)")
    made_privsep = not PRIVSEP_DIR.exists()
    if made_privsep:
        PRIVSEP_DIR.mkdir(mode=0o755)
    try:
        for attempt in range(3):  # a free port can be taken by another process before sshd binds it
            server = _launch(work / f"sshd-{attempt}", port or free_port(), env or {})
            if server is not None:
                break
            if port is not None:
                _fail(f"port {port} of 127.0.0.1 is in use", work / f"sshd-{attempt}" / "sshd.log")
        else:
            _fail("three free ports in a row were taken before sshd could bind them")
        try:
            yield server
        finally:
            _stop(server.process)
    finally:
        if made_privsep:
            with suppress(OSError):
                PRIVSEP_DIR.rmdir()


def _launch(work: Path, port: int, env: Mapping[str, str]) -> SshServer | None:
    work.mkdir(parents=True)
    config, client_key, wrapper = write_config(work, port, env)
    check = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        _fail(f"{SSHD} -t refused {config}: {check.stderr.strip()}")
    # -D: in the foreground, under this test; -E: its log to a file of ours, not syslog
    process = subprocess.Popen(
        [str(SSHD), "-D", "-f", str(config), "-E", str(work / "sshd.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not _listening(process, work / "sshd.log"):
        return None
    return SshServer(port, work, process, client_key, wrapper)
