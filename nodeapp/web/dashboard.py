"""The dashboard: ``GET /`` is a self-refreshing page, ``GET /dashboard/data`` the JSON it polls,
``GET /dashboard/history`` its chart of the last hour.

The JSON covers the whole cluster: this node's figures and, fetched server-side, its peer's
(a browser may not reach the peer's private address). Only figures, task ids, results, reasons,
workers and scaling decisions go out, picked field by field: never a token, never a task body.
A node's own part is public too: ``GET /history`` (its samples) and ``GET /dashboard/node`` (its
workers and failed tasks), which the peer's dashboard asks for. The page's cancel and retry
buttons call the public ``POST /cancel/<id>`` and ``POST /retry/<id>`` (see ``nodeapp/web/origin.py``).
"""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, render_template

from nodeapp.store.queue import PRIORITY_MAX, PRIORITY_MIN
from nodeapp.context import NodeContext, get_context
from nodeapp.history import POINTS, SUMMED, merge
from nodeapp.store.results import merge_newest, summary
from nodeapp.web.listing import listing
from nodeapp.web.views import node_stats
from nodeapp.web import peer_answers
from nodeapp.web.peer_answers import (TEXT_MAX, BadPeerAnswer, count, flag, mapping, number, objects,
                                      text)

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard/static")

#: Results and scaling decisions the page lists.
NEWEST = 10
#: Failed (or cancelled) tasks and workers the page lists.
FAILED_SHOWN, WORKERS_SHOWN = 20, 100
_COUNTS = ("queued", "running", "completed", "failed", "enqueued")
_CHECK_COUNTS = ("checks", "mismatches", "iterations", "quarantined")
#: The priorities a node reports its queue by (nodeapp/store/queue.py).
PRIORITIES = frozenset(str(p) for p in range(PRIORITY_MIN, PRIORITY_MAX + 1))
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def node_view(stats: dict, url: str | None, path: str = "/stats") -> dict:
    """The figures of one node's ``/stats`` that the page shows (``BadPeerAnswer`` if malformed)."""
    stats = mapping(stats, path, "the answer")
    workers, quota = mapping(stats.get("workers"), path, "workers"), mapping(stats.get("quota"), path, "quota")
    peer = mapping(stats.get("peer"), path, "peer")
    return {
        "node": text(stats.get("node"), path, "node") or url or "",
        "url": url,
        "reachable": True,
        **{key: count(stats.get(key), path, key) for key in _COUNTS},
        "workers": {**{key: count(workers.get(key), path, f"workers.{key}") for key in ("live", "pending", "max")},
                    "capacity": count(workers.get("capacity", workers.get("max")), path, "workers.capacity"),
                    "capacity_why": text(workers.get("capacity_why"), path, "workers.capacity_why") or ""},
        "quota": {key: count(quota.get(key), path, f"quota.{key}") for key in ("lent", "borrowed")},
        "draining": bool(flag(stats.get("draining"), path, "draining")),
        "paused": bool(flag(mapping(stats.get("intake"), path, "intake").get("paused"), path, "intake.paused")),
        "scheduled": count(stats.get("scheduled"), path, "scheduled"),
        # ready tasks per priority, highest first: {"9": 3, "0": 12}
        "by_priority": {str(p): count(n, path, f"queued_by_priority.{p}")
                        for p, n in list(mapping(stats.get("queued_by_priority"), path, "queued_by_priority").items())[:10]
                        if str(p) in PRIORITIES},
        "peer_reachable": flag(peer.get("reachable"), path, "peer.reachable"),
        "checks": {key: count(mapping(stats.get("checks"), path, "checks").get(key), path, f"checks.{key}")
                   for key in _CHECK_COUNTS},
    }


def decision_view(decision: dict, node: str, path: str = "/stats") -> dict:
    figures = mapping(decision.get("figures"), path, "figures")
    notes = decision.get("notes") or []
    if not isinstance(notes, list):
        raise BadPeerAnswer(path, "has notes that are not a list")
    parts = [text(decision.get("reason") or "", path, "reason"), *(text(n, path, "note") for n in notes)]
    return {
        "at": number(decision.get("at"), path, "at"),
        "node": node,
        "reason": "; ".join(part for part in parts if part is not None)[:TEXT_MAX],
        "launched": count(decision.get("launched"), path, "launched"),
        "borrowed": count(decision.get("borrowed"), path, "borrowed"),
        "queued": None if figures.get("queued") is None else count(figures["queued"], path, "queued"),
        "workers": workers_text(figures, path),
    }


def workers_text(figures: dict, path: str = "/stats") -> str:
    """A decision's workers at that moment: live+pending/capacity, and the quota where it was higher."""
    quota = count(figures.get("max_workers"), path, "max_workers")
    capacity = quota if figures.get("capacity") is None else count(figures["capacity"], path, "capacity")
    live, pending = (count(figures.get(key), path, key) for key in ("live", "pending"))
    return f"{live}+{pending}/{capacity}" + (f" (max {quota})" if capacity < quota else "")


def result_view(result: dict) -> dict:
    return {key: result.get(key) for key in ("id", "iterations", "completed_at", "result")}


def progress_view(item: dict, node: str, path: str = "/stats") -> dict:
    """A long task in progress, without its id (whoever knows it may cancel the task)."""
    done, total = count(item.get("done"), path, "done"), count(item.get("iterations"), path, "iterations")
    return {"node": node, "done": done, "iterations": total,
            "percent": round(100 * done / total, 1) if total else 0.0}


def worker_view(worker, now: float) -> dict:
    report = getattr(worker, "report", None)  # what the worker said of itself in its first claim
    return {"id": worker.id, "state": worker.state, "borrowed": worker.borrowed,
            "engine": getattr(report, "engine", None), "kernel": getattr(report, "kernel", None) or None,
            "last_seen_ago": round(now - worker.last_seen, 1) if worker.last_seen is not None else None}


def own_part(ctx: NodeContext) -> dict:
    """This node's workers and newest failed or cancelled tasks (``GET /dashboard/node``)."""
    now = time.monotonic()  # the clock of Worker.last_seen
    failed = [{"id": r.id, "state": r.state, "iterations": r.iterations, "at": r.completed_at, "reason": r.reason}
              for r in ctx.node.tasks.results.newest_failed(FAILED_SHOWN)]
    return {"node": ctx.config.node_name,
            "workers": [worker_view(w, now) for w in ctx.node.workers.workers()[:WORKERS_SHOWN]],
            "failed": failed}


def when(at) -> float:
    """A time for sorting (0 if there is none)."""
    return at if isinstance(at, (int, float)) else 0.0


def worker_row(item: dict, node: str, path: str = "/dashboard/node") -> dict:
    return {"node": node, "id": text(item.get("id"), path, "id", optional=False), "state": text(item.get("state"), path,
            "state"), "borrowed": bool(flag(item.get("borrowed"), path, "borrowed")),
            "engine": text(item.get("engine"), path, "engine"), "kernel": text(item.get("kernel"), path, "kernel"),
            "last_seen_ago": number(item.get("last_seen_ago"), path, "last_seen_ago")}


def caught_row(item: dict, node: str, path: str = "/stats") -> dict:
    """A quarantined worker of ``/stats`` (``checks.quarantine``)."""
    return {"node": node, "at": number(item.get("at"), path, "at"), "worker": text(item.get("worker"), path, "worker"),
            **{key: text(item.get(key), path, key) for key in ("engine", "cpu", "launcher", "task", "reason", "by")},
            "rerun": count(item.get("rerun"), path, "rerun")}


def caught_once(rows: list[dict]) -> list[dict]:
    """A worker both nodes list (each quarantines those the other caught): the row of the node
    that caught it, unless only the other one answered."""
    kept: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: r["by"] is not None):
        kept.setdefault(row["worker"], row)
    return list(kept.values())


def failed_row(item: dict, node: str, path: str = "/dashboard/node") -> dict:
    return {"node": node, **peer_answers.failed_task(item, path)}


def decision_row(item: dict, node: str, path: str = "/history") -> dict:
    """A decision of ``GET /history`` (already in the form of ``decision_view``)."""
    return {"at": number(item.get("at"), path, "at"), "node": node, "reason": text(item.get("reason"), path, "reason"),
            "launched": count(item.get("launched"), path, "launched"),
            "borrowed": count(item.get("borrowed"), path, "borrowed"),
            "queued": None if item.get("queued") is None else count(item["queued"], path, "queued"),
            "workers": text(item.get("workers"), path, "workers")}


def point_row(item: dict, path: str = "/history") -> dict:
    """A sample of ``GET /history``."""
    out = {"at": number(item.get("at"), path, "at", optional=False)}
    out.update((key, number(item.get(key), path, key)) for key in SUMMED)
    out.update((key, count(item.get(key), path, key)) for key in ("completed", "failed"))
    out["peer_reachable"] = flag(item.get("peer_reachable"), path, "peer_reachable")
    return out


class Problems(list):
    """What was wrong with the peer's answers; ``checked(read)`` is ``read()``, or None when it
    raised ``BadPeerAnswer`` (kept here and logged by the peer client)."""

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__()
        self._ctx = ctx

    def checked(self, read):
        try:
            return read()
        except BadPeerAnswer as exc:
            self.append(str(exc))
            self._ctx.peer.bad_answer(str(exc))
            return None


def cluster_view() -> dict:
    """This node and its peer, their totals, newest results, failed tasks, workers and last
    scaling decisions. A peer's part that is malformed is left out, and its node says why."""
    ctx = get_context()
    own = node_stats(ctx)
    nodes = [node_view(own, ctx.config.node_url or None)]
    decisions = [decision_view(d, nodes[0]["node"]) for d in own["scaler"]["decisions"]]
    in_progress = [progress_view(p, nodes[0]["node"]) for p in own.get("in_progress", [])]
    results = [summary(r) for r in ctx.node.tasks.results.newest_completed(NEWEST)]
    part = own_part(ctx)
    workers = [worker_row(w, nodes[0]["node"]) for w in part["workers"]]
    failed = [failed_row(f, nodes[0]["node"]) for f in part["failed"]]
    caught = [caught_row(c, nodes[0]["node"]) for c in own["checks"]["quarantine"]]
    peer_url = ctx.peer.url or None
    problems = Problems(ctx)
    if peer_url:
        theirs = ctx.peer.stats()
        view = None if theirs is None else problems.checked(lambda: node_view(theirs, peer_url))
        if view is None:
            nodes.append({"node": peer_url, "url": peer_url, "reachable": False})
        else:
            nodes.append(view)
            name = view["node"]
            scaler = problems.checked(lambda: mapping(theirs.get("scaler"), "/stats", "scaler")) or {}
            decisions += problems.checked(lambda: [decision_view(d, name) for d in objects(
                scaler.get("decisions"), "/stats", "scaler.decisions")]) or []
            in_progress += problems.checked(lambda: [progress_view(p, name) for p in objects(
                theirs.get("in_progress"), "/stats", "in_progress")]) or []
            caught += problems.checked(lambda: [caught_row(c, name) for c in objects(
                mapping(theirs.get("checks"), "/stats", "checks").get("quarantine"), "/stats", "checks.quarantine")]) or []
            peer_results = ctx.peer.newest_results(NEWEST)
            if peer_results is not None:
                peer_results = problems.checked(lambda: peer_answers.results(peer_results))
            if peer_results is not None:
                results = merge_newest(results, peer_results, NEWEST)
            their_part = ctx.peer.dashboard_part()
            if their_part is not None:
                path = "/dashboard/node"
                workers += problems.checked(lambda: [worker_row(w, name) for w in objects(
                    mapping(their_part, path, "the answer").get("workers"), path, "workers")]) or []
                failed += problems.checked(lambda: [failed_row(f, name) for f in objects(
                    their_part.get("failed"), path, "failed")]) or []
        if problems:
            nodes[1]["problem"] = "; ".join(problems)
    counted = [n for n in nodes if n["reachable"]]
    totals = {key: sum(n[key] for n in counted) for key in _COUNTS}
    totals["workers"] = {key: sum(n["workers"][key] for n in counted) for key in ("live", "pending", "max", "capacity")}
    totals["workers"]["capacity_why"] = "; ".join(f"{n['node']}: {n['workers']['capacity_why']}" for n in counted
                                                  if n["workers"]["capacity"] < n["workers"]["max"])
    totals["checks"] = {key: sum(n["checks"][key] for n in counted) for key in _CHECK_COUNTS}
    return {
        "at": time.time(),
        "node": nodes[0]["node"],
        "peer": {"url": peer_url, "reachable": nodes[1]["reachable"] if peer_url else None},
        "totals": totals,
        "nodes": nodes,
        "results": [result_view(r) for r in results[:NEWEST]],
        "decisions": sorted(decisions, key=lambda d: when(d["at"]), reverse=True)[:NEWEST],
        "in_progress": sorted(in_progress, key=lambda p: p["percent"], reverse=True)[:NEWEST],
        "workers": workers[:2 * WORKERS_SHOWN],
        "failed": sorted(failed, key=lambda f: when(f["at"]), reverse=True)[:FAILED_SHOWN],
        "quarantined": sorted(caught_once(caught), key=lambda c: when(c["at"]), reverse=True)[:FAILED_SHOWN],
    }


def history_json(ctx: NodeContext) -> dict:
    """This node's samples and the scaling decisions within them (``GET /history``)."""
    since = time.time() - ctx.history.interval * POINTS
    decisions = [decision_view(d, ctx.config.node_name) for d in ctx.scaler.decisions() if (d.get("at") or 0) >= since]
    return {"node": ctx.config.node_name, **ctx.history.to_json(), "decisions": decisions}


def cluster_history() -> dict:
    """Both nodes' samples added up per sample time, both nodes' scaling decisions, and the
    sample times at which a node found its peer unreachable (``peer_down``). A malformed answer
    of the peer's is left out: ``peer_answered`` false, ``peer_problem`` says why."""
    ctx = get_context()
    own = history_json(ctx)
    series, decisions = [own["points"]], own["decisions"]
    peer_answered = None
    problems = Problems(ctx)
    if ctx.peer.url:
        theirs = ctx.peer.history()
        path = "/history"

        def read() -> tuple[list[dict], list[dict]]:
            body = mapping(theirs, path, "the answer")
            name = text(body.get("node"), path, "node") or ctx.peer.url
            return ([point_row(p) for p in objects(body.get("points"), path, "points")],
                    [decision_row(d, name) for d in objects(body.get("decisions"), path, "decisions")])

        checked = None if theirs is None else problems.checked(read)
        peer_answered = checked is not None
        if checked is not None:
            series.append(checked[0])
            decisions = decisions + checked[1]
    return {"at": time.time(), "interval": ctx.history.interval, "window": ctx.history.interval * POINTS,
            "points": merge(series), "decisions": sorted(decisions, key=lambda d: when(d["at"])),
            "peer_answered": peer_answered, "peer_problem": "; ".join(problems) or None}


@bp.get("/")
def page():
    ctx = get_context()
    return render_template("dashboard.html", node=ctx.config.node_name,
                           history_seconds=f"{ctx.history.interval:g}"), 200, _PAGE_HEADERS


@bp.get("/dashboard/data")
def data():
    return jsonify(cluster_view()), 200, {"Cache-Control": "no-store"}


@bp.get("/dashboard/history")
def chart():
    return jsonify(cluster_history()), 200, {"Cache-Control": "no-store"}


@bp.get("/dashboard/node")
def node_part():
    return jsonify(own_part(get_context())), 200, {"Cache-Control": "no-store"}


@bp.get("/dashboard/list")
def search():
    return jsonify(listing(get_context())), 200, {"Cache-Control": "no-store"}


@bp.get("/history")
def history():
    return jsonify(history_json(get_context())), 200, {"Cache-Control": "no-store"}
