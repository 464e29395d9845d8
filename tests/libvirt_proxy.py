"""A Unix-socket relay to the real libvirtd that can make libvirtd "go away" at a chosen call.

bmslice connects through `qemu+unix:///system?socket=<relay>`; the relay passes every byte
both ways to /run/libvirt/libvirt-sock unchanged and counts the remote-procedure calls the
client makes. When the client sends call number `cut_at`, the relay passes it on to
libvirtd — so libvirtd may well carry it out — and then closes every connection before the
reply comes back, and accepts no new ones. To the client this is exactly a libvirtd that
died or was stopped mid-run (its socket closes; nothing answers any more), while the one
real libvirtd on this shared machine keeps running for everyone else.

libvirt's wire format (src/rpc/virnetprotocol.x): each message is a 4-byte big-endian
length (counting itself), then program, version, procedure, type, serial, status (u32 each).
A call is type 0 of the remote program 0x20008086.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"
REMOTE_PROGRAM = 0x20008086
CALL = 0


@dataclass
class Relay:
    path: Path
    cut_at: int | None = None  # close everything once the client has sent this call (1-based)
    calls: int = 0
    cut: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _conns: list[socket.socket] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def serve(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            ready, _, _ = select.select([listener], [], [], 0.05)
            if not ready:
                continue
            client, _ = listener.accept()
            with self._lock:
                if self.cut:
                    client.close()
                    continue
                daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                daemon.connect(LIBVIRT_SOCK)
                self._conns += [client, daemon]
            threading.Thread(target=self._pump, args=(client, daemon, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(daemon, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        buffer = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not from_client:
                    dst.sendall(data)
                    continue
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= (length := struct.unpack(">I", buffer[:4])[0]):
                    message, buffer = buffer[:length], buffer[length:]
                    dst.sendall(message)
                    self._count(message)
        except OSError:
            pass
        finally:
            if self.cut:
                self.close_all()
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _count(self, message: bytes) -> None:
        program, _version, _procedure, kind = struct.unpack(">IIiI", message[4:20])
        if program != REMOTE_PROGRAM or kind != CALL:
            return
        with self._lock:
            self.calls += 1
            if self.cut_at is not None and self.calls >= self.cut_at:
                self.cut = True
        if self.cut:
            self.close_all()

    def close_all(self) -> None:
        with self._lock:
            self.cut = True
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextlib.contextmanager
def relay(path: Path, cut_at: int | None = None) -> Iterator[Relay]:
    """Run a relay at `path` for the block; everything is closed on the way out."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    state = Relay(path, cut_at)
    stop = threading.Event()
    thread = threading.Thread(target=state.serve, args=(listener, stop), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join(timeout=5)
        state.close_all()
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
