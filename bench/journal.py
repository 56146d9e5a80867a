"""Benchmark: what the journal (DATA_DIR) costs on enqueue, and how big it gets.

    .venv/bin/python -m bench.journal [--runs 3] [--duration 8] [--connections 16] [--size-tasks 200000]

Part 1, enqueue: each run starts one node per configuration, fresh, as in production (gunicorn,
no workers, no peer): no journal, and DATA_DIR with JOURNAL_SYNC=off, batch (the default) and
always. They are loaded with ``PUT /enqueue`` in turn, in short slices over several rounds with
the order rotating, so that a shared machine's changing load falls alike on all four. The table
gives req/s and latency side by side and each policy's ratio to no journal (goal: batch >= 0.7).

Part 2, size: ``--size-tasks`` small tasks go through a ``TaskStore`` with a journal in this
process (submit, claim, complete, from 64 threads, default sync policy) with
RESULTS_RETENTION=10,000, and the journal's size on disk (file + WAL) is printed as it goes: it
levels off instead of growing with the task count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import fmt_spread, loadavg, machine, print_table, spread, write_json
from bench.loadgen import have_wrk, run_load
from bench.servers import start_node
from nodeapp.store.journal import Journal
from nodeapp.store.tasks import TaskStore

CONFIGS = {
    "no journal": {},
    "off": {"JOURNAL_SYNC": "off"},
    "batch": {"JOURNAL_SYNC": "batch"},
    "always": {"JOURNAL_SYNC": "always"},
}


def enqueue_run(index: int, args: argparse.Namespace, tmp: Path) -> dict:
    """One run: a fresh node per configuration, all started first, then loaded in turn in
    ``args.slices`` rounds of short slices (the order rotating), so that the machine's load
    drifts alike over every configuration. Figures are totals over the slices."""
    names = list(CONFIGS)
    nodes = {}
    out: dict = {"loadavg": loadavg()}
    try:
        for name in names:
            settings = dict(CONFIGS[name])
            if settings:
                settings["DATA_DIR"] = str(tmp / f"run{index}-{name}")
                settings["JOURNAL_BATCH_MS"] = str(args.batch_ms)
            nodes[name] = start_node(tmp / "logs", name=f"bench-{name.replace(' ', '-')}-{index}",
                                     MAX_NUM_OF_WORKERS="0", **settings)
        slices: dict[str, list[dict]] = {name: [] for name in names}
        for name in names:  # warm-up
            run_load(nodes[name].url + "/enqueue?iterations=1&reuse=0", tool=args.tool, connections=args.connections,
                     duration=1.0)
        for round_ in range(args.slices):
            shift = (index + round_) % len(names)
            for name in names[shift:] + names[:shift]:
                slices[name].append(run_load(nodes[name].url + "/enqueue?iterations=1&reuse=0", tool=args.tool,
                                             connections=args.connections, duration=max(1, round(args.duration / args.slices))))
    finally:
        for node in nodes.values():
            node.stop()
    for name in names:
        parts = slices[name]
        seconds = sum(p["seconds"] for p in parts)
        out[name] = {"rps": sum(p["requests"] for p in parts) / seconds, "requests": sum(p["requests"] for p in parts),
                     "seconds": seconds, "errors": sum(p["errors"] for p in parts),
                     "p50_ms": statistics.median(p["p50_ms"] for p in parts),
                     "p99_ms": max(p["p99_ms"] for p in parts)}
    for name in names[1:]:
        out[name]["ratio"] = out[name]["rps"] / out["no journal"]["rps"]
    return out


def size_run(tasks: int, retention: int, data_dir: Path, threads: int = 64) -> list[dict]:
    """Push ``tasks`` small tasks through a journaled store; the journal's size every tenth."""
    journal = Journal(data_dir)
    journal.load()
    journal.start()
    store = TaskStore(results_retention=retention, journal=journal)
    samples: list[dict] = []
    done = [0]
    lock = threading.Lock()
    every = max(1, tasks // 10)
    started = time.monotonic()

    def work(worker: int) -> None:
        worker_id = f"bench-{worker}"
        while True:
            with lock:
                if done[0] >= tasks:
                    return
                done[0] += 1
                count = done[0]
            store.submit(count.to_bytes(8, "big") * 8, 1)  # 64 bytes, each body its own
            for leased in store.claim(worker_id, max_tasks=1):
                store.complete(worker_id, [(leased.id, "0" * 128)])
            if count % every == 0:
                samples.append({"tasks": count, "bytes": journal.size_bytes(),
                                "seconds": round(time.monotonic() - started, 1)})

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    samples.sort(key=lambda s: s["tasks"])
    journal.close()
    samples.append({"tasks": tasks, "bytes": journal.size_bytes(), "seconds": round(time.monotonic() - started, 1),
                    "after_close": True})
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per configuration per run")
    parser.add_argument("--slices", type=int, default=4, help="rounds the duration is cut into, per run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch-ms", type=float, default=5.0, help="JOURNAL_BATCH_MS of the journaled nodes")
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--size-tasks", type=int, default=200_000, help="0 = skip part 2")
    parser.add_argument("--retention", type=int, default=10_000)
    parser.add_argument("--json", help="write the JSON here (default bench/results/journal-<time>.json)")
    args = parser.parse_args(argv)
    tool = "wrk" if args.tool == "wrk" or (args.tool == "auto" and have_wrk()) else "python"
    runs, sizes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        for index in range(args.runs):
            runs.append(enqueue_run(index, args, Path(tmp)))
            r = runs[-1]
            print(f"run {index + 1}: " + ", ".join(f"{n} {r[n]['rps']:.0f}" for n in CONFIGS)
                  + f" req/s (load {r['loadavg']})", flush=True)
        if args.size_tasks:
            sizes = size_run(args.size_tasks, args.retention, Path(tmp) / "size")
    rows, summary = [], {}
    for name in CONFIGS:
        summary[name] = {key: spread(r[name][key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")}
        summary[name]["errors"] = sum(r[name]["errors"] for r in runs)
        ratio = spread(r[name]["ratio"] for r in runs) if name != "no journal" else None
        summary[name]["ratio"] = ratio
        rows.append([name, fmt_spread(summary[name]["rps"]), fmt_spread(ratio) if ratio else "1",
                     fmt_spread(summary[name]["p50_ms"]), fmt_spread(summary[name]["p99_ms"])])
    if runs:
        print_table(f"Enqueue with and without the journal, {args.connections} connections, {tool}, "
                    f"JOURNAL_BATCH_MS={args.batch_ms:g}, {args.runs} runs: median [min-max]",
                    ["journal", "req/s", "/ no journal", "p50 ms", "p99 ms (worst slice)"], rows)
        print(f"goal: batch / no journal >= 0.7; errors (non-201 or socket): "
              f"{sum(s['errors'] for s in summary.values())}")
    if sizes:
        print_table(f"Journal size, {args.size_tasks} tasks of 64 bytes, RESULTS_RETENTION={args.retention}",
                    ["tasks", "file + WAL", "seconds"],
                    [[("closed " if s.get("after_close") else "") + str(s["tasks"]), f"{s['bytes'] / 2**20:.1f} MiB",
                      str(s["seconds"])] for s in sizes])
    write_json("journal", {"benchmark": "journal", "machine": machine(), "tool": tool, "settings": vars(args),
                           "loadavg_at_end": loadavg(), "runs": runs, "summary": summary, "sizes": sizes}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
