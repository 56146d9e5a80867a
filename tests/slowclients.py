"""Hostile slow clients, and a /health prober that times the node while they hold their sockets.

Used by tests/test_proxy.py (against a node behind nginx) and bench/slow_clients.py (the same
scenarios against bare gunicorn, side by side).
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

#: What each kind of slow client sends first; the trickle thread then adds one byte at a time.
_OPENERS: dict[str, tuple[bytes, bytes]] = {  # kind: (first bytes, byte trickled)
    "one byte": (b"G", b""),
    "trickled headers": (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", b"a"),
    "slow bodies": (b"PUT /enqueue?iterations=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000\r\n\r\n", b"b"),
    "idle keep-alive": (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b""),
}
KINDS = tuple(_OPENERS)


def _held(sock: socket.socket) -> bool:
    """True while the server still waits on this connection: it has neither answered nor closed it."""
    try:
        sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False


@dataclass
class SlowClients:
    """``count`` connections of one ``kind`` to 127.0.0.1:``port``, held until ``close()``.

    Trickling kinds send one more byte on every connection each ``interval`` seconds. An idle
    keep-alive connection has read its one answer before it goes quiet.
    """

    port: int
    kind: str
    count: int
    interval: float = 0.5
    source: str = "127.0.0.1"
    sockets: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def open(self) -> SlowClients:
        first, trickle = _OPENERS[self.kind]
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(self.source, 0))
            sock.sendall(first)
            self.sockets.append(sock)
        if self.kind == "idle keep-alive":
            for sock in self.sockets:
                _read_one_answer(sock)
        for sock in self.sockets:
            sock.settimeout(None)  # blocking, so that a MSG_DONTWAIT peek answers at once
        if trickle:
            self._thread = threading.Thread(target=self._trickle, args=(trickle,), daemon=True)
            self._thread.start()
        return self

    def _trickle(self, byte: bytes) -> None:
        while not self._stop.wait(self.interval):
            for sock in self.sockets:
                try:
                    sock.send(byte)
                except OSError:
                    pass

    def held(self) -> int:
        """How many connections the server still waits on (not answered, not closed)."""
        return sum(_held(sock) for sock in self.sockets)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()

    def __enter__(self) -> SlowClients:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def _read_one_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(4096)
    return head


def health_latency(port: int, timeout: float) -> float | None:
    """Seconds for one ``GET /health`` on a new connection, or None if it failed or took over ``timeout``."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            if not _read_one_answer(sock).startswith(b"HTTP/1.1 200"):
                return None
    except OSError:
        return None
    return time.monotonic() - started


@dataclass
class Probe:
    """Latencies of /health probes (None: failed or timed out)."""

    latencies: list[float | None]

    @property
    def answered(self) -> list[float]:
        return [x for x in self.latencies if x is not None]

    def summary(self) -> str:
        ok = self.answered
        if not ok:
            return f"0/{len(self.latencies)} answered"
        return (f"{len(ok)}/{len(self.latencies)} answered, median {statistics.median(ok) * 1000:.0f} ms, "
                f"max {max(ok) * 1000:.0f} ms")


def probe_health(port: int, count: int = 8, spacing: float = 0.2, timeout: float = 2.0) -> Probe:
    """``count`` /health probes, ``spacing`` seconds apart."""
    latencies = []
    for _ in range(count):
        latencies.append(health_latency(port, timeout))
        time.sleep(spacing)
    return Probe(latencies)
