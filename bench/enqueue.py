"""Benchmark 1: enqueue throughput of one node against the bare-Flask ceiling, same load, same run.

    .venv/bin/python -m bench.enqueue [--runs 3] [--duration 10] [--connections 16]

Each run starts a fresh node (no workers, no peer: only the enqueue path is measured) and a
fresh bare app under identical gunicorn settings, and loads them one after the other
(alternating which goes first). Prints a table, writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import fmt_spread, loadavg, machine, print_table, spread, write_json
from bench.loadgen import have_wrk, run_load
from bench.servers import start_bare, start_node


def one_run(index: int, args: argparse.Namespace, log_dir: Path) -> dict:
    node = start_node(log_dir, MAX_NUM_OF_WORKERS="0")
    bare = start_bare(log_dir)
    try:
        targets = {"node": node, "bare": bare}
        order = ["node", "bare"] if index % 2 == 0 else ["bare", "node"]
        out = {"loadavg": loadavg()}
        for name in order:
            url = targets[name].url + "/enqueue?iterations=1&reuse=0"
            run_load(url, tool=args.tool, connections=args.connections, duration=min(1.0, args.duration))  # warm-up
            out[name] = run_load(url, tool=args.tool, connections=args.connections, duration=args.duration)
        out["ratio"] = out["node"]["rps"] / out["bare"]["rps"]
        return out
    finally:
        node.stop()
        bare.stop()


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
            print(f"run {index + 1}: node {r['node']['rps']:.0f} req/s, bare {r['bare']['rps']:.0f} req/s, "
                  f"ratio {r['ratio']:.2f} (load {r['loadavg']})", flush=True)
    summary = {
        "node_rps": spread(r["node"]["rps"] for r in runs),
        "bare_rps": spread(r["bare"]["rps"] for r in runs),
        "ratio": spread(r["ratio"] for r in runs),
        "node_p50_ms": spread(r["node"]["p50_ms"] for r in runs),
        "node_p99_ms": spread(r["node"]["p99_ms"] for r in runs),
        "bare_p50_ms": spread(r["bare"]["p50_ms"] for r in runs),
        "bare_p99_ms": spread(r["bare"]["p99_ms"] for r in runs),
        "errors": sum(r["node"]["errors"] + r["bare"]["errors"] for r in runs),
        "target_ratio": 0.8,
    }
    print_table(
        f"Enqueue, {args.connections} connections, {tool}, {args.runs} runs: median [min-max]",
        ["server", "req/s", "p50 ms", "p99 ms"],
        [["node", fmt_spread(summary["node_rps"]), fmt_spread(summary["node_p50_ms"]), fmt_spread(summary["node_p99_ms"])],
         ["bare Flask", fmt_spread(summary["bare_rps"]), fmt_spread(summary["bare_p50_ms"]), fmt_spread(summary["bare_p99_ms"])],
         ["node / bare", fmt_spread(summary["ratio"]), "", ""]],
    )
    print(f"target: node / bare >= 0.8; errors (non-201 or socket): {summary['errors']}")
    write_json("enqueue", {"benchmark": "enqueue", "machine": info, "tool": tool, "settings": vars(args),
                           "loadavg_at_end": loadavg(), "runs": runs, "summary": summary}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
