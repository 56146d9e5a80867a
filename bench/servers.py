"""Start and stop the HTTP servers a benchmark needs: one lone node, or the bare Flask app."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench.common import BENCH_DIR, ROOT, children
from provisioning.local_cluster import free_port

TOKEN = "bench-token"


class Server:
    """One gunicorn master (and its single worker process) on a loopback port."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, log_dir: Path) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = 30.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not healthy in {timeout}s")

    def worker_pid(self) -> int:
        """The gunicorn worker process (where the app and, for a node, its queue live)."""
        pids = children(self.process.pid)
        if len(pids) != 1:
            raise RuntimeError(f"{self.name}: expected one gunicorn worker, found {pids}")
        return pids[0]

    def stop(self, grace: float = 8.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()


def _env(port: int, extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "BIND": f"127.0.0.1:{port}", "PYTHONUNBUFFERED": "1", **extra}


def start_node(log_dir: Path, name: str = "bench-node", **settings: str) -> Server:
    """A lone node (no peer); ``settings`` are SPEC.md variables, e.g. MAX_NUM_OF_WORKERS="0"."""
    port = free_port()
    env = _env(port, {"LAUNCHER": "local", "NODE_NAME": name, "PEER_URL": "", "CLUSTER_TOKEN": TOKEN,
                      "NODE_URL": f"http://127.0.0.1:{port}", **settings})
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"]
    return Server(name, cmd, env, port, log_dir).wait_healthy()


def start_bare(log_dir: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(BENCH_DIR / "bare_gunicorn_conf.py"), "bench.bare_app:app"]
    return Server("bare-flask", cmd, _env(port, {}), port, log_dir).wait_healthy()
