"""Runs RQ or Celery on the benchmark's workloads; started by bench/e2e.py in bench/.venv-peers.

    bench/.venv-peers/bin/python -m bench.peers --system rq|rq-simple|celery --redis-url URL \
        --workloads small,compute,mixed [--scale 1] [--clients 8] --json-out FILE

Starts 2 worker processes (RQ's default Worker or its SimpleWorker, two of them; or one Celery
prefork worker with concurrency 2 and acks_late), warms them up, then for each workload:
enqueues every task from ``--clients`` threads, waits for the last result, fetches and checks
every result. Time runs from the first enqueue to the last completion the system recorded.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone

import redis

from bench.common import BENCH_DIR, ROOT, cpu_seconds, descendants, runqueue_wait_seconds, wait_until
from bench.workloads import by_name, run_workload

QUEUE = "bench"
RQ_CLASSES = {"rq": "rq.worker.Worker", "rq-simple": "rq.worker.SimpleWorker"}


def _epoch(value) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


class RqSystem:
    def __init__(self, kind: str, redis_url: str, log, redis_pid: int = 0) -> None:
        from rq import Queue, Worker

        self.redis_pid = redis_pid
        self.conn = redis.Redis.from_url(redis_url)
        self.queue = Queue(QUEUE, connection=self.conn)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        rq = [str(BENCH_DIR / ".venv-peers" / "bin" / "rq"), "worker", "--url", redis_url, "--quiet",
              "--disable-job-desc-logging", "--worker-class", RQ_CLASSES[kind], QUEUE]
        self.procs = [subprocess.Popen(rq + ["--name", f"bench-{kind}-{i}"], cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True) for i in range(2)]
        wait_until(lambda: Worker.count(connection=self.conn) == 2, 60, what="2 RQ workers")

    def cpu(self) -> dict[str, float]:
        return {"workers": sum(cpu_seconds(pid) for proc in self.procs for pid in descendants(proc.pid)),
                "redis": cpu_seconds(self.redis_pid)}

    def runqueue_wait(self) -> dict[str, float]:
        return {"workers": sum(runqueue_wait_seconds(pid) for proc in self.procs for pid in descendants(proc.pid))}

    def done_count(self) -> int:
        return self.queue.finished_job_registry.count

    def failed_count(self) -> int:
        return self.queue.failed_job_registry.count

    def make_submit(self, t: int):
        def submit(i: int, body: bytes, iterations: int) -> str:
            return self.queue.enqueue("bench.peer_tasks.run", body, iterations).id
        return submit

    def results(self, ids: list[str]) -> tuple[list[str | None], float]:
        from rq.job import Job

        jobs = Job.fetch_many(ids, connection=self.conn)
        results = [job.return_value() if job else None for job in jobs]
        last = max(_epoch(job.ended_at) for job in jobs if job and job.ended_at)
        return results, last

    def stop(self) -> None:
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class CelerySystem:
    def __init__(self, redis_url: str, log, redis_pid: int = 0) -> None:
        from bench.celery_app import make_app

        self.redis_pid = redis_pid
        self.app = make_app(redis_url)
        self.backend = redis.Redis.from_url(f"{redis_url}/1")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.celery_app", redis_url], cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def cpu(self) -> dict[str, float]:
        return {"workers": sum(cpu_seconds(pid) for pid in descendants(self.proc.pid)),
                "redis": cpu_seconds(self.redis_pid)}

    def runqueue_wait(self) -> dict[str, float]:
        return {"workers": sum(runqueue_wait_seconds(pid) for pid in descendants(self.proc.pid))}

    def done_count(self) -> int:
        return self.backend.dbsize()

    def failed_count(self) -> int:
        return 0  # failures show up as results with status FAILURE, counted as wrong

    def make_submit(self, t: int):
        from bench.celery_app import TASK_NAME

        def submit(i: int, body: bytes, iterations: int) -> str:
            return self.app.send_task(TASK_NAME, args=[base64.b64encode(body).decode(), iterations]).id
        return submit

    def results(self, ids: list[str]) -> tuple[list[str | None], float]:
        metas = [json.loads(raw) if raw else None for raw in self.backend.mget([f"celery-task-meta-{i}" for i in ids])]
        results = [m["result"] if m and m.get("status") == "SUCCESS" else None for m in metas]
        last = max(_epoch(m["date_done"]) for m in metas if m)
        return results, last

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", choices=("rq", "rq-simple", "celery"), required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--workloads", default="small,compute,mixed")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--log", default=os.devnull)
    parser.add_argument("--redis-pid", type=int, default=0, help="for its CPU seconds")
    parser.add_argument("--json-out", required=True)
    args = parser.parse_args(argv)
    workloads = by_name(args.scale)
    with open(args.log, "ab") as log:
        system = RqSystem(args.system, args.redis_url, log, args.redis_pid) if args.system.startswith("rq") \
            else CelerySystem(args.redis_url, log, args.redis_pid)
        try:
            warm = by_name(0.001)["small"]  # a couple of tiny tasks: workers up and code imported
            run_workload(system, warm, 1, 120)
            out = [run_workload(system, workloads[name], args.clients, args.timeout)
                   for name in args.workloads.split(",")]
        finally:
            system.stop()
    with open(args.json_out, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
