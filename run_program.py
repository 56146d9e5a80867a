#!/usr/bin/env python3
"""Run the task manager.

    python3 run_program.py --local [--ports A,B]   two nodes on this machine, local worker processes
    python3 run_program.py [AWS options]           create the cluster on AWS (see README)
    python3 run_program.py --destroy               remove everything the AWS mode created

Settings come from the environment variables of the README (MAX_NUM_OF_WORKERS, ...); the flags
below override them.
"""

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

from nodeapp.config import ConfigError, NodeConfig
from provisioning.local_cluster import LocalCluster
from tmclient.client import Client, NodesUnreachable
from tmclient.render import console, stats_view


def parse_ports(text: str) -> tuple[int, int]:
    try:
        a, b = (int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ports wants two ports like 8001,8002, got {text!r}") from None
    if not (0 < a < 65536 and 0 < b < 65536) or a == b:
        raise argparse.ArgumentTypeError("--ports wants two different ports from 1 to 65535")
    return a, b


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run both nodes and their workers on this machine")
    mode.add_argument("--destroy", action="store_true", help="AWS: remove every resource of the cluster")
    parser.add_argument("--ports", type=parse_ports, default=(8001, 8002), help="local mode: node ports (default 8001,8002)")
    parser.add_argument("--max-workers", type=int, help="MAX_NUM_OF_WORKERS per node (default 5)")
    parser.add_argument("--no-progress", action="store_true", help="local mode: no live status line")
    try:
        from provisioning.aws_cli import add_aws_arguments
    except ImportError:  # AWS mode not installed in this checkout
        add_aws_arguments = None
    if add_aws_arguments:
        add_aws_arguments(parser)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.local:
            return run_local(args)
        from provisioning.aws_cli import run_aws  # imports boto3 only for AWS mode

        return run_aws(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: AWS mode is not available ({exc}); use --local", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
