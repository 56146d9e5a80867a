"""Smoke runs of every benchmark at tiny sizes: the scripts keep working and write sane JSON.

No timing is asserted (the machine is shared); only that each script ran, checked its results
and reported figures of the right shape. The RQ/Celery part (mark ``peers``, left out of the
default run) needs bench/.venv-peers and redis-server (bench/setup_peers.sh), which are not
dependencies of the project: ``pytest -m peers`` after that script.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / "bench" / ".venv-peers" / "bin" / "python"

pytestmark = pytest.mark.integration


def run_bench(module: str, tmp_path: Path, *args: str, timeout: float = 300) -> dict:
    """Run ``bench.<module>``; ``timeout`` only catches a hang (a busy machine is slow, not wrong)."""
    out = tmp_path / f"{module}.json"
    proc = subprocess.run([sys.executable, "-m", f"bench.{module}", *args, "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"bench.{module} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads(out.read_text())
    assert data["benchmark"] == module
    assert data["machine"]["cores"] >= 1
    return data


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_enqueue_smoke(tmp_path):
    data = run_bench("enqueue", tmp_path, "--runs", "1", "--duration", "0.5", "--connections", "4",
                     "--tool", "python")
    run = data["runs"][0]
    for load in ("node", "node identical", "node no journal", "bare", "node GET /health", "bare GET /health"):
        assert run[load]["requests"] > 0 and run[load]["errors"] == 0
        assert positive(run[load]["rps"]) and run[load]["p99_ms"] >= run[load]["p50_ms"] > 0
        assert positive(run[load]["cpu_us_per_request"])
        assert run[load].get("verified", True) is True  # the nodes hold each task they answered 201 for
    assert positive(data["summary"]["node"]["ratio"]["median"]) and data["summary"]["verified"] is True


def test_inprocess_smoke(tmp_path):
    data = run_bench("inprocess", tmp_path, "--rounds", "2", "--requests", "50", "--profile", "node-journal")
    for kind in ("bare", "node", "node-journal"):
        result = data["results"][kind]
        assert positive(result["min_us"]) and result["min_us"] <= result["median_us"] and len(result["rounds_us"]) == 2


def test_e2e_cluster_smoke(tmp_path):
    data = run_bench("e2e", tmp_path, "--runs", "1", "--systems", "cluster", "--scale", "0.01",
                     "--set", "SCALE_INTERVAL=0.5", "--set", "SCALE_WAIT=0.5")
    results = data["runs"][0]["results"]["cluster"]
    assert set(results) == {"small", "compute", "mixed"}
    for result in results.values():
        assert result["check"] == {"ok": result["tasks"], "wrong": 0, "missing": 0, "verified": True}
        assert positive(result["tasks_per_s"]) and positive(result["ideal_s"])
        assert result["workers"]["max_seen"] <= 2  # MAX_NUM_OF_WORKERS=1 on each of the two nodes
    assert positive(data["runs"][0]["hash_rate"])


@pytest.mark.peers
def test_e2e_peers_smoke(tmp_path):
    assert PEERS_PYTHON.exists() and shutil.which("redis-server"), "run bench/setup_peers.sh first"
    data = run_bench("e2e", tmp_path, "--runs", "1", "--systems", "rq-simple,celery", "--scale", "0.01",
                     "--workloads", "small")
    for system in ("rq-simple", "celery"):
        for result in data["runs"][0]["results"][system].values():
            assert result["check"]["verified"] and positive(result["tasks_per_s"])


def test_scaler_smoke(tmp_path):
    data = run_bench("scaler", tmp_path, "--runs", "1", "--backlogs", "2", "--iterations", "1000",
                     "--scale-interval", "0.5", "--scale-wait", "0.5", "--idle-seconds", "0.5")
    assert [r["backlog"] for r in data["runs"]] == [2]
    for run in data["runs"]:
        assert 1 <= run["launched"] <= run["backlog"]
        assert 0 < run["launch_s"] <= run["claim_s"]


def test_store_smoke(tmp_path):
    data = run_bench("store", tmp_path, "--tasks", "300", "--runs", "1", "--requests", "20", "--tool", "python")
    assert data["results_kept"] == [300, 300]
    assert data["memory"]["drained"] == [300, 300]
    for kind in ("pullCompleted_top100", "status_local", "status_peer"):
        assert data["runs"][0][kind]["count"] == 20 and positive(data["runs"][0][kind]["p50_ms"])


def test_journal_smoke(tmp_path):
    data = run_bench("journal", tmp_path, "--runs", "1", "--duration", "1", "--slices", "1", "--connections", "4",
                     "--tool", "python", "--size-tasks", "300", "--retention", "100")
    run = data["runs"][0]
    for config in ("no journal", "off", "batch", "always"):
        assert run[config]["requests"] > 0 and run[config]["errors"] == 0 and positive(run[config]["rps"])
    assert positive(data["summary"]["batch"]["ratio"]["median"])
    sizes = data["sizes"]
    assert sizes[-1]["tasks"] == 300 and sizes[-1]["after_close"] and all(positive(s["bytes"]) for s in sizes)


def test_batch_smoke(tmp_path):
    data = run_bench("batch", tmp_path, "--runs", "1", "--tasks", "20", "--reuse-iterations", "2000")
    summary = data["summary"]
    assert summary["verified"] and set(summary["wall_s"]) == {"batch", "single", "single x8", "plain"}
    assert all(positive(s["median"]) for s in summary["wall_s"].values())
    assert positive(summary["duplicate_s"]["same node"]["median"]) and positive(summary["original_s"]["median"])
