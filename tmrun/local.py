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
from nodeapp.store.journal import DataDirInUse, check_free, erase
from provisioning.local_cluster import LocalCluster
from tmclient.client import Client, NodesUnreachable
from tmclient.render import console, stats_view
from tmrun.supervise import Supervisor


def settings_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment for the nodes: os.environ, then flags; validated before anything starts."""
    env = {}
    if args.max_workers is not None:
        env["MAX_NUM_OF_WORKERS"] = str(args.max_workers)
    NodeConfig.load({**os.environ, **env, "LAUNCHER": "local"})  # raises ConfigError naming the variable
    return env


def status_view(cluster: LocalCluster, supervisor: Supervisor | None = None) -> RenderableType:
    """The live status, drawn with rich as ``tm stats`` draws it, the supervisor's newest events,
    and where the dashboard is."""
    try:
        view = stats_view(Client(cluster.urls, timeout=1, retries=1).stats())
    except NodesUnreachable as exc:
        view = Text(str(exc), style="red")
    events = [Text(line, style="yellow", no_wrap=True, overflow="ellipsis") for line in (supervisor.events if supervisor else ())]
    return Group(view, *events, Text(f"dashboard: {cluster.urls[0]}/", style="dim"))


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
            if args.fresh:
                for node in cluster.nodes:
                    erase(data_dir / node.name)
            for node in cluster.nodes:
                check_free(data_dir / node.name)
        except DataDirInUse as exc:
            print(f"error: {exc} (another run_program.py --local? use --data-dir DIR)", file=sys.stderr)
            return 1
        print(f"journals in {data_dir} ({'emptied, ' if args.fresh else ''}a node that restarts and the next run "
              "find their tasks there; --fresh starts empty)", file=sys.stderr)
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
    live = None
    if not args.no_progress and sys.stderr.isatty():
        live = Live(Text("starting ..."), console=console(stderr=True), auto_refresh=False)

    def on_event(line: str) -> None:
        if live is not None:
            live.console.print(line, style="yellow", highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    supervisor = Supervisor(cluster, on_event)
    if live is not None:
        live.update(status_view(cluster, supervisor))
        live.start(refresh=True)
    try:
        while not stop.wait(1.0):
            supervisor.check()
            if live is not None:
                live.update(status_view(cluster, supervisor), refresh=True)
    finally:
        if live is not None:
            live.stop()
        print("\nstopping ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        cluster.stop(grace=8.0)
        print(f"stopped in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0

