"""``GET /metrics``: the figures of ``/stats`` in Prometheus text format, read at scrape time."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
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
        yield gauge("queued_iterations", "Declared iterations of the waiting tasks", s["queued_iterations"])
        yield gauge("running_tasks", "Tasks leased to a worker", s["running"])
        yield gauge("results_kept", "Completed results kept for pullCompleted/status", s["results_kept"])
        yield counter("tasks_enqueued", "Tasks accepted by this node", s["enqueued"])
        yield counter("tasks_completed", "Tasks of this node completed", s["completed"])
        yield counter("tasks_failed", "Tasks failed after MAX_ATTEMPTS lost leases", s["failed"])
        yield counter("enqueue_rejected", "Enqueues refused with queue_full", s["rejected_queue_full"])
        yield counter("leases_expired", "Leases that ran out", s["leases_expired"])
        w = s["workers"]
        yield gauge("workers_live", "Workers that have claimed at least once", w["live"])
        yield gauge("workers_pending", "Workers launched but not yet seen", w["pending"])
        yield gauge("workers_max", "Current worker maximum (own quota - lent + borrowed)", w["max"])
        yield counter("workers_launched", "Workers launched by this node", w["launched_total"])
        yield gauge("quota_lent", "Worker slots lent to the peer", s["quota"]["lent"])
        yield gauge("quota_borrowed", "Worker slots borrowed from the peer", s["quota"]["borrowed"])
        reachable = s["peer"]["reachable"]
        yield gauge("peer_reachable", "1 if the last call to the peer succeeded", 1 if reachable else 0)


class Metrics:
    """A registry of this app's own (no global registry, so tests can build many apps)."""

    def __init__(self, read_stats: Callable[[], dict], node: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(read_stats, node))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
