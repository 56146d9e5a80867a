"""How long an AWS instance's boot takes, step by step, with the rendered user-data run here.

The node's and the worker's user-data (``provisioning.userdata``) run as rendered, with their
absolute paths moved under a temporary directory. What only EC2 has is played by the stubs of
tests/test_aws_userdata_run.py (dnf, IMDS, the AWS CLI serving the real bundle, systemctl); the
rest is real: ``python3.11 -m venv``, pip installing the real bundle offline, tar, and on the
worker gcc compiling the hash engine. Then the node is started from its venv as systemd would
(time to its first ``/health``) and a worker from its venv (time to its first task done).

The steps only EC2 can time (launch to user-data, dnf, the S3 download, IMDS) are estimated in
docs/aws.md. Prints the median [min-max] of ``--runs`` runs per step.

    .venv/bin/python -m bench.aws_boot [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import fmt_spread, loadavg, machine, print_table, spread, wait_until, write_json
from provisioning.artifacts import Artifacts
from provisioning.local_cluster import free_port
from provisioning.userdata import Delivery, node_script, worker_script
from tests.test_aws_userdata_run import INSTANCE_ID, PRIVATE_IP, STUBS

TOKEN = "bench-token"
MOVED = (("/var/log/tm-bootstrap.log", "bootstrap.log"), ("/opt/tm", "opt/tm"), ("/etc/systemd/system", "systemd"),
         ("/etc/tm", "etc/tm"), ("/dev/console", "console"))


def boot(script: str, root: Path, bundle) -> dict[str, float]:
    """Run ``script`` under ``root``; returns each logged step's seconds and the whole script's."""
    for old, new in MOVED:
        script = script.replace(old, str(root / new))
    (root / "systemd").mkdir(parents=True)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        if name == "python3.11":  # the real interpreter: venv and pip are measured
            (bin_dir / name).symlink_to(Path(sys.base_prefix) / "bin" / "python3.11")
            continue
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(root / "calls.log"), "STUB_INSTANCE_ID": INSTANCE_ID,
           "STUB_PRIVATE_IP": PRIVATE_IP, "STUB_TOKEN": TOKEN, "STUB_BUNDLE": str(bundle.path), "HOME": str(root)}
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=900)
    whole = time.monotonic() - started
    log = (root / "bootstrap.log").read_text()
    if done.returncode != 0:
        raise SystemExit(f"the boot failed:\n{log[-3000:]}")
    steps = {name: float(seconds) for name, seconds in re.findall(r"^step (\w+): (\d+)s$", log, re.M)}
    return {**steps, "script": whole}


def node_ready(root: Path) -> float:
    """Start gunicorn from the node's venv as its unit does; seconds to the first /health 200."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "BIND": f"127.0.0.1:{port}", "CLUSTER_TOKEN": TOKEN, "NODE_NAME": "bench",
           "MAX_NUM_OF_WORKERS": "0", "NODE_URL": f"http://127.0.0.1:{port}"}
    started = time.monotonic()
    proc = subprocess.Popen([str(root / "opt/tm/venv/bin/gunicorn"), "--config", "python:nodeapp.gunicorn_conf",
                             "wsgi:app"], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def healthy() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(healthy, 120, what="the node's /health")
        root.joinpath("node.url").write_text(f"http://127.0.0.1:{port}")
        return time.monotonic() - started
    finally:
        root.joinpath("node.pid").write_text(str(proc.pid))


def worker_first_task(worker_root: Path, node_url: str) -> float:
    """Start the worker from its venv; seconds until its first task is done."""
    task = requests.put(f"{node_url}/enqueue", params={"iterations": 1000}, data=b"boot", timeout=5).json()["id"]
    started = time.monotonic()
    proc = subprocess.Popen([str(worker_root / "opt/tm/venv/bin/python"), "-m", "workerapp", "--worker-id", "bench-w",
                             "--idle-seconds", "1", node_url], cwd=worker_root,
                            env={"PATH": "/usr/bin:/bin", "CLUSTER_TOKEN": TOKEN},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: requests.get(f"{node_url}/status/{task}", timeout=2).json().get("result"), 120,
                   what="the worker's first task")
        return time.monotonic() - started
    finally:
        proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    facts = {"machine": machine(), "load_before": loadavg()}
    with tempfile.TemporaryDirectory(prefix="tm-boot-") as tmp:
        started = time.monotonic()
        artifacts = Artifacts(Path(tmp) / "artifacts")
        bundles = {role: artifacts.bundle(role, "x86_64") for role in ("node", "worker")}
        facts["build_seconds"] = time.monotonic() - started  # on the operator's machine, once per cluster
        samples: dict[str, dict[str, list[float]]] = {"node": {}, "worker": {}}
        for run in range(args.runs):
            roots = {role: Path(tmp) / f"{role}-{run}" for role in samples}
            delivery = {role: Delivery("eu-west-1", f"s3://b/{bundles[role].key}", "/tm/demo/cluster-token")
                        for role in samples}
            scripts = {"node": node_script(delivery["node"], {"NODE_NAME": "node-1", "TM_CLUSTER": "demo"}),
                       "worker": worker_script(delivery["worker"], ["http://10.0.0.5:8000"], 60)}
            for role in samples:
                for step, seconds in boot(scripts[role], roots[role], bundles[role]).items():
                    samples[role].setdefault(step, []).append(seconds)
            samples["node"].setdefault("service to /health", []).append(node_ready(roots["node"]))
            pid = int(roots["node"].joinpath("node.pid").read_text())
            try:
                samples["worker"].setdefault("service to first task done", []).append(
                    worker_first_task(roots["worker"], roots["node"].joinpath("node.url").read_text()))
            finally:
                os.kill(pid, 15)
            for role in samples:
                shutil.rmtree(roots[role], ignore_errors=True)
    rows = [(role, step, fmt_spread(spread(values), 1)) for role in samples for step, values in samples[role].items()]
    print_table(f"boot steps here ({args.runs} runs; dnf, IMDS, S3 and systemd are stubs: see docs/aws.md), "
                f"bundles built in {facts['build_seconds']:.0f}s", ("role", "step", "seconds"), rows)
    print(f"load average before: {facts['load_before']:.2f}")
    write_json("aws_boot", {**facts, "samples": samples}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
