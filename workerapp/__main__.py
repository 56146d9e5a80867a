"""``python -m workerapp [options] OWN_NODE_URL [PEER_NODE_URL]``: run one worker until idle.

The cluster token comes from the CLUSTER_TOKEN environment variable (never the command line,
which other users can see in ``ps``).

Exit codes (``workerapp/exitcodes.py``): 0 idle for WORKER_IDLE_SECONDS or stopped by SIGTERM /
Ctrl-C; 2 bad command line or settings, or CLUSTER_TOKEN not set; 3 a node refused a call with a
4xx (wrong token, a request it calls bad), logged once with the node's reason, after a goodbye
(``worker_down``) to every node that still listens.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading

from tmcommon.logs import configure_logging
from tmcommon.settings import WORKER, ConfigError, add_options, read_settings
from workerapp import exitcodes
from workerapp.client import NodeClient
from workerapp.engine import EngineUnavailable, select_engine
from workerapp.faults import ENV as FAULT_ENV, test_fault
from workerapp.lanes import ProcessCompute, lane_compute, measure_lanes, parse_lanes
from workerapp.spot import METADATA_URL, SpotWatcher
from workerapp.worker import Worker

log = logging.getLogger("workerapp")


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> argparse.Namespace:
    """The command line over the worker settings of the environment (``ConfigError`` if one is bad)."""
    settings = read_settings(WORKER, os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(prog="python -m workerapp", description=__doc__.split("\n\n")[0])
    parser.add_argument("nodes", nargs="+", metavar="NODE_URL", help="own node first, then the peer")
    add_options(parser, WORKER, settings)
    parser.add_argument("--max-batch", type=int, default=256, help="at most this many tasks per claim")
    parser.add_argument("--lanes", type=parse_lanes, default=1,
                        help="chains computed at once: a number, or 'auto' for one per CPU (default 1; "
                             "EC2 workers start with auto)")
    parser.add_argument("--spot", action="store_true",
                        help="on a spot instance: watch the instance metadata for the interruption notice, "
                             "then hand every task back with its checkpoint and exit")
    parser.add_argument("--metadata-url", default=METADATA_URL, help=argparse.SUPPRESS)  # tests: a stub IMDSv2
    parser.add_argument("--spot-poll-seconds", type=float, default=5.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.nodes) > 2:
        parser.error("give at most two node URLs: own node, then the peer")
    if args.max_batch < 1:
        parser.error("--max-batch must be >= 1")
    args.worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    args.cluster_token = settings["cluster_token"]  # from the environment only, never a flag
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ConfigError as exc:  # a bad environment value: one line, as the node says it
        print(f"python -m workerapp: error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    configure_logging()
    if not args.cluster_token:
        log.error("CLUSTER_TOKEN is not set: the nodes would refuse every call")
        return exitcodes.USAGE
    clients = [NodeClient(url, args.cluster_token, args.worker_id) for url in args.nodes]
    try:
        engine = select_engine()
    except (ValueError, EngineUnavailable) as exc:
        log.error("%s", exc)
        return exitcodes.USAGE
    try:
        fault = test_fault()
    except ValueError as exc:
        log.error("%s", exc)
        return exitcodes.USAGE
    lanes_fn = compute_fn = lane_compute(engine, args.lanes)
    compute_many, hash_rate = engine.compute_many, None
    if fault is not None:  # tests only (workerapp/faults.py); the rate is measured on the sound engine
        log.warning("%s=%s: this worker computes wrong results on purpose", FAULT_ENV, os.environ[FAULT_ENV])
        hash_rate = measure_lanes(compute_fn, args.lanes)[0]
        compute_fn, compute_many = fault.wrap(compute_fn), fault.wrap_many(compute_many)
    worker = Worker(clients, idle_seconds=args.worker_idle_seconds, claim_seconds=args.claim_seconds,
                    max_batch=args.max_batch, compute_fn=compute_fn, lanes=args.lanes, hash_rate=hash_rate,
                    engine=engine.name, kernel=engine.kernel, compute_many=compute_many, width=engine.width, spot=args.spot)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.request_stop())
    lifetime = _lifetime_limit(worker, args.worker_max_lifetime)
    watcher = None
    if args.spot:
        watcher = SpotWatcher(worker.evacuate, base_url=args.metadata_url, interval=args.spot_poll_seconds)
        watcher.start()
    try:
        return worker.run()
    finally:
        if lifetime is not None:
            lifetime.cancel()
        if watcher is not None:
            watcher.stop()
        if isinstance(lanes_fn, ProcessCompute):
            lanes_fn.close()


def _lifetime_limit(worker: Worker, seconds: float) -> threading.Timer | None:
    """WORKER_MAX_LIFETIME by the worker's own clock: stop as on SIGTERM, even if no node says so."""
    if not seconds:
        return None

    def reached() -> None:
        log.warning("WORKER_MAX_LIFETIME=%gs reached: stopping (tasks in hand go back to their nodes)", seconds)
        worker.request_stop()

    timer = threading.Timer(seconds, reached)
    timer.daemon = True
    timer.start()
    return timer


if __name__ == "__main__":
    sys.exit(main())
