"""Benchmark 1: enqueue throughput of one node against the bare-Flask ceiling, same load, same run.

    .venv/bin/python -m bench.enqueue [--runs 3] [--duration 10] [--connections 16]

Each run starts fresh servers under identical gunicorn settings: a node as ``run_program.py
--local`` runs one (journal in a DATA_DIR of its own at the default JOURNAL_SYNC; no workers, no
peer: only the enqueue path is measured), the same node without DATA_DIR, and the bare app. It
loads them one after the other, the order rotating from run to run: the journaled node and the
bare app with a distinct 64-byte body per request (``reuse=0``), then the journaled node with
one identical body (default ``reuse``: each such task shares the run of the first). Ratios are
to the bare app of the same run. Then ``GET /health`` on the journaled node and on the bare app:
the node's cost per request before any enqueue work (its request hooks: metrics, the origin
check, the body guard). For each load, the server process's CPU per request (from /proc).
Prints a table, writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import requests

from bench.common import cpu_seconds, fmt_spread, loadavg, machine, print_table, spread, write_json
from bench.loadgen import have_wrk, run_load
from bench.servers import start_bare, start_node

#: What is loaded: (server, path and query, distinct bodies).
LOADS = {
    "node": ("node", "/enqueue?iterations=1&reuse=0", True),
    "node identical": ("node-identical", "/enqueue?iterations=1", False),
    "node no journal": ("node-nojournal", "/enqueue?iterations=1&reuse=0", True),
    "bare": ("bare", "/enqueue?iterations=1", True),
    "node GET /health": ("node", "/health", False),
    "bare GET /health": ("bare", "/health", False),
}


def one_run(index: int, args: argparse.Namespace, log_dir: Path) -> dict:
    servers = {}
    try:
        for name in ("node", "node-identical"):  # the identical bodies on a node of their own
            servers[name] = start_node(log_dir, name=f"bench-{name}-{index}", MAX_NUM_OF_WORKERS="0",
                                       DATA_DIR=str(log_dir / f"data-{name}-{index}"))
        servers["node-nojournal"] = start_node(log_dir, name=f"bench-nojournal-{index}", MAX_NUM_OF_WORKERS="0")
        servers["bare"] = start_bare(log_dir)
        names = list(LOADS)
        order = names[index % len(names):] + names[:index % len(names)]
        out = {"loadavg": loadavg(), "order": order}
        for name in order:
            server, path, distinct = LOADS[name]
            url = f"{servers[server].url}{path}"
            method = "GET" if path == "/health" else "PUT"
            warm = run_load(url, tool=args.tool, connections=args.connections, duration=min(1.0, args.duration),
                            distinct=distinct, method=method)
            pid = servers[server].worker_pid()
            cpu = cpu_seconds(pid)
            out[name] = run_load(url, tool=args.tool, connections=args.connections, duration=args.duration,
                                 distinct=distinct, method=method)
            out[name]["cpu_us_per_request"] = (cpu_seconds(pid) - cpu) / max(1, out[name]["requests"]) * 1e6
            if server != "bare" and method == "PUT":  # every 201 is a task the node holds (a request cut off at the end may count too)
                held = requests.get(servers[server].url + "/stats", timeout=30).json()["enqueued"]
                sent = warm["requests"] - warm["errors"] + out[name]["requests"] - out[name]["errors"]
                out[name]["verified"] = sent <= held <= sent + 2 * args.connections
        for name in names:
            out[name]["ratio"] = out[name]["rps"] / out["bare GET /health" if "/health" in name else "bare"]["rps"]
        out["identical / distinct"] = out["node identical"]["rps"] / out["node"]["rps"]
        return out
    finally:
        for server in servers.values():
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per server per run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--json", help="write the JSON here (default bench/results/enqueue-<time>.json)")
    args = parser.parse_args(argv)
    info = machine()
    tool = "wrk" if args.tool == "wrk" or (args.tool == "auto" and have_wrk()) else "python"
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-enqueue-") as tmp:
        for index in range(args.runs):
            runs.append(one_run(index, args, Path(tmp)))
            r = runs[-1]
            print(f"run {index + 1}: " + ", ".join(f"{name} {r[name]['rps']:.0f} req/s ({r[name]['ratio']:.2f})"
                                                   for name in LOADS) + f" (load {r['loadavg']})", flush=True)
    summary = {name: {"rps": spread(r[name]["rps"] for r in runs), "ratio": spread(r[name]["ratio"] for r in runs),
                      "p50_ms": spread(r[name]["p50_ms"] for r in runs), "p99_ms": spread(r[name]["p99_ms"] for r in runs),
                      "cpu_us": spread(r[name]["cpu_us_per_request"] for r in runs)}
               for name in LOADS}
    summary["identical / distinct"] = spread(r["identical / distinct"] for r in runs)
    summary["errors"] = sum(r[name]["errors"] for r in runs for name in LOADS)
    summary["verified"] = all(r[name].get("verified", True) for r in runs for name in LOADS)
    summary["target_ratio"] = 0.85
    print_table(
        f"Enqueue, {args.connections} connections, {tool}, {args.runs} runs: median [min-max]",
        ["server", "req/s", "/ bare (same run)", "p50 ms", "p99 ms", "server CPU us/request"],
        [[name, fmt_spread(summary[name]["rps"]), fmt_spread(summary[name]["ratio"]), fmt_spread(summary[name]["p50_ms"]),
          fmt_spread(summary[name]["p99_ms"]), fmt_spread(summary[name]["cpu_us"])] for name in LOADS]
        + [["identical / distinct", "", fmt_spread(summary["identical / distinct"]), "", "", ""]],
    )
    print(f"target: node / bare >= 0.85, identical / distinct >= 1; errors (non-201 or socket): {summary['errors']}; "
          f"every node holds each task it answered 201 for: {'yes' if summary['verified'] else 'NO'}")
    write_json("enqueue", {"benchmark": "enqueue", "machine": info, "tool": tool, "settings": vars(args),
                           "loadavg_at_end": loadavg(), "runs": runs, "summary": summary}, args.json)
    return 0 if summary["verified"] and not summary["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
