"""The enqueue's cost in process: the WSGI app called in a loop, one thread, no gunicorn, no socket.

    .venv/bin/python -m bench.inprocess [--rounds 9] [--requests 2000] [--profile node-journal]

For bare Flask (``bench/bare_app.py``), a node without DATA_DIR and a node with one (the default
JOURNAL_SYNC): microseconds per ``PUT /enqueue?iterations=1&reuse=0`` with a distinct 64-byte
body, min and median of the rounds. What gunicorn adds (threads, sockets, HTTP parsing) is in
``bench.enqueue``; this isolates the app's own work, and ``--profile`` shows it by function
(cProfile, sorted by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time

from bench import bare_app
from bench.common import machine, write_json
from nodeapp import create_app

KINDS = ("bare", "node", "node-journal")


def environ(body: bytes) -> dict:
    """A request as gunicorn hands it to the app (``gunicorn.socket`` marks gunicorn's reader)."""
    return {"REQUEST_METHOD": "PUT", "PATH_INFO": "/enqueue", "QUERY_STRING": "iterations=1&reuse=0",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/octet-stream", "HTTP_HOST": "127.0.0.1:8000", "wsgi.errors": sys.stderr,
            "REMOTE_ADDR": "127.0.0.1", "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "wsgi.version": (1, 0), "gunicorn.socket": object()}


def build(kind: str, data_dir: str):
    if kind == "bare":
        return bare_app.create_app()
    settings = {"max_workers": 0, "max_queued": 10**7, "max_queued_bytes": 10**10, "cluster_token": "bench"}
    if kind == "node-journal":
        settings["data_dir"] = data_dir
    return create_app(settings)


def one_round(app, first: int, count: int) -> float:
    """Microseconds per request over ``count`` requests; each answer must be a 201."""
    statuses = []
    started = time.perf_counter()
    for i in range(first, first + count):
        b"".join(app(environ(b"%064d" % i), lambda status, headers, exc_info=None: statuses.append(status)))
    elapsed = time.perf_counter() - started
    if any(not s.startswith("201") for s in statuses):
        raise SystemExit(f"a request was not answered 201: {set(statuses)}")
    return elapsed / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=2000, help="per round")
    parser.add_argument("--profile", choices=KINDS, help="also profile this one (cProfile, top 30 by own time)")
    parser.add_argument("--json", help="write the JSON here (default bench/results/inprocess-<time>.json)")
    args = parser.parse_args(argv)
    info, results = machine(), {}
    print(f"PUT /enqueue in process, {args.rounds} rounds of {args.requests} requests, us per request:")
    for kind in KINDS:
        with tempfile.TemporaryDirectory(prefix="bench-inprocess-") as data_dir:
            app = build(kind, data_dir)
            one_round(app, 0, args.requests)  # warm-up
            times = sorted(one_round(app, (r + 1) * 10**6, args.requests) for r in range(args.rounds))
            results[kind] = {"min_us": times[0], "median_us": statistics.median(times), "rounds_us": times}
            print(f"  {kind:13} min {times[0]:7.1f}   median {statistics.median(times):7.1f}", flush=True)
            if kind == args.profile:
                profile = cProfile.Profile()
                profile.enable()
                one_round(app, 10**9, args.requests)
                profile.disable()
                pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            if kind != "bare":
                app.extensions["nodeapp"].close()
    path = write_json("inprocess", {"benchmark": "inprocess", "machine": info, "settings": vars(args),
                                    "results": results}, args.json)
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
