"""A TCP proxy on 127.0.0.1 that a test can cut and heal, to partition two nodes.

``TcpProxy(target_port)`` listens on a port of its own and forwards every connection to the
target. ``cut("blackhole")``: connections are still accepted but nothing goes through, either
way, also on connections already open (a peer behind a dead link or a silent firewall: callers
run into their timeouts). ``cut("refuse")``: the listening socket is closed and open connections
are reset (a peer whose port is closed: callers fail at once). ``heal()`` forwards again, on the
same port. Threads only; ``close()`` stops everything.
"""

from __future__ import annotations

import socket
import struct
import threading

FORWARD, BLACKHOLE, REFUSE = "forward", "blackhole", "refuse"


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = FORWARD
        self.connections = 0  # accepted so far
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = threading.Event()
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self._accepting = self._start(self._accept_loop, self._listener)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------- control
    def cut(self, mode: str = BLACKHOLE) -> None:
        assert mode in (BLACKHOLE, REFUSE)
        with self._lock:
            self.mode = mode
            if mode == REFUSE:
                self._listener.close()
                for sock in self._open:
                    _reset(sock)
                self._open.clear()

    def heal(self) -> None:
        with self._lock:
            for sock in self._open:  # what they carried lost bytes: their ends must start afresh
                _reset(sock)
            self._open.clear()
            if self.mode == REFUSE:
                self._accepting.join()
                self._listener = self._listen(self.port)
                self._accepting = self._start(self._accept_loop, self._listener)
            self.mode = FORWARD

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._listener.close()
            for sock in self._open:
                _reset(sock)
            self._open.clear()

    # ------------------------------------------------------------ plumbing
    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.settimeout(0.1)
        return listener

    @staticmethod
    def _start(target, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        return thread

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by cut("refuse") or close()
                return
            client.settimeout(None)
            self.connections += 1
            self._start(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        if self.mode == FORWARD:
            try:
                upstream = socket.create_connection(self.target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                return
        with self._lock:
            self._open.update(s for s in (client, upstream) if s is not None)
        if upstream is None:  # blackhole: hold the connection, swallow what comes
            self._pump(client, None)
            return
        self._start(self._pump, upstream, client)
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket | None) -> None:
        try:
            while data := source.recv(65536):
                if sink is not None and self.mode == FORWARD:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
            _reset(source)
            if sink is not None:
                _reset(sink)


def _reset(sock: socket.socket) -> None:
    """Close at once with a RST, so the other side does not wait for anything."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
