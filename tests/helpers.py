"""Test helpers: a recording launcher, and waiting on conditions with deadlines."""

from __future__ import annotations

import fcntl
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class FakeLauncher:
    """A launcher that records calls; workers 'run' until terminated or ``vanish``ed."""

    kind = "fake"

    def __init__(self) -> None:
        self.launched: list[tuple[str, list[str]]] = []
        self.alive: set[str] = set()
        self.terminated: list[str] = []
        self.stopped = False
        self._n = 0

    def launch(self, count: int, node_urls: list[str]) -> list[str]:
        ids = []
        for _ in range(count):
            self._n += 1
            worker_id = f"fake-{self._n}"
            self.launched.append((worker_id, list(node_urls)))
            self.alive.add(worker_id)
            ids.append(worker_id)
        return ids

    def running(self) -> set[str]:
        return set(self.alive)

    def room(self) -> None:
        return None

    def limit(self) -> None:
        return None

    def terminate(self, worker_ids: Iterable[str]) -> None:
        for worker_id in worker_ids:
            self.terminated.append(worker_id)
            self.alive.discard(worker_id)

    def vanish(self, worker_id: str) -> None:
        self.alive.discard(worker_id)

    def stop_all(self) -> None:
        self.stopped = True
        self.alive.clear()


class Clock:
    """A settable clock, shared by the objects under test (TaskStore, WorkerPool, Scaler, launchers)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def in_threads(target: Callable[[], Any], count: int) -> None:
    """Run ``target`` in ``count`` threads at once and wait for them all."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``condition`` until it returns a truthy value; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # a condition may poll a server that is still starting
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what or condition}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


def shared_dir(tmp_path_factory) -> Path:
    """This run's directory, the same for each of its xdist worker processes (not shared with
    other runs, as the parent of a run's own directory would be without xdist)."""
    basetemp = tmp_path_factory.getbasetemp()
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


def once_per_run(path: Path, make: Callable[[], T]) -> T:
    """``make()``, once per test run although each xdist worker process asks: the first to get
    here runs it under a lock and pickles its value to ``path``; the others wait and read that."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return pickle.loads(path.read_bytes())
        value = make()
        path.write_bytes(pickle.dumps(value))
        return value


#: Short intervals for a local cluster under test.
QUICK_ENV = {"SCALE_INTERVAL": "0.2", "SCALE_WAIT": "0.2", "WORKER_IDLE_SECONDS": "5", "MAX_NUM_OF_WORKERS": "2"}


@contextmanager
def running_cluster(env: dict[str, str], log_dir, timeout: float = 60.0, cluster=None):
    """A started two-node LocalCluster with the settings of ``env`` only (not the caller's shell's);
    or ``cluster``, a LocalCluster the caller made, started the same way."""
    import pytest

    from nodeapp.config import SETTINGS
    from provisioning.local_cluster import LocalCluster

    cluster = cluster or LocalCluster(env=env, log_dir=log_dir)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for setting in SETTINGS.values():
                mp.delenv(setting.env, raising=False)
            cluster.start(timeout=timeout)
        yield cluster
    finally:
        cluster.stop()


@contextmanager
def running_node(env: dict[str, str], log_dir, peer_port: int | None = None, timeout: float = 60.0,
                 proxy: bool = False):
    """One started node of a LocalCluster (node-a), behind nginx with ``proxy``; its PEER_URL
    points at ``peer_port`` (a free, unused port when None), where nothing of the cluster runs."""
    import pytest

    from nodeapp.config import SETTINGS
    from provisioning.local_cluster import LocalCluster, free_port

    cluster = LocalCluster(ports=(free_port(), peer_port or free_port()), env=env, log_dir=log_dir, proxy=proxy)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for setting in SETTINGS.values():
                mp.delenv(setting.env, raising=False)
            cluster.start_node(0)
        cluster.wait_healthy(timeout, nodes=cluster.nodes[:1])
        yield cluster
    finally:
        cluster.stop_node(0)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (tests read their own records)."""

    def log_message(self, *args) -> None:
        pass


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 with ``handler``, serving until ``close()``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
