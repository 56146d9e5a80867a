"""Slow clients against one node, through its nginx and straight to its gunicorn, side by side.

What the proxy is for: each scenario holds N hostile sockets open (one byte sent, headers
trickled, a body trickled, idle keep-alive) while ``GET /health`` is timed. Behind nginx the node
keeps answering (tests/test_proxy.py holds it to 1 s); bare gunicorn's gthread worker gives each
socket one of its threads and stops answering once they are all taken.

    .venv/bin/python -m bench.slow_clients [--count 16] [--probes 6] [--timeout 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import loadavg, machine, print_table, write_json
from provisioning.local_cluster import LocalCluster, free_port
from tests.slowclients import KINDS, SlowClients, probe_health


def run(count: int, probes: int, timeout: float) -> dict:
    cluster = LocalCluster(ports=(free_port(), free_port()), env={"MAX_NUM_OF_WORKERS": "0"},
                           log_dir=Path(tempfile.mkdtemp(prefix="slow-clients-")), proxy=True)
    cluster.start_node(0)
    cluster.wait_healthy(60, nodes=cluster.nodes[:1])
    node = cluster.nodes[0]
    rows = []
    try:
        for kind in KINDS:
            n = count * 3 if kind == "idle keep-alive" else count
            row = {"scenario": f"{n} x {kind}"}
            for label, url in (("nginx", node.url), ("gunicorn", node.backend_url)):
                port = urlsplit(url).port
                with SlowClients(port, kind, n):
                    probe = probe_health(port, count=probes, timeout=timeout)
                # a frozen gunicorn thaws once the sockets close; wait for it before the next run
                probe_health(port, count=1, timeout=30)
                row[label] = probe.summary()
                row[f"{label}_latencies"] = probe.latencies
            rows.append(row)
    finally:
        cluster.stop_node(0)
    return {"machine": machine(), "loadavg_at_end": loadavg(), "count": count, "probe_timeout": timeout,
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=16, help="hostile sockets per scenario (x3 for idle keep-alive)")
    parser.add_argument("--probes", type=int, default=6, help="/health probes per scenario and server")
    parser.add_argument("--timeout", type=float, default=3.0, help="a probe that takes longer counts as unanswered")
    parser.add_argument("--json", help="where to write the JSON (default bench/results/)")
    args = parser.parse_args(argv)
    result = run(args.count, args.probes, args.timeout)
    print_table(f"/health while slow clients hold sockets (load {result['loadavg_at_end']})",
                ["scenario", "behind nginx", "bare gunicorn"],
                [(r["scenario"], r["nginx"], r["gunicorn"]) for r in result["rows"]])
    write_json("slow_clients", result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
