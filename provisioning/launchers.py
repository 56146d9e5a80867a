"""The launcher seam: how a node gets worker processes or machines.

A launcher asks a resource manager for workers and returns as soon as the request is accepted;
it never waits for a worker to boot. The scaler counts what it launched as *pending* until the
worker's first claim. ``make_launcher(kind, ...)`` picks an implementation by name.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tmcommon.cpus import available_cpus
from tmcommon.settings import SETTINGS

log = logging.getLogger(__name__)


class Launched(list):
    """The worker ids a launch got, and a ``note`` for the scaler's decision history
    (for example: spot capacity was refused and the workers run on-demand)."""

    def __init__(self, ids: Iterable[str] = (), note: str = "") -> None:
        super().__init__(ids)
        self.note = note


@dataclass(frozen=True)
class Limit:
    """The most workers a launcher runs at once (``workers``), and ``why`` in words."""

    workers: int
    why: str


class Launcher(Protocol):
    """What the scaler needs from a source of workers."""

    kind: str

    def launch(self, count: int, node_urls: list[str]) -> list[str]:
        """Start ``count`` workers that pull from ``node_urls`` (own node first); return their ids
        (a ``Launched`` when there is something to note)."""

    def running(self) -> set[str] | None:
        """Ids of workers that still exist, or None if that cannot be known right now."""

    def terminate(self, worker_ids: Iterable[str]) -> None:
        """Stop these workers if they still run. Never waits for them to be gone."""

    def stop_all(self) -> None:
        """Stop every worker this launcher started: when the node stops, unless the launcher
        ``adopts_workers`` (the next start finds them), and on an explicit stop."""

    def room(self) -> int | None:
        """How many more workers it can start now; None: no limit it knows of. The scaler
        borrows no slot it could not launch on."""

    def limit(self) -> Limit | None:
        """The most workers it runs at once, and why; None: no limit it knows of."""


def worker_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the node's secrets (PEER_TOKEN, OPERATOR_TOKEN, ...): a worker gets
    only the cluster token, which the launcher sets."""
    secret = {s.env for s in SETTINGS.values() if s.secret}
    return {name: value for name, value in environ.items() if name not in secret}


class LocalProcessLauncher:
    """Workers as local processes: ``sys.executable -m workerapp``.

    The token reaches the worker through its environment, never its command line (which
    ``ps`` shows); the node's other secrets do not reach it at all. Exited processes are reaped in ``running()``. Thread-safe: the scaler and the
    node's shutdown hook may call it at the same time. At most ``max_running`` workers run at
    once (``max_running``, TM_LOCAL_MAX_WORKERS; 0 or None: the CPUs of this machine): more would
    only share the same cores.
    """

    kind = "local"

    def __init__(
        self,
        *,
        token: str,
        idle_seconds: float,
        node_name: str = "node",
        extra_env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        max_running: int | None = None,
        max_lifetime: float = 0.0,
    ) -> None:
        self._limit = local_limit(max_running if max_running is not None else _local_cap(os.environ))
        self._max_running = self._limit.workers
        self._capped = False  # the cap was met at the last launch (logged once per time)
        self._token = token
        self._idle_seconds = idle_seconds
        self._max_lifetime = max_lifetime  # the worker's own limit (WORKER_MAX_LIFETIME), 0 = none
        self._node_prefix = f"local-{node_name}-"  # the ids of every worker this node ever started
        self._prefix = f"{self._node_prefix}{os.getpid()}"
        self._extra_env = dict(extra_env or {})
        self._python = python
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._terminating: set[str] = set()
        self._numbers = itertools.count(1)
        #: Workers an earlier app process of this node left running, found once (every process
        #: of the group is read) and then followed by pid (a look at each is cheap; the scan was
        #: ~1 ms per scale tick with 70 processes on the machine, and grew with them).
        self._earlier = earlier_workers(self._node_prefix)

    def launch(self, count: int, node_urls: list[str]) -> list[str]:
        env = {**worker_environ(os.environ), **self._extra_env, "CLUSTER_TOKEN": self._token}
        ids = []
        with self._lock:
            room = self._room()
            if count > room and not self._capped:
                log.info("local workers capped at %d (%s): %d of %d started", self._max_running,
                         self._limit.why, max(0, room), count)
            self._capped = count > room
            for _ in range(min(count, room)):
                worker_id = f"{self._prefix}-{next(self._numbers)}"
                cmd = [self._python, "-m", "workerapp", "--worker-id", worker_id,
                       "--idle-seconds", str(self._idle_seconds), "--max-lifetime", str(self._max_lifetime),
                       *node_urls]
                self._procs[worker_id] = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
                ids.append(worker_id)
        return ids

    def room(self) -> int:
        """Workers it may still start under its cap."""
        with self._lock:
            return max(0, self._room())

    def _room(self) -> int:
        """The cap less the workers running: its own, or, if more, those of this node's process
        group that an earlier app process of the node started (gunicorn restarts a killed app
        process, whose workers run on and claim from the new one). Lock held."""
        own = sum(1 for proc in self._procs.values() if proc.poll() is None)
        if self._earlier:
            self._earlier = [pid for pid in self._earlier if _is_worker(pid, os.getpgid(0), self._node_prefix)]
        return self._max_running - max(own, len(self._earlier))

    def limit(self) -> Limit:
        return self._limit

    def running(self) -> set[str]:
        with self._lock:
            for worker_id, proc in list(self._procs.items()):
                if proc.poll() is None:
                    continue
                del self._procs[worker_id]
                asked_to_stop = worker_id in self._terminating
                self._terminating.discard(worker_id)
                if proc.returncode != 0 and not asked_to_stop:
                    log.warning("worker %s exited with code %s", worker_id, proc.returncode)
            return set(self._procs)

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {worker_id: proc.pid for worker_id, proc in self._procs.items()}

    def terminate(self, worker_ids: Iterable[str]) -> None:
        with self._lock:
            for worker_id in worker_ids:
                proc = self._procs.get(worker_id)
                if proc is not None and proc.poll() is None:
                    self._terminating.add(worker_id)
                    proc.send_signal(signal.SIGTERM)

    def stop_all(self, grace: float = 4.0) -> None:
        self.terminate(list(self.pids()))
        with self._lock:
            procs, self._procs = list(self._procs.values()), {}
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def group_processes(pgid: int) -> dict[int, list[bytes]]:
    """The live processes (zombies left out) of process group ``pgid``, each with its command
    line's arguments: Linux's /proc; empty elsewhere."""
    found: dict[int, list[bytes]] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if name.isdigit() and (args := _group_member(int(name), pgid)) is not None:
            found[int(name)] = args
    return found


def _group_member(pid: int, pgid: int) -> list[bytes] | None:
    """The command line's arguments of process ``pid`` if it is alive (not a zombie) and in
    process group ``pgid``; else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        if fields[0] == b"Z" or int(fields[2]) != pgid:
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().split(b"\0")
    except (OSError, IndexError, ValueError):
        return None  # it exited while we looked


def _is_worker_of(args: list[bytes], prefix: str) -> bool:
    return b"workerapp" in args and any(arg.startswith(prefix.encode()) for arg in args)


def _is_worker(pid: int, pgid: int, prefix: str) -> bool:
    """Whether ``pid`` is still a live worker of ``prefix`` in group ``pgid`` (not a reused pid)."""
    args = _group_member(pid, pgid)
    return args is not None and _is_worker_of(args, prefix)


def earlier_workers(prefix: str) -> list[int]:
    """Pids of live worker processes in this process's group whose ``--worker-id`` starts with ``prefix``."""
    return [pid for pid, args in group_processes(os.getpgid(0)).items() if _is_worker_of(args, prefix)]


def _local_cap(environ: Mapping[str, str]) -> int:
    """TM_LOCAL_MAX_WORKERS from ``environ``, checked by the settings schema (0: the CPUs)."""
    setting = SETTINGS["local_max_workers"]
    raw = environ.get(setting.env, "").strip()
    return setting.parse(raw) if raw else setting.default


def local_limit(max_running: int) -> Limit:
    """Local workers that may run at once: ``max_running`` (TM_LOCAL_MAX_WORKERS), 0 = the CPUs."""
    if max_running:
        return Limit(max_running, f"TM_LOCAL_MAX_WORKERS={max_running}")
    cpus = available_cpus()
    return Limit(cpus, f"local mode runs at most one worker per CPU: {cpus} here (TM_LOCAL_MAX_WORKERS)")


def _ec2_launcher(**kwargs: Any) -> Launcher:
    from provisioning.ec2_launcher import Ec2Launcher  # boto3 is only imported for AWS mode

    return Ec2Launcher.from_environment(**kwargs)


LAUNCHERS: dict[str, Callable[..., Launcher]] = {
    "local": LocalProcessLauncher,
    "ec2": _ec2_launcher,
}


def make_launcher(kind: str, **kwargs: Any) -> Launcher:
    """Build the launcher called ``kind`` (``local`` or ``ec2``)."""
    try:
        factory = LAUNCHERS[kind]
    except KeyError:
        raise ValueError(f"unknown launcher {kind!r}: expected one of {', '.join(LAUNCHERS)}") from None
    return factory(**kwargs)
