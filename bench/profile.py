"""Where the time goes: py-spy samples of the node (and its workers) in a benchmark scenario.

    .venv/bin/python -m bench.profile enqueue [--seconds 15]   # one node under wrk enqueue load
    .venv/bin/python -m bench.profile small   [--seconds 15]   # the cluster on the small workload
    .venv/bin/python -m bench.profile pull    [--kept 20000]   # node-a answering pullCompleted?top=100

Needs py-spy from bench/.venv-peers (bench/setup_peers.sh). Writes the collapsed stacks to
bench/results/profile-<scenario>-<time>.txt and prints, per process kind, the frames with the
most samples: by self time and including callees. Only the thread holding the GIL is sampled
(py-spy --gil), so the shares are of the Python time each process really spends, not of
threads waiting on a lock or a socket.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.common import BENCH_DIR, RESULTS_DIR, cpu_seconds, descendants, loadavg, print_table
from bench.loadgen import have_wrk, run_load
from bench.servers import start_node
from bench.workloads import Workload, run_workload
from workerapp.compute import measure_hash_rate

PY_SPY = BENCH_DIR / ".venv-peers" / "bin" / "py-spy"


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                             "--rate", "200", "--subprocesses", "--gil", "--format", "raw", "--output", str(out),
                             "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def kind_of(root: str) -> str:
    if "workerapp" in root:
        return "worker"
    if "gunicorn" in root:
        return "node"
    return "other"


def summarize(path: Path, top: int) -> dict:
    """Self and inclusive sample counts per frame, per process kind."""
    per_kind: dict[str, dict[str, collections.Counter]] = {}
    totals: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]  # nested: master, worker, child
        kind = kind_of(processes[-1] if processes else frames[0])
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        n = int(count)
        totals[kind] += n
        counters = per_kind.setdefault(kind, {"self": collections.Counter(), "total": collections.Counter()})
        counters["self"][frames[-1]] += n
        for frame in set(frames):
            counters["total"][frame] += n
    out = {}
    for kind, counters in per_kind.items():
        out[kind] = {"samples": totals[kind],
                     "self": [(f, c / totals[kind]) for f, c in counters["self"].most_common(top)],
                     "total": [(f, c / totals[kind]) for f, c in counters["total"].most_common(top)]}
    return out


def profile_enqueue(args, tmp: Path, out: Path) -> list[tuple[str, Path]]:
    """One node as ``run_program.py --local`` runs it (journal in its own DATA_DIR), no workers,
    under wrk (distinct bodies); also the CPU seconds its processes used, so that each frame's
    share becomes microseconds of CPU per request."""
    node = start_node(tmp, MAX_NUM_OF_WORKERS="0", DATA_DIR=str(tmp / "data"))
    try:
        pids = [node.process.pid, *descendants(node.process.pid)]
        before = sum(cpu_seconds(pid) for pid in pids)
        spy = record(node.process.pid, args.seconds, out)
        result = run_load(node.url + "/enqueue?iterations=1&reuse=0", duration=args.seconds + 1)
        used = sum(cpu_seconds(pid) for pid in pids) - before
        spy.wait()
        args.cpu_us_per_request = used / max(1, result["requests"]) * 1e6
        print(f"load: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.1f} ms; node CPU {used:.1f} s = "
              f"{args.cpu_us_per_request:.0f} us per request (loadavg {loadavg()})")
    finally:
        node.stop()
    return [("node", out)]


def profile_small(args, tmp: Path, out: Path) -> list[tuple[str, Path]]:
    from bench.cluster import ClusterSystem

    system = ClusterSystem(measure_hash_rate(0.5), tmp)
    try:
        spies = [record(node.process.pid, args.seconds, Path(f"{out}.{i}"))
                 for i, node in enumerate(system.cluster.nodes)]
        workload = Workload("small", 20_000, 1, 1)  # long enough to cover the sampling window
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(run_workload(system, workload, 8, 600)), daemon=True)
        runner.start()
        for spy in spies:
            spy.wait()
        runner.join(600)
        print(f"small x {workload.count}: {result.get('tasks_per_s', 0):.0f} tasks/s, "
              f"enqueue {result.get('enqueue_s', 0):.1f}s, cpu {result.get('cpu_s')} (loadavg {loadavg()})")
    finally:
        system.stop()
    out.write_text("".join(Path(f"{out}.{i}").read_text() for i in range(len(spies))))
    for i in range(len(spies)):
        Path(f"{out}.{i}").unlink()
    return [("all", out)]


def profile_pull(args, tmp: Path, out: Path) -> list[tuple[str, Path]]:
    """Both nodes keep ``--kept`` results; node-a answers pullCompleted?top=100 in a loop."""
    from bench.store import TOKEN, drain, fill, latencies
    from provisioning.local_cluster import LocalCluster

    env = {"MAX_NUM_OF_WORKERS": "0", "MAX_QUEUED": str(args.kept), "RESULTS_RETENTION": str(args.kept)}
    with LocalCluster(env=env, token=TOKEN, log_dir=tmp) as cluster:
        session = requests.Session()
        for url in cluster.urls:
            fill(url, 0, args.kept, session, "wrk" if have_wrk() else "python")
            drain(url, session)
        files = [(node.name, Path(f"{out}.{node.name}")) for node in cluster.nodes]
        spies = [record(node.process.pid, args.seconds, path) for node, (_, path) in zip(cluster.nodes, files)]
        a = cluster.urls[0]
        calls = 0
        while any(spy.poll() is None for spy in spies):
            figures = latencies(session, "POST", [f"{a}/pullCompleted?top=100"] * 100)
            calls += 100
        print(f"{calls} calls with {args.kept} results kept on each node: last 100 p50 {figures['p50_ms']:.2f} ms "
              f"(loadavg {loadavg()})")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=("enqueue", "small", "pull"))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--kept", type=int, default=20_000, help="pull: results kept on each node")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    if not PY_SPY.exists():
        parser.error("py-spy not found: run bench/setup_peers.sh")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"profile-{args.scenario}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.txt"
    scenario = {"enqueue": profile_enqueue, "small": profile_small, "pull": profile_pull}[args.scenario]
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        files = scenario(args, Path(tmp), out)
    for label, path in files:
        for kind, figures in summarize(path, args.top).items():
            per_request = getattr(args, "cpu_us_per_request", None)  # enqueue: shares as CPU us per request
            for how in ("self", "total"):
                print_table(f"{label} {kind}: {figures['samples']} samples holding the GIL, top frames by {how} time",
                            ["share", *(["us/request"] if per_request else []), "frame"],
                            [[f"{share:6.1%}", *([f"{share * per_request:5.0f}"] if per_request else []), frame[:150]]
                             for frame, share in figures[how]])
        print(f"\ncollapsed stacks: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
