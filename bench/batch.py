"""Batch enqueue against one request per task, and how long a duplicate of a completed task takes.

    .venv/bin/python -m bench.batch [--runs 3] [--tasks 2000] [--reuse-iterations 1000000]

One local cluster (2 nodes, 2 warm workers, as in bench.e2e). Each round sends ``--tasks`` new
one-iteration tasks (64-byte random bodies, never sent before, so nothing is reused) three ways,
in an order that rotates from round to round:

- ``batch``: ``Client.enqueue_many`` (``PUT /enqueue_batch``, 1,000 tasks per request);
- ``single``: ``Client.enqueue`` once per task from one thread (each with an idempotency key, so
  each costs the node one look-up on its peer);
- ``single x8``: the same from 8 threads at once;
- ``plain``: one bare ``PUT /enqueue?reuse=0`` per task without a key from one thread, as curl
  would send it (no look-up on the peer): the cheapest one request per task can be.

End to end is from just before the first enqueue to the last ``completed_at`` the nodes
recorded; every result is checked against hashlib. Then, for the reuse figure, each round
enqueues a new task of ``--reuse-iterations`` iterations, waits for its result, and enqueues
the same body again on the same node and on the other one: the seconds until that duplicate's
status is ``completed`` (one ``PUT``, as it completes without a worker, plus one ``GET``), next
to the seconds the original took (enqueued to completed, as its node recorded).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.cluster import ClusterSystem
from bench.common import cpu_hash_rate, fmt_spread, loadavg, machine, print_table, spread, wait_until, write_json
from tmclient.client import Client

WAYS = ("batch", "single", "single x8", "plain")


def send(client: Client, way: str, bodies: list[bytes]) -> list[str]:
    if way == "batch":
        return client.enqueue_many(bodies, 1)
    if way == "single":
        return [client.enqueue(body, 1) for body in bodies]
    if way == "plain":
        session = requests.Session()
        url = client.node_urls[0] + "/enqueue?iterations=1&reuse=0"
        return [session.put(url, data=body, timeout=30).json()["id"] for body in bodies]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda body: client.enqueue(body, 1), bodies))


def end_to_end(system: ClusterSystem, client: Client, way: str, count: int, timeout: float) -> dict:
    bodies = [os.urandom(64) for _ in range(count)]
    base = system.done_count()
    start = time.time()
    ids = send(client, way, bodies)
    enqueued = time.time() - start
    wait_until(lambda: system.done_count() >= base + count, timeout, interval=0.05, what=f"{way}: {count} results")
    results = {}
    by_id = {r["id"]: r for url in system.urls
             for r in system.session.post(f"{url}/pullCompleted?top={count}", timeout=30).json()}
    for task_id, body in zip(ids, bodies):
        got = by_id.get(task_id)
        results[task_id] = got is not None and got["result"] == hashlib.sha512(body).hexdigest()
    last = max(by_id[i]["completed_at"] for i in ids if i in by_id)
    return {"wall_s": last - start, "enqueue_s": enqueued, "verified": all(results.values()),
            "tasks_per_s": count / (last - start)}


def reuse_round(client: Client, urls: list[str], iterations: int, timeout: float) -> dict:
    body = os.urandom(64)
    original = client.enqueue(body, iterations, reuse=False)
    client.wait([original], timeout=timeout)
    done = client.status(original)
    out = {"original_s": done["completed_at"] - done["enqueued_at"]}
    home = next(url for url in urls if owns(url, original))
    for where, url in (("same node", home), ("other node", next(u for u in urls if u != home))):
        node = Client([url], timeout=30)
        started = time.perf_counter()
        duplicate = node.enqueue(body, iterations)
        status = node.status(duplicate)
        out[where] = time.perf_counter() - started
        assert status["state"] == "completed" and status["result"] == done["result"], status
        assert status.get("reused_from") == original, status
    return out


def owns(url: str, task_id: str) -> bool:
    """Whether the node at ``url`` holds the task itself (asked as its peer would: no forwarding)."""
    answer = requests.get(f"{url}/status/{task_id}", headers={"X-Peer-Request": "bench"}, timeout=10)
    return answer.status_code == 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--reuse-iterations", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", help="write the JSON here (default bench/results/batch-<time>.json)")
    args = parser.parse_args(argv)
    info = machine()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        # The duplicate is sent to the other node: that node must ask its peer for work this small.
        floor = min(args.reuse_iterations, 100_000)
        system = ClusterSystem(cpu_hash_rate(), Path(tmp), REUSE_PEER_MIN_ITERATIONS=str(floor))
        try:
            client = Client(system.urls, timeout=30)
            for index in range(args.runs):
                order = WAYS[index % len(WAYS):] + WAYS[:index % len(WAYS)]
                row = {"loadavg": loadavg(), "order": list(order)}
                for way in order:
                    row[way] = end_to_end(system, client, way, args.tasks, args.timeout)
                row["reuse"] = reuse_round(client, system.urls, args.reuse_iterations, args.timeout)
                rounds.append(row)
                print(f"round {index + 1} ({', '.join(order)}; load {row['loadavg']}): "
                      + ", ".join(f"{w} {row[w]['wall_s']:.2f}s" for w in WAYS)
                      + f"; duplicate of a {args.reuse_iterations}-iteration task: "
                      f"{row['reuse']['same node'] * 1000:.1f} ms (its original {row['reuse']['original_s']:.2f}s)",
                      flush=True)
        finally:
            system.stop()
    ratio = {w: spread(r[w]["wall_s"] / r["batch"]["wall_s"] for r in rounds) for w in WAYS[1:]}
    summary = {
        "tasks": args.tasks,
        "wall_s": {w: spread(r[w]["wall_s"] for r in rounds) for w in WAYS},
        "enqueue_s": {w: spread(r[w]["enqueue_s"] for r in rounds) for w in WAYS},
        "ratio_vs_batch": ratio,
        "reuse_iterations": args.reuse_iterations,
        "duplicate_s": {w: spread(r["reuse"][w] for r in rounds) for w in ("same node", "other node")},
        "original_s": spread(r["reuse"]["original_s"] for r in rounds),
        "verified": all(r[w]["verified"] for r in rounds for w in WAYS),
    }
    print_table(f"{args.tasks} one-iteration tasks end to end, median [min-max] of {args.runs} rounds",
                ["way", "end to end s", "enqueue s", "slower than batch"],
                [[w, fmt_spread(summary["wall_s"][w]), fmt_spread(summary["enqueue_s"][w]),
                  "1" if w == "batch" else fmt_spread(ratio[w])] for w in WAYS])
    print_table(f"a duplicate of a completed {args.reuse_iterations}-iteration task",
                ["", "seconds"],
                [["original, enqueued to completed", fmt_spread(summary["original_s"])],
                 ["duplicate on the same node (PUT + GET)", fmt_spread(summary["duplicate_s"]["same node"], 2)],
                 ["duplicate on the other node (PUT + GET)", fmt_spread(summary["duplicate_s"]["other node"], 2)]])
    write_json("batch", {"benchmark": "batch", "machine": info, "args": vars(args), "rounds": rounds,
                         "summary": summary}, args.json)
    return 0 if summary["verified"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
