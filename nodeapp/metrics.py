"""``GET /metrics``: the figures of ``/stats`` in Prometheus text format, read at scrape time,
and histograms of task wait, run and end-to-end times and of request latency by endpoint."""

from __future__ import annotations

import time
from http import HTTPStatus
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class StatsCollector:
    """A custom collector: no metric object is updated on the hot path, stats are read on scrape."""

    def __init__(self, read_stats: Callable[[], dict], node: str) -> None:
        self._read_stats = read_stats
        self._node = node

    def collect(self):
        s = self._read_stats()
        labels = ["node"]
        value = [self._node]

        def gauge(name: str, doc: str, v: float):
            g = GaugeMetricFamily(f"taskmanager_{name}", doc, labels=labels)
            g.add_metric(value, v)
            return g

        def counter(name: str, doc: str, v: float):
            c = CounterMetricFamily(f"taskmanager_{name}", doc, labels=labels)
            c.add_metric(value, v)
            return c

        yield gauge("queued_tasks", "Tasks waiting in the queue", s["queued"])
        priorities = GaugeMetricFamily("taskmanager_queued_tasks_by_priority", "Ready tasks waiting, per priority",
                                       labels=["node", "priority"])
        for priority, count in s.get("queued_by_priority", {}).items():
            priorities.add_metric([self._node, str(priority)], count)
        yield priorities
        yield gauge("scheduled_tasks", "Queued tasks whose not_before is still ahead", s.get("scheduled", 0))
        yield counter("tasks_expired", "Queued tasks failed at their deadline", s.get("expired", 0))
        yield gauge("intake_paused", "1 while the operator has paused intake", 1 if s.get("intake", {}).get("paused") else 0)
        yield gauge("queued_iterations", "Declared iterations of the waiting tasks", s["queued_iterations"])
        yield gauge("running_tasks", "Tasks leased to a worker", s["running"])
        yield gauge("body_bytes", "Bytes of task bodies held (queued and running tasks)", s["body_bytes"])
        yield gauge("results_kept", "Completed results kept for pullCompleted/status", s["results_kept"])
        yield counter("tasks_enqueued", "Tasks accepted by this node", s["enqueued"])
        yield counter("tasks_completed", "Tasks of this node completed", s["completed"])
        yield counter("tasks_failed", "Tasks failed after MAX_ATTEMPTS lost leases", s["failed"])
        yield counter("enqueue_rejected", "Enqueues refused with queue_full", s["rejected_queue_full"])
        yield counter("leases_expired", "Leases that ran out", s["leases_expired"])
        yield counter("tasks_reused", "Tasks completed from an identical task's result or run, without a run "
                      "of their own", s["reused"])
        yield counter("tasks_cancelled", "Tasks cancelled by a client", s["cancelled"])
        yield counter("tasks_retried", "Failed or cancelled tasks queued again by a client", s["retried"])
        yield counter("idempotent_replays", "Enqueued tasks whose Idempotency-Key was known: nothing queued",
                      s["idempotent_replays"])
        keys = s["idempotency_keys"]
        yield gauge("idempotency_keys_kept", "Idempotency-Keys remembered", keys["kept"])
        yield gauge("idempotency_keys_bytes", "Bytes the remembered Idempotency-Keys count for", keys["bytes"])
        yield gauge("idempotency_keys_max_bytes", "IDEMPOTENCY_KEYS_BYTES", keys["max_bytes"])
        yield counter("idempotency_keys_dropped", "Idempotency-Keys forgotten early to stay within "
                      "IDEMPOTENCY_KEYS_BYTES", keys["dropped"])
        yield gauge("tasks_waiting_on_peer", "Tasks waiting for an identical task's run on the peer, in no queue",
                    s["waiting_on_peer"])
        w = s["workers"]
        yield gauge("workers_live", "Workers that have claimed at least once", w["live"])
        yield gauge("workers_pending", "Workers launched but not yet seen", w["pending"])
        yield gauge("workers_max", "Current worker maximum (own quota - lent + borrowed)", w["max"])
        yield counter("workers_launched", "Workers launched by this node", w["launched_total"])
        yield gauge("quota_lent", "Worker slots lent to the peer", s["quota"]["lent"])
        yield gauge("quota_borrowed", "Worker slots borrowed from the peer", s["quota"]["borrowed"])
        c = s["checks"]
        yield counter("checks", "Results spot-checked (recomputed) by this node", c["checks"])
        yield counter("check_iterations", "Iterations spent recomputing spot-checked results", c["iterations"])
        yield counter("check_mismatches", "Spot-checked results that did not match", c["mismatches"])
        yield counter("checks_skipped", "Results picked for a check but accepted unchecked (backlog full)",
                      c["skipped"])
        yield gauge("checks_pending", "Results held while their spot-check waits or runs", c["pending"])
        yield counter("workers_quarantined", "Workers quarantined after a wrong result", c["quarantined"])
        yield counter("results_rerun", "Unchecked results of quarantined workers taken back to compute again",
                      c["rerun"])
        reachable = s["peer"]["reachable"]
        yield gauge("peer_reachable", "1 if the last call to the peer succeeded", 1 if reachable else 0)


#: Task times span milliseconds (a one-iteration task) to hours (a task of 10^10 iterations).
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
#: A node answers in about a millisecond; a call that waits on the peer gives up within 2 s.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Request labels come from closed sets, so that made-up methods or paths add no series: a method
#: not here is ``other``, a path no route matches is ``(no route)``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
#: Statuses a label may name (those of ``http.HTTPStatus``); any other (a peer's) is ``other``.
STATUS_LABELS = {s.value: str(s.value) for s in HTTPStatus}
#: The environ key of a request's start time (``perf_counter``).
STARTED = "nodeapp.started"


class TaskTimings:
    """What ``TaskStore`` reports (``tasks.timings``): a task's wait (enqueued -> first claimed),
    its run (claimed -> result accepted) and its end-to-end time (enqueued -> result accepted)."""

    def __init__(self, registry: CollectorRegistry, node: str) -> None:
        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(f"taskmanager_task_{name}_seconds", doc, ["node"], registry=registry,
                             buckets=TASK_BUCKETS).labels(node)

        self.waited = histogram("wait", "Seconds from enqueue to a worker's first claim of the task").observe
        self.ran = histogram("run", "Seconds from the claim to the accepted result (the last lease)").observe
        self.finished = histogram("latency", "Seconds from enqueue to the accepted result, for tasks a worker "
                                  "ran").observe


class Metrics:
    """A registry of this app's own (no global registry, so tests can build many apps)."""

    def __init__(self, read_stats: Callable[[], dict], node: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(read_stats, node))
        self.task_timings = TaskTimings(self.registry, node)
        self._node = node
        self._requests = Histogram("taskmanager_http_request_duration_seconds",
                                   "Seconds to answer an HTTP request, by route (Flask's URL rule), method "
                                   "(other for an unknown one) and status", ["node", "endpoint", "method", "status"], registry=self.registry,
                                   buckets=REQUEST_BUCKETS)
        # Each label set's histogram, found once (``labels()`` takes a lock and builds the key
        # each time); keyed by the labels themselves, so bounded as the series are.
        self._observers: dict[tuple[str, str, str], Callable[[float], None]] = {}

    @staticmethod
    def started(environ: dict) -> None:
        """A request starts (the app's first ``before_request`` hook, given the request's environ)."""
        environ[STARTED] = time.perf_counter()

    def answered(self, response, request):
        """A request is answered (its last ``after_request`` hook, given the request, not the proxy
        ``flask.request``, whose every attribute costs a lookup): its time goes to the histogram."""
        started = request.environ.pop(STARTED, None)
        if started is not None:
            seconds = time.perf_counter() - started
            url_rule, method = request.url_rule, request.method
            labels = (url_rule.rule if url_rule is not None else "(no route)", method if method in METHODS else "other",
                      STATUS_LABELS.get(response.status_code, "other"))
            observe = self._observers.get(labels)
            if observe is None:
                observe = self._observers.setdefault(labels, self._requests.labels(self._node, *labels).observe)
            observe(seconds)
        return response

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
