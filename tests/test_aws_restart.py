"""A restart keeps the fleet: a real gunicorn node with LAUNCHER=ec2 talks to a moto server on
loopback (``ThreadedMotoServer``), and real worker processes play its instances (started when moto
lists an instance, stopped when the node terminates it). SIGTERM under load, start again on the
same DATA_DIR: no task lost, every result right, both workers adopted, no instance launched
again nor terminated. Then the explicit stop (``--stop-workers``) ends them.

Nothing here goes beyond 127.0.0.1: the node reaches moto through AWS_ENDPOINT_URL, the workers
reach the node on loopback, and nobody talks to the addresses moto invents.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import boto3
import pytest
import requests

from provisioning.local_cluster import LocalCluster
from tests.aws_helpers import FAKE_ENV, REGION, worker_launch_setting
from tests.digests import sha512_chain
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

TOKEN = "restart-token"
TASKS = 40
ITERATIONS = 150_000


@pytest.fixture
def moto_server(monkeypatch):
    try:
        import flask_cors  # noqa: F401  (moto's server needs it; moto[ec2,...] does not bring it)
    except ImportError:
        pytest.fail("moto's ThreadedMotoServer needs flask-cors: .venv/bin/python -m pip install -e '.[test]'")
    from moto.server import ThreadedMotoServer

    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def client(endpoint: str, service: str):
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def node_environment(endpoint: str) -> dict[str, str]:
    """What a node's user-data would hold (its worker AMI, subnet, group, profile), made in moto."""
    made = worker_launch_setting(*(client(endpoint, name) for name in ("ec2", "iam", "ssm")), "123456789012")
    return {
        **FAKE_ENV, **made, "AWS_ENDPOINT_URL": endpoint, "LAUNCHER": "ec2", "CLUSTER_TOKEN": TOKEN,
        "TM_DESCRIBE_TTL": "0.5", "TM_LIST_GRACE": "30",
        "MAX_NUM_OF_WORKERS": "2", "SCALE_INTERVAL": "0.2", "SCALE_WAIT": "0.2", "BOOT_TIMEOUT": "120",
        "WORKER_IDLE_SECONDS": "90", "LOG_SUMMARY_SECONDS": "0",
    }


class Instances:
    """Plays EC2's machines: a worker process per instance moto lists for the cluster, stopped
    (SIGTERM, as the power-off would) once moto says the instance is shutting down or terminated."""

    def __init__(self, endpoint: str, node_url: str) -> None:
        self.ec2 = client(endpoint, "ec2")
        self.node_url = node_url
        self.workers: dict[str, subprocess.Popen] = {}
        self.terminated: list[str] = []  # instances the node terminated
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Instances:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            reply = self.ec2.describe_instances(Filters=[{"Name": "tag:tm-cluster", "Values": ["demo"]}])
            for instance in (i for r in reply["Reservations"] for i in r["Instances"]):
                instance_id, state = instance["InstanceId"], instance["State"]["Name"]
                if state in ("pending", "running") and instance_id not in self.workers:
                    self.workers[instance_id] = subprocess.Popen(
                        [sys.executable, "-m", "workerapp", "--worker-id", instance_id, "--idle-seconds", "90",
                         self.node_url], env={**os.environ, "CLUSTER_TOKEN": TOKEN}, stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
                elif state in ("shutting-down", "terminated") and instance_id not in self.terminated:
                    self.terminated.append(instance_id)
                    proc = self.workers.get(instance_id)
                    if proc is not None and proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)


def stats(url: str) -> dict:
    return requests.get(f"{url}/stats", timeout=10).json()


def test_a_restart_under_load_keeps_the_fleet_loses_no_task_and_launches_nothing_again(moto_server, tmp_path):
    env = node_environment(moto_server)
    cluster = LocalCluster(env=env, log_dir=tmp_path / "logs", data_dir=tmp_path / "data", token=TOKEN)
    node = cluster.nodes[0]
    tasks = {}
    try:
        with Instances(moto_server, node.url) as machines:
            cluster.start_node(0)
            cluster.wait_healthy(90, nodes=[node])
            for n in range(TASKS):
                data = b"restart-%d-" % n + os.urandom(8)
                answer = requests.put(f"{node.url}/enqueue", params={"iterations": ITERATIONS}, data=data, timeout=10)
                assert answer.status_code == 201, answer.text
                tasks[answer.json()["id"]] = data
            wait_for(lambda: stats(node.url)["workers"]["live"] == 2 and stats(node.url)["completed"] >= 3,
                     180, interval=0.2, what="two live workers and a few tasks done")
            launched = set(machines.workers)
            assert len(launched) == 2
            cluster.stop_node(0)  # SIGTERM, as systemctl restart sends
            assert machines.terminated == [], "the node's stop terminated its workers"
            assert all(proc.poll() is None for proc in machines.workers.values())
            started_again = time.monotonic()
            cluster.start_node(0)
            cluster.wait_healthy(90, nodes=[node])
            wait_for(lambda: stats(node.url)["completed"] >= TASKS, 240, interval=0.5, what="every task done")
            results = requests.post(f"{node.url}/pullCompleted", params={"top": 1000}, timeout=30).json()
            after = stats(node.url)
            assert set(machines.workers) == launched, "the restarted node launched workers again"
            assert machines.terminated == []
            # the fast engines may finish every task before the restarted node's first reconcile:
            # wait for it to adopt both workers rather than read its log at once
            def adopted() -> int:
                log = node.log_path.read_text(errors="replace")
                restarted = log[log.rindex("scaler started"):]
                return sum(f"worker adopted: {i}" in restarted for i in launched)

            wait_for(lambda: adopted() == 2, 60, interval=0.2, what="both workers adopted by the restarted node")
            assert set(machines.workers) == launched and machines.terminated == []
            assert after["workers"]["launched_total"] == 0  # nothing launched by the second run
            print(f"\nrestart under load: {TASKS} tasks, 2 workers adopted, {len(machines.workers)} instances in all, "
                  f"done {time.monotonic() - started_again:.0f}s after the start")

            ids = [r["id"] for r in results]
            assert len(ids) == len(set(ids)) and set(ids) == set(tasks)  # each once, none lost
            for record in results:
                assert record["result"] == sha512_chain(tasks[record["id"]], ITERATIONS)

            # the explicit stop ends them (with the node's own settings)
            cluster.stop_node(0)
            stop = subprocess.run([sys.executable, "-m", "provisioning.ec2_launcher", "--stop-workers"],
                                  env={**os.environ, **env, "NODE_NAME": node.name}, capture_output=True, text=True,
                                  timeout=60)
            assert stop.returncode == 0, stop.stderr
            wait_for(lambda: sorted(machines.terminated) == sorted(launched), 30, what="both instances terminated")
            wait_for(lambda: all(p.poll() is not None for p in machines.workers.values()), 60,
                     what="the workers to stop with their machines")
    finally:
        cluster.stop()
