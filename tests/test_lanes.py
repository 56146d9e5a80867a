"""Every core: worker lanes, the rate a worker reports when it claims and what the node does with it
(claim budget, /stats, the scaler's sizing), and the local launcher's cap at the CPU count."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures.process import BrokenProcessPool
from types import SimpleNamespace

import pytest
import requests

from nodeapp import create_app
from nodeapp.node import Node
from nodeapp.fleet.peer import PeerClient
from nodeapp.fleet.scaling import Scaler
from nodeapp.fleet.pool import Report, WorkerPool
from provisioning.artifacts import build_wheel
from provisioning.launchers import LocalProcessLauncher
from provisioning.local_cluster import free_port
from tests.conftest import TOKEN
from tests.helpers import Clock, FakeLauncher, running_cluster, wait_for
from tests.test_engine import reference
from tmcommon.cpus import cpu_model
from workerapp import engine, lanes
from workerapp.client import NodeClient
from workerapp.worker import Worker


# ----------------------------------------------------------- node: reports
def claim(client, auth, **fields):
    return client.post("/claim", json={"worker_id": "w1", "max_tasks": 10, **fields}, headers=auth)


@pytest.mark.parametrize("fields", [
    {"rate": "fast"}, {"rate": 0}, {"rate": -5.0}, {"rate": True}, {"rate": 1e13}, {"rate": None},
    {"rate": 1e6, "engine": "Native!"}, {"rate": 1e6, "engine": ""}, {"rate": 1e6, "engine": 7},
    {"rate": 1e6, "lanes": 0}, {"rate": 1e6, "lanes": 1.5}, {"rate": 1e6, "lanes": 10_000},
    {"rate": 1e6, "kernel": "AVX2"}, {"rate": 1e6, "kernel": ""}, {"rate": 1e6, "kernel": ["avx2"]},
])
def test_a_malformed_report_is_refused_and_claims_nothing(app, client, auth, fields):
    client.put("/enqueue?iterations=1", data=b"x")
    response = claim(client, auth, **fields)
    assert response.status_code == 400 and response.get_json()["error"] == "bad_request"
    assert client.get("/stats").get_json()["queued"] == 1
    assert app.extensions["nodeapp"].node.workers.worker_rate(123.0) == 123.0


def test_reported_rate_sizes_the_claim_and_shows_in_stats(app, client, auth):
    ctx = app.extensions["nodeapp"]
    ctx.node.workers.add(["w1"])
    for i in range(4):
        client.put("/enqueue?iterations=400000", data=b"x%d" % i)
    # HASH_RATE (500,000/s) x CLAIM_SECONDS (1) allows one such task; the reported rate allows more.
    assert len(claim(client, auth).get_json()["tasks"]) == 1
    body = claim(client, auth, rate=1_000_000, engine="native", kernel="avx2", lanes=2).get_json()
    assert len(body["tasks"]) == 2
    stats = client.get("/stats").get_json()
    assert stats["workers"]["each"] == [{"id": "w1", "state": "live", "borrowed": False, "engine": "native",
                                         "kernel": "avx2", "lanes": 2, "rate": 1_000_000.0}]
    (shown,) = client.get("/dashboard/data").get_json()["workers"]
    assert (shown["id"], shown["engine"], shown["kernel"]) == ("w1", "native", "avx2")
    claim(client, auth, rate=1_000_000, engine="python")  # the hashlib loop has no kernel
    assert client.get("/stats").get_json()["workers"]["each"][0]["kernel"] is None
    assert stats["scaler"]["worker_rate"] == 1_000_000.0


def test_worker_rate_is_the_median_of_recent_workers_else_the_setting():
    pool = WorkerPool(rates_kept=3)
    assert pool.worker_rate(500_000.0) == 500_000.0
    for worker_id, rate in [("a", 1e6), ("b", 3e6), ("c", 2e6), ("a", 9e6), ("d", 4e6)]:
        pool.seen(worker_id, Report(rate, "native", 1))  # unregistered ones (the peer's) count too
    assert pool.worker_rate(500_000.0) == 4e6  # kept: c 2e6, a 9e6, d 4e6 (b was the oldest)
    assert pool.workers() == []


def test_scaler_sizes_the_fleet_from_reported_rates():
    clock = Clock()
    node = Node.build(max_workers=10, monotonic=clock, wall=clock)
    launcher = FakeLauncher()
    scaler = Scaler(node, launcher, PeerClient("", TOKEN), node_url="http://127.0.0.1:1", scale_wait=1.0,
                    hash_rate=500_000, boot_timeout=30, monotonic=clock, wall=clock)
    for _ in range(8):
        node.tasks.submit(b"x", 1_000_000)
    node.workers.seen("elsewhere", Report(4_000_000, "native", 2))  # 8 M iterations: 2 s at 4 M/s
    scaler.tick()
    assert len(launcher.launched) == 2  # at the setting's 500,000/s: 8, one per task


# ------------------------------------------------------------ worker lanes
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster({"MAX_NUM_OF_WORKERS": "0"}, tmp_path_factory.mktemp("lanes-cluster")) as cluster:
        yield cluster


@pytest.mark.integration
def test_two_lanes_compute_at_once_and_report_their_rate(cluster):
    url = cluster.urls[0]
    tasks = {requests.put(f"{url}/enqueue", params={"iterations": n}, data=b"l%d" % i, timeout=5).json()["id"]:
             (b"l%d" % i, n) for i, n in enumerate([50_000] * 6 + [1, 2, 3])}
    both = threading.Barrier(2, timeout=20)  # passes only if two lanes compute at the same time
    threads = set()

    def compute(data: bytes, iterations: int) -> str:
        if threading.current_thread().name not in threads:
            threads.add(threading.current_thread().name)
            both.wait()
        return engine.PYTHON.compute(data, iterations)

    client = NodeClient(url, cluster.token, "w-lanes")
    worker = Worker([client], idle_seconds=0.5, hash_rate=100_000, lanes=2, compute_fn=compute, engine="python")
    assert worker.run() == 0
    assert threads == {"lane-0", "lane-1"} and not both.broken
    assert worker.completed == len(tasks)
    for task_id, (data, iterations) in tasks.items():
        assert requests.get(f"{url}/status/{task_id}", timeout=5).json()["result"] == reference(data, iterations)
    assert client.report == {"rate": 200_000, "engine": "python", "lanes": 2, "cpu": cpu_model(), "spot": False}
    assert requests.get(f"{url}/stats", timeout=5).json()["scaler"]["worker_rate"] >= 200_000


def test_measure_lanes_runs_every_lane():
    per_lane, total = lanes.measure_lanes(engine.PYTHON.compute, 2, seconds=0.02)
    assert 0 < per_lane <= total and total >= 2 * per_lane * 0.99


def test_process_compute_gives_the_same_digests():
    compute = lanes.lane_compute(engine.PYTHON, 2)
    try:
        assert isinstance(compute, lanes.ProcessCompute)
        assert compute(b"abc", 1000) == reference(b"abc", 1000)
    finally:
        compute.close()
    assert lanes.lane_compute(engine.PYTHON, 1) is engine.PYTHON.compute


def test_process_compute_close_waits_for_its_processes_bounded():
    compute = lanes.lane_compute(engine.PYTHON, 2)
    processes = list(compute._pool._processes.values())
    assert len(processes) == 2 and all(p.is_alive() for p in processes)
    compute.close()  # nothing in progress: the processes end at once
    assert not any(p.is_alive() for p in processes)

    compute = lanes.lane_compute(engine.PYTHON, 2)
    processes = list(compute._pool._processes.values())
    outcome = []

    def endless():  # ~10^10 hashes: hours in the hashlib loop
        try:
            outcome.append(compute(b"long", 10**10))
        except Exception as exc:
            outcome.append(exc)

    before = {p.pid: cpu_seconds(p.pid) for p in processes}  # their start-up is done (lane_compute warms them)
    lane = threading.Thread(target=endless)
    lane.start()
    wait_for(lambda: any(cpu_seconds(p.pid) - before[p.pid] > 0.2 for p in processes), 30,
             what="the long call to run in a process")
    started = time.monotonic()
    compute.close(timeout=1)  # the call in progress gets 1 s, then its process is killed
    assert time.monotonic() - started < 30  # bounded (1 s plus the pool's teardown, on a loaded machine)
    assert not any(p.is_alive() for p in processes)
    lane.join(timeout=30)
    assert not lane.is_alive() and isinstance(outcome[0], BrokenProcessPool)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_lanes_option():
    assert lanes.parse_lanes("3") == 3
    assert lanes.parse_lanes("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(Exception, match="expected a number >= 1 or 'auto'"):
            lanes.parse_lanes(bad)


@pytest.mark.integration
def test_a_launched_worker_shows_its_engine_and_rate_in_stats(tmp_path):
    with running_cluster({"MAX_NUM_OF_WORKERS": "1", "SCALE_INTERVAL": "0.2", "SCALE_WAIT": "0.2",
                          "WORKER_IDLE_SECONDS": "5"}, tmp_path) as cluster:
        url = cluster.urls[0]
        requests.put(f"{url}/enqueue", params={"iterations": 10}, data=b"x", timeout=5)
        each = wait_for(lambda: [w for w in requests.get(f"{url}/stats", timeout=5).json()["workers"]["each"]
                                 if w["rate"]], 60, what="a live worker with its report")
        expected = engine.select_engine(os.environ)  # what the launched worker picks (it gets this environment)
        assert (each[0]["engine"], each[0]["kernel"]) == (expected.name, expected.kernel or None)
        assert each[0]["lanes"] == 1 and each[0]["rate"] > 1000
        assert expected.name == ("native" if importlib.util.find_spec("workerapp._native") else "python")


# -------------------------------------------------------- local launcher cap
@pytest.mark.integration
def test_local_launcher_runs_at_most_its_cap(tmp_path):
    launcher = LocalProcessLauncher(token=TOKEN, idle_seconds=60, max_running=2)
    urls = [f"http://127.0.0.1:{free_port()}"]  # nobody there: the workers just wait
    try:
        first = launcher.launch(3, urls)
        assert len(first) == 2 and launcher.launch(1, urls) == []
        launcher.terminate(first[:1])
        wait_for(lambda: len(launcher.running()) == 1, 30, what="the stopped worker to exit")
        assert len(launcher.launch(5, urls)) == 1
    finally:
        launcher.stop_all()


def test_local_launcher_cap_defaults_to_the_cpus_and_can_be_set(monkeypatch):
    monkeypatch.delenv("TM_LOCAL_MAX_WORKERS", raising=False)
    assert LocalProcessLauncher(token=TOKEN, idle_seconds=1)._max_running == len(os.sched_getaffinity(0))
    monkeypatch.setenv("TM_LOCAL_MAX_WORKERS", "7")
    assert LocalProcessLauncher(token=TOKEN, idle_seconds=1)._max_running == 7
    monkeypatch.setenv("TM_LOCAL_MAX_WORKERS", "lots")
    with pytest.raises(ValueError, match="TM_LOCAL_MAX_WORKERS='lots'"):
        create_app({"cluster_token": TOKEN, "node_url": "http://127.0.0.1:1"})


# ------------------------------------------------------- delivery to EC2
@pytest.mark.integration
def test_the_delivered_wheel_compiles_its_engine_where_it_is_installed(tmp_path, wheelhouse):
    """What a worker's user-data does: the pure wheel carries the C source, native_build compiles it."""
    wheel = build_wheel(tmp_path / "dist")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel.path).extractall(site)  # what pip does with a pure wheel
    assert (site / "workerapp/_sha512chain.c").is_file() and not list(site.glob("workerapp/_native*"))
    done = subprocess.run([sys.executable, "-m", "workerapp.native_build"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    assert "engine native" in done.stdout
    assert list(site.glob("workerapp/_native*.so"))


@pytest.mark.integration
def test_a_worker_process_with_lanes_on_the_hashlib_loop_uses_a_process_pool(cluster, tmp_path):
    """``python -m workerapp --lanes 2`` with the Python engine: the chains run in two processes."""
    from tests.test_engine import run_worker

    log = run_worker(cluster, tmp_path, "w-pool", {engine.ENV: "python"}, args=("--lanes", "2"))
    assert "2 lane(s), python engine" in log and "Traceback" not in log


def test_the_local_cap_counts_the_workers_an_earlier_app_process_of_the_node_left_running():
    """gunicorn restarts a killed app process; the workers it had started run on in the node's
    process group and claim from the new one, so the new launcher has room only for the rest."""
    assert LocalProcessLauncher(token=TOKEN, idle_seconds=1, node_name="capnode", max_running=3).room() == 3
    left = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "workerapp", "--worker-id",
                              f"local-capnode-1-{i}"]) for i in range(2)]  # as an earlier app process started them
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "workerapp", "--worker-id",
                              "local-othernode-1-1"])  # another node's: not counted
    launcher = LocalProcessLauncher(token=TOKEN, idle_seconds=1, node_name="capnode", max_running=3)  # the new one
    try:
        assert launcher.room() == 1  # the two running workers counted
        assert len(launcher.launch(3, [f"http://127.0.0.1:{free_port()}"])) == 1  # one, not three
    finally:
        launcher.stop_all(grace=1.0)
        for proc in [*left, other]:
            proc.kill()
            proc.wait()
    wait_for(lambda: launcher.room() == 3, 10, what="room again once they are gone")


def test_the_rate_is_per_second_of_the_lanes_own_cpu_time(monkeypatch):
    """A busy machine (here: a wall clock that moves a whole second while the lane hashes 2,000
    iterations, as when other processes hold the core) does not make the measured rate too low."""
    wall = iter(range(10**9))
    monkeypatch.setattr(lanes, "time", SimpleNamespace(perf_counter=lambda: float(next(wall)),
                                                       thread_time=time.thread_time))
    per_lane, total = lanes.measure_lanes(engine.PYTHON.compute, 1, seconds=0.02)
    assert per_lane == total > 100_000  # by the wall clock above: 2,000 iterations/s
