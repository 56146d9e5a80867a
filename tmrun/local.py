"""Local mode of ``run_program.py``: two nodes on this machine, kept up by a supervisor (a node
that exits is restarted), a live status view; only Ctrl-C (or SIGTERM) stops them."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from nodeapp.config import NodeConfig
from nodeapp.history import HISTORY_FILE
from nodeapp.store.journal import DataDirInUse, check_free, erase
from provisioning.local_cluster import LocalCluster
from tmclient.client import Client, NodesUnreachable
from tmclient.render import console, stats_view
from tmrun.lines import EventLines
from tmrun.supervise import Supervisor


def settings_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment for the nodes: os.environ, then flags; validated before anything starts."""
    env = {}
    if args.max_workers is not None:
        env["MAX_NUM_OF_WORKERS"] = str(args.max_workers)
    NodeConfig.load({**os.environ, **env, "LAUNCHER": "local"})  # raises ConfigError naming the variable
    return env


def status_view(stats: dict | None, cluster: LocalCluster, supervisor: Supervisor) -> RenderableType:
    """The live status, drawn with rich as ``tm stats`` draws it, the nodes' current pids, the
    supervisor's newest events, and where the dashboard is."""
    view = stats_view(stats) if stats is not None else Text("no node answered", style="red")
    events = [Text(line, style="yellow", no_wrap=True, overflow="ellipsis") for line in supervisor.events]
    return Group(view, Text(pids_line(cluster), style="dim"), *events,
                 Text(f"dashboard: {cluster.urls[0]}/", style="dim"))


def pids_line(cluster: LocalCluster) -> str:
    """Each node's gunicorn master pid now (a restarted node has a new one)."""
    pids = ", ".join(f"{node.name} {node.process.pid}" for node in cluster.nodes if node.process is not None)
    return f"pids: {pids} (gunicorn masters; which pid to kill for what: docs/operations.md)"


def cluster_stats(client: Client) -> dict | None:
    try:
        return client.stats()
    except NodesUnreachable:
        return None


def prepare_data_dir(args: argparse.Namespace, cluster: LocalCluster, data_dir: Path) -> str:
    """Check that no node uses the journals (emptying them first with ``--fresh``); returns the
    line that says where they are and what ``--fresh`` removed."""
    held = [erase(data_dir / node.name, also=(HISTORY_FILE,)) or {} for node in cluster.nodes] if args.fresh else []
    for node in cluster.nodes:
        check_free(data_dir / node.name)
    where = f"journals in {data_dir}/node-a and node-b"
    if args.fresh:
        total = {key: sum(h.get(key, 0) for h in held) for key in ("queued", "failed", "results")}
        return (f"{where}: --fresh removed {total['queued'] + total['failed']} tasks ({total['queued']} queued, "
                f"{total['failed']} failed or cancelled) and {total['results']} results")
    return f"{where}: a node that restarts, and the next run, find their tasks there (--fresh empties them)"


def run_local(args: argparse.Namespace) -> int:
    """Start both nodes, restart one that exits, show their status until Ctrl-C, then stop everything."""
    env = settings_env(args)
    data_dir = Path(args.data_dir).resolve() if args.data_dir else None
    cluster = LocalCluster(ports=args.ports, env=env, proxy=args.proxy, data_dir=data_dir)
    busy = cluster.busy_ports()
    if busy:
        taken = " and ".join(f"127.0.0.1:{port}" for port in busy)
        print(f"error: {taken} {'is' if len(busy) == 1 else 'are'} in use (another run_program.py --local?); "
              "choose free ports with --ports A,B", file=sys.stderr)
        return 1
    if data_dir is not None:
        try:
            print(prepare_data_dir(args, cluster, data_dir), file=sys.stderr)
        except DataDirInUse as exc:
            print(f"error: {exc} (another run_program.py --local? use --data-dir DIR)", file=sys.stderr)
            return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"starting two nodes (logs in {cluster.log_dir}) ...", file=sys.stderr, flush=True)
    try:
        cluster.start()
    except (RuntimeError, TimeoutError) as exc:  # NginxNotFound is a RuntimeError
        cluster.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for url in cluster.urls:
        print(url, flush=True)
    for node in cluster.nodes:
        print(f"{node.name}: pid {node.process.pid}, log {node.log_path}", file=sys.stderr)
    print(f"export TM_NODES={','.join(cluster.urls)}", file=sys.stderr)
    print("A node that exits is restarted; Ctrl-C stops both nodes and every worker.", file=sys.stderr, flush=True)
    client = Client(cluster.urls, timeout=1, retries=1)  # one client: its connections are kept alive
    live = None
    if not args.no_progress and sys.stderr.isatty() and sys.stdout.isatty():
        live = Live(Text("starting ..."), console=console(stderr=True), auto_refresh=False)

    def on_event(line: str) -> None:
        if live is not None:
            live.console.print(line, style="yellow", highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    lines = EventLines(on_event) if live is None and not args.no_progress else None
    supervisor = Supervisor(cluster, on_event)
    if live is not None:
        live.update(status_view(cluster_stats(client), cluster, supervisor))
        live.start(refresh=True)
    try:
        while not stop.wait(1.0):
            supervisor.check()
            if live is not None:
                live.update(status_view(cluster_stats(client), cluster, supervisor), refresh=True)
            elif lines is not None:
                lines.update(cluster_stats(client))
    finally:
        if live is not None:
            live.stop()
        print("\nstopping ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        client.close()
        cluster.stop(grace=8.0)  # returns once every process of both nodes has exited
        print(f"stopped in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return 0
