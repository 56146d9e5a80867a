"""A private ``redis-server`` (Debian's package) on a free loopback port, for the peers."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from provisioning.local_cluster import free_port


def _command(port: int, *words: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(" ".join(words).encode() + b"\r\n")
        return sock.recv(256)


class RedisServer:
    def __init__(self, log_dir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server not found: apt-get install -y redis-server (see bench/README.md)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(log_dir), "--logfile", str(log_dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if _command(self.port, "PING").startswith(b"+PONG"):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def flush(self) -> None:
        _command(self.port, "FLUSHALL")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
