"""What spot-checks cost: iterations the nodes spend recomputing, as a share of the workload's.

Two figures per workload (``compute`` and ``mixed`` of ``bench/workloads.py``, at full scale):

- *expected*: the exact expectation of the sampling rule and the segment choice over the
  workload's tasks (``nodeapp/store/verification.py``: probability ``min(1, VERIFY_ITERATIONS /
  n)``, check cost = the whole task, or one segment and the last), without a cluster;
- *measured*: the local cluster at its default settings (2 nodes, 2 worker processes, journal
  on, as ``bench.e2e`` runs it), the workload run end to end, and the growth of
  ``checks.iterations`` in both nodes' ``/stats`` over the run, divided by the workload's
  iterations; the median of ``--runs`` runs with the spread. Each run also reports mismatches
  (0 expected: the workers are sound) and the wall time.

``.venv/bin/python -m bench.verification [--runs 3] [--scale 1.0]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.cluster import ClusterSystem
from bench.common import cpu_hash_rate, loadavg, print_table, spread, write_json
from bench.workloads import by_name, run_workload
from tmcommon.marks import positions
from tmcommon.settings import SETTINGS


def check_cost(n: int) -> float:
    """Expected iterations one check of a task of ``n`` iterations recomputes."""
    ends = [*positions(n), n]
    lengths = [b - a for a, b in zip([0, *ends], ends)]
    if len(lengths) == 1:
        return n
    return sum(lengths[:-1]) / (len(lengths) - 1) + lengths[-1]


def expected_share(iterations: list[int], budget: int) -> float:
    """Expected check iterations over workload iterations, past the workers' probation."""
    return sum(min(1.0, budget / n) * check_cost(n) for n in iterations) / sum(iterations)


def measure(name: str, runs: int, scale: float, log_root: Path) -> list[dict]:
    workload = by_name(scale)[name]
    rate = cpu_hash_rate()
    out = []
    for run in range(runs):
        system = ClusterSystem(rate, log_root / f"{name}-{run}")
        try:
            before = [s["checks"] for s in system.stats()]
            result = run_workload(system, workload, clients=8, timeout=1800)
            after = [s["checks"] for s in system.stats()]
        finally:
            system.stop()
        spent = sum(a["iterations"] - b["iterations"] for a, b in zip(after, before))
        out.append({"run": run, "share": spent / workload.total_iterations, "check_iterations": spent,
                    "checks": sum(a["checks"] - b["checks"] for a, b in zip(after, before)),
                    "mismatches": sum(a["mismatches"] - b["mismatches"] for a, b in zip(after, before)),
                    "skipped": sum(a["skipped"] - b["skipped"] for a, b in zip(after, before)),
                    "wall_s": result["wall_s"], "verified": result["check"]["verified"]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the workloads (smoke runs)")
    parser.add_argument("--workloads", default="compute,mixed")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    budget = SETTINGS["verify_iterations"].default
    report: dict = {"verify_iterations": budget, "loadavg_start": loadavg(), "workloads": {}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        for name in args.workloads.split(","):
            workload = by_name(args.scale)[name]
            expected = expected_share([n for _, n in workload.tasks()], budget)
            runs = measure(name, args.runs, args.scale, Path(tmp))
            shares = spread(r["share"] for r in runs)
            report["workloads"][name] = {"expected_share": expected, "measured_share": shares, "runs": runs}
            rows.append([name, f"{expected:.2%}", f"{shares['median']:.2%} [{shares['min']:.2%}-{shares['max']:.2%}]",
                         str(statistics.median(r["checks"] for r in runs)), str(sum(r["mismatches"] for r in runs)),
                         str(sum(r["skipped"] for r in runs)), str(all(r["verified"] for r in runs))])
    report["loadavg_end"] = loadavg()
    print_table(f"spot-check cost at VERIFY_ITERATIONS={budget} (share of the workload's iterations)",
                ["workload", "expected", "measured median [min-max]", "checks/run", "mismatches", "skipped",
                 "results ok"], rows)
    write_json("verification", report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
