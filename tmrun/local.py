"""Local mode of ``run_program.py``: two nodes on this machine, a live status line, Ctrl-C stops all."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from nodeapp.config import NodeConfig
from provisioning.local_cluster import LocalCluster
from tmclient.client import Client, NodesUnreachable
from tmclient.render import console, stats_view


def settings_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment for the nodes: os.environ, then flags; validated before anything starts."""
    env = {}
    if args.max_workers is not None:
        env["MAX_NUM_OF_WORKERS"] = str(args.max_workers)
    NodeConfig.load({**os.environ, **env, "LAUNCHER": "local"})  # raises ConfigError naming the variable
    return env


def status_view(cluster: LocalCluster) -> RenderableType:
    """The live status, drawn with rich as ``tm stats`` draws it, and where the dashboard is."""
    try:
        view = stats_view(Client(cluster.urls, timeout=1, retries=1).stats())
    except NodesUnreachable as exc:
        view = Text(str(exc), style="red")
    return Group(view, Text(f"dashboard: {cluster.urls[0]}/", style="dim"))


def run_local(args: argparse.Namespace) -> int:
    """Start both nodes, show their status until Ctrl-C or a node exits, then stop everything."""
    env = settings_env(args)
    cluster = LocalCluster(ports=args.ports, env=env)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"starting two nodes (logs in {cluster.log_dir}) ...", file=sys.stderr, flush=True)
    try:
        cluster.start()
    except (RuntimeError, TimeoutError) as exc:
        cluster.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for url in cluster.urls:
        print(url, flush=True)
    print(f"export TM_NODES={','.join(cluster.urls)}", file=sys.stderr)
    print("Ctrl-C stops both nodes and every worker.", file=sys.stderr, flush=True)
    live = None
    if not args.no_progress and sys.stderr.isatty():
        live = Live(status_view(cluster), console=console(stderr=True), auto_refresh=False)
        live.start(refresh=True)
    try:
        while not stop.wait(1.0):
            for node in cluster.nodes:
                if node.process.poll() is not None:
                    print(f"\n{node.name} exited (code {node.process.returncode}); see {node.log_path}", file=sys.stderr)
                    stop.set()
            if live is not None:
                live.update(status_view(cluster), refresh=True)
    finally:
        if live is not None:
            live.stop()
        print("\nstopping ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        cluster.stop(grace=8.0)
        print(f"stopped in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0

