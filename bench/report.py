"""Markdown tables for bench/README.md from the JSON files the benchmarks wrote.

    .venv/bin/python -m bench.report bench/results/enqueue-*.json bench/results/e2e-*.json ...

Each file is recognised by its "benchmark" field; figures are "median [min-max]" over its runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import fmt_spread, spread


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def loads(data: dict) -> str:
    runs = [r.get("loadavg") for r in data.get("runs", []) if isinstance(r, dict) and r.get("loadavg") is not None]
    return fmt_spread(spread(runs), 2) if runs else "-"


def enqueue(data: dict) -> str:
    s = data["summary"]
    rows = [["node", fmt_spread(s["node_rps"]), fmt_spread(s["node_p50_ms"]), fmt_spread(s["node_p99_ms"])],
            ["bare Flask", fmt_spread(s["bare_rps"]), fmt_spread(s["bare_p50_ms"]), fmt_spread(s["bare_p99_ms"])],
            ["**node / bare**", f"**{fmt_spread(s['ratio'])}**", "", ""]]
    return (f"Enqueue ({data['tool']}, {data['settings']['connections']} connections, "
            f"{data['settings']['duration']:g} s per server per run, {len(data['runs'])} runs, "
            f"1-min loadavg at each run {loads(data)}):\n\n" + table(["server", "req/s", "p50 ms", "p99 ms"], rows))


def e2e(data: dict) -> str:
    s = data["summary"]
    systems = list(data["runs"][0]["results"])
    names = list(data["runs"][0]["results"][systems[0]])
    rows = []
    for system in ["cluster", "rq", "rq-simple", "celery"]:
        if system not in systems:
            continue
        for name in names:
            x = s[f"{system}/{name}"]
            cpu = spread(sum(r["results"][system][name]["cpu_s"].values()) for r in data["runs"])
            hashing = name != "small"  # 1-iteration tasks: the ideal is ~0, the ratio meaningless
            rows.append([system, name, fmt_spread(x["tasks_per_s"]), fmt_spread(x["wall_s"]),
                         fmt_spread(x["wall_over_ideal"]) if hashing else "-", fmt_spread(cpu),
                         fmt_spread(x.get("cpu_over_ideal") or {}) if hashing else "-",
                         "yes" if x["verified"] else "NO"])
    rates = fmt_spread(spread(r["hash_rate"] for r in data["runs"]))
    out = (f"End to end ({len(data['runs'])} runs, system order rotated, hash rate per core measured at "
           f"the start of each run: {rates} iterations/s; 1-min loadavg {loads(data)}):\n\n"
           + table(["system", "workload", "tasks/s", "wall s", "wall / ideal", "CPU s (system's processes)",
                    "CPU / ideal CPU", "all verified"], rows))
    if s.get("ratios"):
        out += "\n\nRatios within each run:\n\n" + table(
            ["ratio", "median [min-max]"], [[k, fmt_spread(v)] for k, v in s["ratios"].items()])
    return out


def scaler(data: dict) -> str:
    st = data["settings"]
    rows = [[b, fmt_spread(x["launch_s"]), fmt_spread(x["claim_s"]), fmt_spread(x["launched"]),
             "yes" if x["launch_within_interval"] else "NO", "NO" if x["over_launch"] else "yes"]
            for b, x in data["summary"].items()]
    return (f"Scaler (SCALE_INTERVAL {st['scale_interval']:g} s, SCALE_WAIT {st['scale_wait']:g} s, "
            f"MAX_NUM_OF_WORKERS {st['max_workers']} per node, tasks of {st['iterations']} iterations, "
            f"{st['runs']} runs, loadavg {loads(data)}):\n\n"
            + table(["backlog (tasks)", "to first launch s", "to first claim s", "workers launched",
                     "launch within one interval", "launched <= tasks"], rows))


def store(data: dict) -> str:
    s, m = data["summary"], data["memory"]
    n = data["settings"]["tasks"]
    rows = [[k, fmt_spread(s[k]["p50_ms"]), fmt_spread(s[k]["p99_ms"])] for k in s]
    mem = [["RSS of a fresh node", f"{m['rss_base_kib'][0] / 1024:.1f} MiB"],
           [f"RSS with {n:,} queued 1 KiB tasks", f"{m['rss_queued_kib'][0] / 1024:.1f} MiB"],
           ["per queued 1 KiB task", f"{m['per_queued_1kib_task_bytes']:.0f} bytes"],
           ["per queued empty task", f"{m['per_queued_empty_task_bytes']:.0f} bytes"],
           [f"RSS with {n:,} results kept", f"{m['rss_results_kib'][1] / 1024:.1f} MiB"],
           ["per completed result kept", f"{m['per_result_kept_bytes']:.0f} bytes"]]
    return (f"Results kept: {data['results_kept']} (node-a, node-b); {data['settings']['requests']} sequential calls "
            f"of each kind per run, {len(data['runs'])} runs, loadavg {loads(data)}:\n\n"
            + table(["call (on node-a)", "p50 ms", "p99 ms"], rows) + "\n\nMemory (RSS of the node's gunicorn "
            "worker process):\n\n" + table(["figure", "value"], mem))


def main(argv: list[str]) -> int:
    for path in argv:
        data = json.loads(Path(path).read_text())
        render = {"enqueue": enqueue, "e2e": e2e, "scaler": scaler, "store": store}[data["benchmark"]]
        print(f"<!-- {Path(path).name} -->\n{render(data)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
