"""Benchmarks 2 and 3: end to end on the local cluster and on RQ and Celery, side by side.

    .venv/bin/python -m bench.e2e [--runs 3] [--systems cluster,rq,rq-simple,celery]

Every system has exactly 2 worker processes and gets the same workloads in the same run:
small (2,000 x 1 iteration, 64-byte bodies), compute (32 x 1,000,000), mixed (500 x 1..200,000,
seeded). Each run measures the single-core hashlib rate first, and the rate of the engine the
cluster's workers use (workerapp/engine.py: native when built, all its vector lanes busy: eight
chains at once with AVX-512); compute's ideal wall time is
total iterations / (2 x that rate): the engine's for the cluster, hashlib's for the peers, whose
tasks run the hashlib loop. Since the machine is shared, the CPU seconds each system's
processes used are reported too, against the ideal CPU (total iterations / the rate per CPU
second): that ratio is the system's overhead whatever the load. The order of the systems rotates from run to run. The peers
run in bench/.venv-peers (bench/setup_peers.sh) against a private redis-server. Every result is
checked against workerapp.compute.compute. Prints a table, writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench.cluster import ClusterSystem
from bench.common import PEERS_PYTHON, ROOT, cpu_hash_rate, fmt_spread, loadavg, machine, print_table, spread, write_json
from bench.workloads import by_name, run_workload
from workerapp.compute import measure_hash_rate
from workerapp.engine import select_engine
from workerapp.lanes import widened

SYSTEMS = ("cluster", "cluster-nojournal", "rq", "rq-simple", "celery")
#: Run by default (``cluster-nojournal``, the cluster without DATA_DIR, only when asked for).
DEFAULT_SYSTEMS = ("cluster", "rq", "rq-simple", "celery")


def cluster_settings(system: str) -> tuple[bool, dict[str, str]]:
    """``cluster``, ``cluster-nojournal`` or ``cluster+VAR=VALUE[+VAR=VALUE...]``: (journal, settings)."""
    if system == "cluster-nojournal":
        return False, {}
    return True, dict(item.split("=", 1) for item in system.split("+")[1:])


def run_cluster(names: list[str], args, rate: float, log_dir: Path, system: str = "cluster") -> list[dict]:
    workloads = by_name(args.scale)
    journal, own = cluster_settings(system)
    system = ClusterSystem(rate, log_dir, journal=journal, **dict(item.split("=", 1) for item in args.set), **own)
    try:
        out = []
        for name in names:
            result = run_workload(system, workloads[name], args.clients, args.timeout)
            result["workers"] = system.workers()
            out.append(result)
        return out
    finally:
        system.stop()


def run_peer(kind: str, names: list[str], args, redis, log_dir: Path) -> list[dict]:
    out_path = log_dir / f"{kind}.json"
    cmd = [str(PEERS_PYTHON), "-m", "bench.peers", "--system", kind, "--redis-url", redis.url,
           "--redis-pid", str(redis.process.pid),
           "--workloads", ",".join(names), "--scale", str(args.scale), "--clients", str(args.clients),
           "--timeout", str(args.timeout), "--log", str(log_dir / f"{kind}.log"), "--json-out", str(out_path)]
    try:
        subprocess.run(cmd, cwd=ROOT, check=True, timeout=args.timeout * (len(names) + 1) + 120)
    finally:
        redis.flush()
    return json.loads(out_path.read_text())


def summarize(runs: list[dict], systems: list[str], names: list[str]) -> dict:
    summary: dict = {}
    for system in systems:
        for name in names:
            rows = [r["results"][system][name] for r in runs if system in r["results"]]
            summary[f"{system}/{name}"] = {
                "tasks_per_s": spread(x["tasks_per_s"] for x in rows),
                "wall_s": spread(x["wall_s"] for x in rows),
                "wall_over_ideal": spread(x["wall_s"] / x["ideal_s"] for x in rows),
                "cpu_over_ideal": spread(x["cpu_over_ideal"] for x in rows),
                "verified": all(x["check"]["verified"] for x in rows),
            }
    ratios = {}
    journaled = [s for s in systems if s.startswith("cluster") and s != "cluster-nojournal"]
    for ours in journaled:  # each journaled cluster against the cluster without journal and the peers
        for other in systems:
            if other not in journaled:
                for name in names:
                    ratios[f"{ours}/{other} {name} tasks/s"] = spread(
                        r["results"][ours][name]["tasks_per_s"] / r["results"][other][name]["tasks_per_s"]
                        for r in runs)
                    ratios[f"{ours}/{other} {name} wall"] = spread(
                        r["results"][ours][name]["wall_s"] / r["results"][other][name]["wall_s"] for r in runs)
    summary["ratios"] = ratios
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                        help=f"some of {','.join(SYSTEMS)}; cluster-nojournal: the cluster without DATA_DIR; "
                             "cluster+VAR=VALUE[+...]: the cluster with node settings of its own (e.g. "
                             "cluster+JOURNAL_SYNC=off), side by side with the others")
    parser.add_argument("--workloads", default="small,compute,mixed")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink counts and iterations (smoke runs)")
    parser.add_argument("--clients", type=int, default=8, help="enqueueing threads, the same for every system")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one workload may take")
    parser.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                        help="a node setting for the cluster, e.g. SCALE_INTERVAL=0.5 (repeatable)")
    parser.add_argument("--json", help="write the JSON here (default bench/results/e2e-<time>.json)")
    args = parser.parse_args(argv)
    systems = args.systems.split(",")
    names = args.workloads.split(",")
    unknown = {s for s in systems if s not in SYSTEMS and not (s.startswith("cluster+") and "=" in s)}
    if unknown:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    peers = [s for s in systems if not s.startswith("cluster")]
    if peers and not PEERS_PYTHON.exists():
        parser.error("RQ and Celery need bench/.venv-peers: run bench/setup_peers.sh first")
    info = machine()
    engine = select_engine()  # what the cluster's workers will pick (they inherit TM_HASH_ENGINE)
    width = engine.width if engine.compute_many else 1
    task_fn = widened(engine.compute_many, width) if width > 1 else engine.compute
    workloads = by_name(args.scale)
    print("expected results (computed once, then cached in bench/results/) ...", flush=True)
    for name in names:
        workloads[name].expected()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        log_dir = Path(tmp)
        redis = None
        if peers:
            from bench.redis_server import RedisServer

            redis = RedisServer(log_dir)
        try:
            for index in range(args.runs):
                rate, cpu_rate = measure_hash_rate(1.0), cpu_hash_rate(1.0)
                # the cluster's workers hash with their engine (native when built), all its vector
                # lanes busy: its ideal is at that rate
                own = (measure_hash_rate(1.0, compute_fn=task_fn) * width,
                       measure_hash_rate(1.0, clock=time.process_time, compute_fn=task_fn) * width)
                order = systems[index % len(systems):] + systems[:index % len(systems)]
                run = {"hash_rate": rate, "cpu_hash_rate": cpu_rate, "engine": engine.name, "engine_rate": own[0],
                       "engine_cpu_rate": own[1], "order": order, "loadavg": loadavg(), "results": {}}
                for system in order:
                    ours = system.startswith("cluster")
                    found = (run_cluster(names, args, own[0], log_dir / f"cluster-{systems.index(system)}-{index}", system)
                             if ours else run_peer(system, names, args, redis, log_dir))
                    wall_rate, cpu_rate_here = own if ours else (rate, cpu_rate)
                    for result in found:
                        total = workloads[result["workload"]].total_iterations
                        result["ideal_s"] = total / (2 * wall_rate)
                        result["ideal_cpu_s"] = total / cpu_rate_here
                        result["cpu_over_ideal"] = sum(result["cpu_s"].values()) / result["ideal_cpu_s"]
                    run["results"][system] = {r["workload"]: r for r in found}
                    print(f"run {index + 1} {system}: " + ", ".join(
                        f"{r['workload']} {r['tasks_per_s']:.1f}/s wall {r['wall_s']:.2f}s"
                        f"{'' if r['check']['verified'] else ' NOT VERIFIED ' + str(r['check'])}"
                        + " cpu " + "/".join(f"{k} {v:.1f}s" for k, v in r.get("cpu_s", {}).items())
                        + f" runq-wait {r['runqueue_wait_s'].get('workers', 0):.1f}s"
                        + (f" workers max {r['workers']['max_seen']} launched {r['workers']['launched_total']}"
                           if 'workers' in r else "")
                        for r in found) + f" (load {loadavg()})", flush=True)
                runs.append(run)
        finally:
            if redis is not None:
                redis.stop()
    summary = summarize(runs, systems, names)
    rows = []
    for system in systems:
        for name in names:
            s = summary[f"{system}/{name}"]
            rows.append([system, name, fmt_spread(s["tasks_per_s"]), fmt_spread(s["wall_s"]),
                         fmt_spread(s["wall_over_ideal"]), fmt_spread(s["cpu_over_ideal"]),
                         "yes" if s["verified"] else "NO"])
    print_table(f"End to end, 2 worker processes each, {args.runs} runs: median [min-max]; "
                f"hash rate {fmt_spread(spread(r['hash_rate'] for r in runs))}/s per core (hashlib loop), "
                f"{fmt_spread(spread(r['engine_rate'] for r in runs))}/s ({engine.name} engine"
                f"{', ' + engine.kernel + ' kernel' if engine.kernel else ''}: the cluster's ideal); "
                f"1-min loadavg {fmt_spread(spread(r['loadavg'] for r in runs))}",
                ["system", "workload", "tasks/s", "wall s", "wall/ideal", "CPU/ideal CPU", "verified"], rows)
    if summary["ratios"]:
        print_table("Ratios within each run: median [min-max]", ["ratio", "value"],
                    [[k, fmt_spread(v)] for k, v in summary["ratios"].items()])
    print("targets: small cluster >= celery and >= 2 x rq-simple tasks/s; compute wall/ideal <= 1.1")
    write_json("e2e", {"benchmark": "e2e", "machine": info, "settings": vars(args), "loadavg_at_end": loadavg(),
                       "runs": runs, "summary": summary}, args.json)
    ok = all(summary[f"{s}/{n}"]["verified"] for s in systems for n in names)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
