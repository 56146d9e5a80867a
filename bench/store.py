"""Benchmarks 4 and 6: what the node's in-memory store costs, in latency and in memory.

    .venv/bin/python -m bench.store [--tasks 100000] [--runs 3] [--requests 1000]

On a two-node cluster with no workers (MAX_NUM_OF_WORKERS=0; this script claims and completes
through the internal API, as a worker would, so no CPU goes to hashing):
- node-a: RSS before, then with ``--tasks`` queued 1 KiB tasks, then after completing them all;
- node-b: the same with empty bodies, so its RSS growth after completion is the cost of the
  results kept (Task object, 128-hex result, index entries);
- then, with both nodes keeping ``--tasks`` results each: ``POST /pullCompleted?top=100`` (which
  merges the peer's newest) and ``GET /status/<id>`` for ids kept on the same node and on the
  peer, ``--requests`` sequential calls of each per run; p50 and p99 per run.
The queues are filled with wrk (or the Python generator) up to MAX_QUEUED = ``--tasks``.
"""

from __future__ import annotations

import argparse
import base64
import random
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.common import (children, fmt_spread, loadavg, machine, percentile, print_table, rss_kib, spread,
                          wait_until, write_json)
from bench.loadgen import WRK_SCRIPT, have_wrk, run_python
from provisioning.local_cluster import LocalCluster
from workerapp.compute import compute

TOKEN = "bench-token"


def fill(url: str, body: int, count: int, session: requests.Session, tool: str) -> float:
    """Queue tasks until the node answers 503 queue_full (queued == MAX_QUEUED == count)."""
    start = time.perf_counter()
    target = f"{url}/enqueue?iterations=1&reuse=0"  # identical bodies: each must be a task of its own
    if tool == "wrk":
        script = Path(tempfile.mkstemp(suffix=".lua")[1])
        script.write_text(WRK_SCRIPT % {"body": body})
        proc = subprocess.Popen(["wrk", "-t", "1", "-c", "16", "-d", "3600s", "-s", str(script), target],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: session.get(url + "/stats", timeout=5).json()["queued"] >= count, 1800,
                       interval=0.2, what="queue filled")
        finally:
            proc.kill()
            proc.wait()
            script.unlink(missing_ok=True)
    else:
        run_python(target, connections=16, duration=1800, body=body, count=count)
    return time.perf_counter() - start


def drain(url: str, session: requests.Session) -> int:
    """Claim and complete everything queued, 1,000 tasks a call, as a worker named 'bench'."""
    headers = {"X-Cluster-Token": TOKEN}
    done = 0
    while True:
        tasks = session.post(url + "/claim", json={"worker_id": "bench", "max_tasks": 1000},
                             headers=headers, timeout=30).json()["tasks"]
        if not tasks:
            return done
        results = [{"id": t["id"], "result": compute(base64.b64decode(t["data"]), t["iterations"])} for t in tasks]
        done += session.post(url + "/complete", json={"worker_id": "bench", "results": results},
                             headers=headers, timeout=30).json()["accepted"]


def worker_pid(cluster: LocalCluster, index: int) -> int:
    return children(cluster.nodes[index].process.pid)[0]


def latencies(session: requests.Session, method: str, urls: list[str]) -> dict:
    took = []
    for url in urls:
        start = time.perf_counter()
        response = session.request(method, url, timeout=10)
        took.append(time.perf_counter() - start)
        if response.status_code != 200 or response.headers.get("X-Peer-Unavailable"):
            raise RuntimeError(f"{method} {url}: {response.status_code} {response.headers}")
    return {"p50_ms": percentile(took, 50) * 1000, "p99_ms": percentile(took, 99) * 1000, "count": len(took)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks queued, then results kept, per node")
    parser.add_argument("--runs", type=int, default=3, help="latency runs on the filled cluster")
    parser.add_argument("--requests", type=int, default=1000, help="calls of each kind per run")
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--json", help="write the JSON here (default bench/results/store-<time>.json)")
    args = parser.parse_args(argv)
    tool = "wrk" if args.tool == "wrk" or (args.tool == "auto" and have_wrk()) else "python"
    info = machine()
    env = {"MAX_NUM_OF_WORKERS": "0", "MAX_QUEUED": str(args.tasks), "RESULTS_RETENTION": str(args.tasks),
           "CLUSTER_TOKEN": TOKEN}
    out: dict = {"benchmark": "store", "machine": info, "settings": vars(args), "tool": tool}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp, \
            LocalCluster(env=env, token=TOKEN, log_dir=Path(tmp)) as cluster:
        session = requests.Session()
        a, b = cluster.urls
        for url in (a, b):  # warm the request path before the baseline
            for _ in range(20):
                session.get(url + "/stats", timeout=5)
        memory = {"rss_base_kib": [rss_kib(worker_pid(cluster, i)) for i in (0, 1)]}
        filled = {}

        def fill_node(index: int, url: str, body: int) -> None:
            filled[index] = fill(url, body, args.tasks, requests.Session(), tool)

        threads = [threading.Thread(target=fill_node, args=(0, a, 1024)),
                   threading.Thread(target=fill_node, args=(1, b, 0))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        memory["fill_seconds"] = [filled[0], filled[1]]
        memory["rss_queued_kib"] = [rss_kib(worker_pid(cluster, i)) for i in (0, 1)]
        memory["drained"] = [drain(a, session), drain(b, session)]
        memory["rss_results_kib"] = [rss_kib(worker_pid(cluster, i)) for i in (0, 1)]
        n = args.tasks
        memory["per_queued_1kib_task_bytes"] = (memory["rss_queued_kib"][0] - memory["rss_base_kib"][0]) * 1024 / n
        memory["per_queued_empty_task_bytes"] = (memory["rss_queued_kib"][1] - memory["rss_base_kib"][1]) * 1024 / n
        memory["per_result_kept_bytes"] = (memory["rss_results_kib"][1] - memory["rss_base_kib"][1]) * 1024 / n
        out["memory"] = memory
        kept = [s["results_kept"] for s in (session.get(u + "/stats", timeout=5).json() for u in (a, b))]
        out["results_kept"] = kept
        ids = {u: [r["id"] for r in session.post(f"{u}/pullCompleted?top={n}",
                                                 headers={"X-Peer-Request": "1"}, timeout=60).json()]
               for u in (a, b)}
        rng = random.Random(5)
        runs = []
        for index in range(args.runs):
            run = {"loadavg": loadavg()}
            run["pullCompleted_top100"] = latencies(session, "POST", [f"{a}/pullCompleted?top=100"] * args.requests)
            run["status_local"] = latencies(session, "GET", [f"{a}/status/{rng.choice(ids[a])}"
                                                             for _ in range(args.requests)])
            run["status_peer"] = latencies(session, "GET", [f"{a}/status/{rng.choice(ids[b])}"
                                                            for _ in range(args.requests)])
            runs.append(run)
            print(f"run {index + 1}: " + ", ".join(f"{k} p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms"
                                                   for k, v in run.items() if k != "loadavg")
                  + f" (load {run['loadavg']})", flush=True)
        out["runs"] = runs
    kinds = ("pullCompleted_top100", "status_local", "status_peer")
    summary = {k: {"p50_ms": spread(r[k]["p50_ms"] for r in runs), "p99_ms": spread(r[k]["p99_ms"] for r in runs)}
               for k in kinds}
    out["summary"] = summary
    print_table(f"Latency with {kept} results kept (node-a, node-b), {args.requests} sequential calls per run, "
                f"{args.runs} runs: median [min-max]",
                ["call", "p50 ms", "p99 ms"],
                [[k, fmt_spread(summary[k]["p50_ms"]), fmt_spread(summary[k]["p99_ms"])] for k in kinds])
    print_table(f"Node RSS (gunicorn worker process), {n} tasks", ["figure", "value"], [
        ["RSS at start, MiB", f"{memory['rss_base_kib'][0] / 1024:.1f}"],
        [f"RSS with {n} queued 1 KiB tasks, MiB", f"{memory['rss_queued_kib'][0] / 1024:.1f}"],
        ["per queued 1 KiB task, bytes", f"{memory['per_queued_1kib_task_bytes']:.0f}"],
        ["per queued empty task, bytes", f"{memory['per_queued_empty_task_bytes']:.0f}"],
        [f"RSS with {n} results kept (empty bodies), MiB", f"{memory['rss_results_kib'][1] / 1024:.1f}"],
        ["per completed result kept, bytes", f"{memory['per_result_kept_bytes']:.0f}"],
    ])
    print("target: pullCompleted?top=100 p50 <= 5 ms")
    out["loadavg_at_end"] = loadavg()
    write_json("store", out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
