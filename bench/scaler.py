"""Benchmark 5: how fast the scaler reacts to a backlog, and that it never over-launches.

    .venv/bin/python -m bench.scaler [--runs 3] [--backlogs 1,2,50] [--iterations 200000]

For each backlog size, on a fresh two-node cluster at its default settings (MAX_NUM_OF_WORKERS 5,
SCALE_INTERVAL 2 s, SCALE_WAIT 2 s unless given; WORKER_IDLE_SECONDS short so the run ends):
after a random part of a scaler cycle, all tasks go to node-a at once, then /stats of both
nodes is polled every 10 ms. Reported: time
from the first enqueue to the first worker launched (the scaler's own decision record) and to
its first claim (the first worker seen live), and how many workers were launched in total for
the backlog, which must never exceed the number of tasks.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import requests

from bench.common import fmt_spread, loadavg, machine, print_table, spread, write_json
from provisioning.local_cluster import LocalCluster


def one(backlog: int, args, log_dir: Path, phase: random.Random) -> dict:
    env = {"SCALE_INTERVAL": str(args.scale_interval), "SCALE_WAIT": str(args.scale_wait),
           "WORKER_IDLE_SECONDS": str(args.idle_seconds), "MAX_NUM_OF_WORKERS": str(args.max_workers)}
    session = requests.Session()
    with LocalCluster(env=env, log_dir=log_dir) as cluster:
        a = cluster.urls[0]
        # The scaler ticks every SCALE_INTERVAL from the node's start: let a backlog appear at a
        # random phase of that cycle (seeded), as it does on a node that has been up a while.
        time.sleep(args.scale_interval + phase.uniform(0, args.scale_interval))
        load = loadavg()
        start = time.time()
        for _ in range(backlog):
            response = session.put(f"{a}/enqueue?iterations={args.iterations}&reuse=0", data=b"x" * 64, timeout=10)
            response.raise_for_status()
        first_launch = first_claim = None
        max_workers = 0
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            stats = [session.get(url + "/stats", timeout=5).json() for url in cluster.urls]
            now = time.time()
            workers = [s["workers"] for s in stats]
            max_workers = max(max_workers, sum(w["live"] + w["pending"] for w in workers))
            if first_claim is None and sum(w["live"] for w in workers):
                first_claim = now
            if first_launch is None:  # the scaler's record is written after the whole run's launches
                launches = [d["at"] for s in stats for d in s["scaler"]["decisions"] if d.get("launched")]
                if sum(w["live"] + w["pending"] for w in workers):
                    launches.append(now)
                first_launch = min(launches) if launches else None
            done = sum(s["completed"] for s in stats) >= backlog
            if done and first_claim and max_workers and sum(w["live"] + w["pending"] for w in workers) == 0:
                break  # drained, and every worker has gone idle and down
            time.sleep(0.01)
        else:
            raise TimeoutError(f"backlog {backlog}: not drained and idle within {args.timeout}s")
        launched = sum(w["launched_total"] for w in workers)
        return {"backlog": backlog, "loadavg": load,
                "launch_s": first_launch - start if first_launch else None,
                "claim_s": first_claim - start if first_claim else None,
                "launched": launched, "max_workers_seen": max_workers, "drained_s": time.time() - start,
                "over_launch": launched > backlog}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backlogs", default="1,2,50")
    parser.add_argument("--iterations", type=int, default=200_000, help="iterations of each task")
    parser.add_argument("--scale-interval", type=float, default=2.0)
    parser.add_argument("--scale-wait", type=float, default=2.0)
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="WORKER_IDLE_SECONDS")
    parser.add_argument("--max-workers", type=int, default=5, help="MAX_NUM_OF_WORKERS per node")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", help="write the JSON here (default bench/results/scaler-<time>.json)")
    args = parser.parse_args(argv)
    backlogs = [int(x) for x in args.backlogs.split(",")]
    info = machine()
    results: list[dict] = []
    phase = random.Random(5)
    with tempfile.TemporaryDirectory(prefix="bench-scaler-") as tmp:
        for index in range(args.runs):
            for backlog in backlogs:
                r = one(backlog, args, Path(tmp) / f"{index}-{backlog}", phase)
                results.append(r)
                print(f"run {index + 1} backlog {backlog}: launch {r['launch_s']:.3f}s, first claim "
                      f"{r['claim_s']:.3f}s, launched {r['launched']} (max at once {r['max_workers_seen']}), "
                      f"load {r['loadavg']}", flush=True)
    summary = {}
    rows = []
    for backlog in backlogs:
        mine = [r for r in results if r["backlog"] == backlog]
        s = {"launch_s": spread(r["launch_s"] for r in mine), "claim_s": spread(r["claim_s"] for r in mine),
             "launched": spread(r["launched"] for r in mine),
             "launch_within_interval": all(r["launch_s"] is not None and r["launch_s"] <= args.scale_interval
                                           for r in mine),
             "over_launch": any(r["over_launch"] for r in mine)}
        summary[str(backlog)] = s
        rows.append([backlog, fmt_spread(s["launch_s"]), fmt_spread(s["claim_s"]), fmt_spread(s["launched"]),
                     "yes" if s["launch_within_interval"] else "NO", "NO" if s["over_launch"] else "yes"])
    print_table(f"Scaler reaction, SCALE_INTERVAL {args.scale_interval:g}s, SCALE_WAIT {args.scale_wait:g}s, "
                f"tasks of {args.iterations} iterations, {args.runs} runs: median [min-max]",
                ["backlog", "to launch s", "to first claim s", "workers launched", "launch <= interval",
                 "launched <= tasks"], rows)
    write_json("scaler", {"benchmark": "scaler", "machine": info, "settings": vars(args), "loadavg_at_end": loadavg(),
                          "runs": results, "summary": summary}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
