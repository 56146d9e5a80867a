"""Two gunicorn nodes on loopback, each the other's peer: local mode and the end-to-end tests.

Each node runs in its own session (process group), so its local worker processes share that
group and ``stop()`` can take the whole group down, leaving no orphan even if a node hangs.
With ``proxy=True`` each node's gunicorn listens on a loopback port of its own behind an nginx
(``provisioning.proxy``) that holds the node's public port, as in AWS mode.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from provisioning.launchers import group_processes
from provisioning.proxy import LocalProxy

ROOT = Path(__file__).resolve().parent.parent
NODE_NAMES = ("node-a", "node-b")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether a server could not listen on 127.0.0.1:``port`` now (as gunicorn binds: SO_REUSEADDR,
    so a port in TIME_WAIT counts as free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError:
            return True
    return False


def group_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that have not exited (zombies left out); where
    there is no /proc, whether the group can be signalled at all."""
    if os.path.isdir("/proc"):
        return list(group_processes(pgid))
    try:
        os.killpg(pgid, 0)
        return [pgid]
    except (ProcessLookupError, PermissionError):
        return []


def wait_group_gone(pgid: int, timeout: float = 2.0) -> bool:
    """Wait until no process of group ``pgid`` runs (SIGKILLed workers take a moment)."""
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass
class LocalNode:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen | None = None
    backend_port: int | None = None  # gunicorn's own port when nginx holds ``port``
    proxy: LocalProxy | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_url(self) -> str:
        """gunicorn itself, past the proxy if there is one."""
        return f"http://127.0.0.1:{self.backend_port or self.port}"


class LocalCluster:
    """Start, watch and stop a two-node cluster on 127.0.0.1.

    Args:
        ports: the two ports (free ones are picked when None).
        env: extra environment for both nodes (SPEC.md settings such as MAX_NUM_OF_WORKERS).
        token: the cluster token; CLUSTER_TOKEN from ``env`` or the environment, else generated.
        log_dir: where each node writes its log (``node-a.log``, ``node-b.log``).
        data_dir: if set, each node keeps its journal in ``data_dir/<node name>`` (its DATA_DIR),
            so that a node started again on it finds its tasks and results.
        proxy: put each node behind nginx (its files in ``log_dir/node-a-nginx/``).
    """

    def __init__(
        self,
        ports: tuple[int, int] | None = None,
        env: Mapping[str, str] | None = None,
        token: str | None = None,
        log_dir: Path | None = None,
        data_dir: Path | None = None,
        proxy: bool = False,
    ) -> None:
        ports = ports or (free_port(), free_port())
        self.env = dict(env or {})
        self.token = token or self.env.get("CLUSTER_TOKEN") or os.environ.get("CLUSTER_TOKEN") or secrets.token_urlsafe(24)
        self.log_dir = Path(log_dir) if log_dir else Path(os.environ.get("TMPDIR", "/tmp")) / f"taskmanager-{os.getpid()}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir) if data_dir else None
        self.nodes = [LocalNode(name, port, self.log_dir / f"{name}.log", backend_port=free_port() if proxy else None)
                      for name, port in zip(NODE_NAMES, ports)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def busy_ports(self) -> list[int]:
        """The nodes' ports something else listens on already (check before starting)."""
        return [node.port for node in self.nodes if port_in_use(node.port)]

    def node_env(self, index: int) -> dict[str, str]:
        node, peer = self.nodes[index], self.nodes[1 - index]
        return {
            **os.environ,
            "LAUNCHER": "local",
            **self.env,
            "NODE_NAME": node.name,
            "NODE_URL": node.url,
            "PEER_URL": peer.url,
            "CLUSTER_TOKEN": self.token,
            "BIND": f"127.0.0.1:{node.backend_port or node.port}",
            "PYTHONUNBUFFERED": "1",
            **({"DATA_DIR": str(self.data_dir / node.name)} if self.data_dir else {}),
        }

    def start_node(self, index: int) -> LocalNode:
        node = self.nodes[index]
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"]
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(
                cmd, cwd=ROOT, env=self.node_env(index), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        if node.backend_port and not (node.proxy and node.proxy.running):
            node.proxy = LocalProxy(node.port, node.backend_port, self.node_env(index), self.log_dir / f"{node.name}-nginx")
            node.proxy.start()
        return node

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for index in range(len(self.nodes)):
            self.start_node(index)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0, nodes: list[LocalNode] | None = None) -> None:
        """Poll ``/health`` of each node until it answers or ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        for node in nodes or self.nodes:
            while True:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"{node.name} exited with code {node.process.returncode}:\n{self.tail(node)}")
                if node.proxy is not None and not node.proxy.running:
                    raise RuntimeError(f"{node.name}'s nginx exited:\n{node.proxy.error_log()}")
                try:
                    if requests.get(node.url + "/health", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} not healthy within {timeout:g}s:\n{self.tail(node)}")
                time.sleep(0.1)

    def tail(self, node: LocalNode, lines: int = 40) -> str:
        try:
            return "\n".join(node.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop_node(self, index: int, sig: int = signal.SIGTERM, grace: float = 8.0) -> None:
        """Signal a node's gunicorn master; after ``grace`` seconds kill its whole process group."""
        node = self.nodes[index]
        proc = node.process
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in the node's group: workers too
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        wait_group_gone(proc.pid)
        if node.proxy is not None:
            node.proxy.stop(grace=max(grace, 1.0))

    def stop(self, grace: float = 8.0) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                os.kill(node.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for index in range(len(self.nodes)):
            self.stop_node(index, grace=max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
