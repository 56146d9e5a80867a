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

from nodeapp.context import NodeContext, get_context
from nodeapp.history import POINTS, merge
from nodeapp.store.results import merge_newest, summary
from nodeapp.web.listing import listing

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard/static")

#: Results and scaling decisions the page lists.
NEWEST = 10
#: Failed (or cancelled) tasks and workers the page lists.
FAILED_SHOWN, WORKERS_SHOWN = 20, 100
_WORKER_KEYS = ("id", "state", "borrowed", "engine", "last_seen_ago")
_FAILED_KEYS = ("id", "state", "iterations", "at", "reason")
_DECISION_KEYS = ("at", "reason", "launched", "borrowed", "queued", "workers")
_COUNTS = ("queued", "running", "completed", "failed", "enqueued")
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def node_view(stats: dict, url: str | None) -> dict:
    """The figures of one node's ``/stats`` that the page shows."""
    workers, quota = stats.get("workers") or {}, stats.get("quota") or {}
    peer = stats.get("peer") or {}
    return {
        "node": str(stats.get("node") or url or ""),
        "url": url,
        "reachable": True,
        **{key: int(stats.get(key) or 0) for key in _COUNTS},
        "workers": {**{key: int(workers.get(key) or 0) for key in ("live", "pending", "max")},
                    "capacity": int(workers.get("capacity", workers.get("max")) or 0),
                    "capacity_why": str(workers.get("capacity_why") or "")},
        "quota": {key: int(quota.get(key) or 0) for key in ("lent", "borrowed")},
        "draining": bool(stats.get("draining")),
        "peer_reachable": peer.get("reachable"),
    }


def decision_view(decision: dict, node: str) -> dict:
    figures = decision.get("figures") or {}
    return {
        "at": decision.get("at"),
        "node": node,
        "reason": "; ".join(str(part) for part in [decision.get("reason", ""), *(decision.get("notes") or [])]),
        "launched": int(decision.get("launched") or 0),
        "borrowed": int(decision.get("borrowed") or 0),
        "queued": figures.get("queued"),
        "workers": workers_text(figures),
    }


def workers_text(figures: dict) -> str:
    """A decision's workers at that moment: live+pending/capacity, and the quota where it was higher."""
    quota = figures.get("max_workers", 0)
    capacity = figures.get("capacity")
    capacity = quota if capacity is None else capacity
    return f"{figures.get('live', 0)}+{figures.get('pending', 0)}/{capacity}" + (
        f" (max {quota})" if capacity < quota else "")


def result_view(result: dict) -> dict:
    return {key: result.get(key) for key in ("id", "iterations", "completed_at", "result")}


def progress_view(item: dict, node: str) -> dict:
    """A long task in progress, without its id (whoever knows it may cancel the task)."""
    done, total = int(item.get("done") or 0), int(item.get("iterations") or 0)
    return {"node": node, "done": done, "iterations": total,
            "percent": round(100 * done / total, 1) if total else 0.0}


def worker_view(worker, now: float) -> dict:
    report = getattr(worker, "report", None)  # what the worker said of itself in its first claim
    return {"id": worker.id, "state": worker.state, "borrowed": worker.borrowed,
            "engine": getattr(report, "engine", None),
            "last_seen_ago": round(now - worker.last_seen, 1) if worker.last_seen is not None else None}


def own_part(ctx: NodeContext) -> dict:
    """This node's workers and newest failed or cancelled tasks (``GET /dashboard/node``)."""
    now = time.monotonic()  # the clock of Worker.last_seen
    failed = [{"id": r.id, "state": r.state, "iterations": r.iterations, "at": r.completed_at, "reason": r.reason}
              for r in ctx.node.tasks.newest_failed(FAILED_SHOWN)]
    return {"node": ctx.config.node_name,
            "workers": [worker_view(w, now) for w in ctx.node.workers.workers()[:WORKERS_SHOWN]],
            "failed": failed}


def when(at) -> float:
    """A time from a peer's answer, for sorting (0 if it is not a number)."""
    return at if isinstance(at, (int, float)) else 0.0


def tagged(items, keys: tuple[str, ...], node: str) -> list[dict]:
    """``items`` (a peer's answer: checked) reduced to ``keys``, each tagged with its ``node``."""
    if not isinstance(items, list):
        return []
    return [{"node": node, **{key: item.get(key) for key in keys}} for item in items if isinstance(item, dict)]


def cluster_view() -> dict:
    """This node and its peer, their totals, newest results, failed tasks, workers and last
    scaling decisions."""
    ctx = get_context()
    own = ctx.stats()
    nodes = [node_view(own, ctx.config.node_url or None)]
    decisions = [decision_view(d, nodes[0]["node"]) for d in own["scaler"]["decisions"]]
    in_progress = [progress_view(p, nodes[0]["node"]) for p in own.get("in_progress", [])]
    results = [summary(r) for r in ctx.node.tasks.newest_completed(NEWEST)]
    part = own_part(ctx)
    workers = tagged(part["workers"], _WORKER_KEYS, nodes[0]["node"])
    failed = tagged(part["failed"], _FAILED_KEYS, nodes[0]["node"])
    peer_url = ctx.peer.url or None
    if peer_url:
        theirs = ctx.peer.stats()
        if theirs is None:
            nodes.append({"node": peer_url, "url": peer_url, "reachable": False})
        else:
            nodes.append(node_view(theirs, peer_url))
            decisions += [decision_view(d, nodes[1]["node"]) for d in (theirs.get("scaler") or {}).get("decisions", [])]
            in_progress += [progress_view(p, nodes[1]["node"]) for p in theirs.get("in_progress") or []]
            peer_results = ctx.peer.newest_results(NEWEST)
            if peer_results is not None:
                results = merge_newest(results, peer_results, NEWEST)
            their_part = ctx.peer.dashboard_part() or {}
            workers += tagged(their_part.get("workers"), _WORKER_KEYS, nodes[1]["node"])
            failed += tagged(their_part.get("failed"), _FAILED_KEYS, nodes[1]["node"])
    counted = [n for n in nodes if n["reachable"]]
    totals = {key: sum(n[key] for n in counted) for key in _COUNTS}
    totals["workers"] = {key: sum(n["workers"][key] for n in counted) for key in ("live", "pending", "max", "capacity")}
    totals["workers"]["capacity_why"] = "; ".join(f"{n['node']}: {n['workers']['capacity_why']}" for n in counted
                                                  if n["workers"]["capacity"] < n["workers"]["max"])
    return {
        "at": time.time(),
        "node": nodes[0]["node"],
        "peer": {"url": peer_url, "reachable": nodes[1]["reachable"] if peer_url else None},
        "totals": totals,
        "nodes": nodes,
        "results": [result_view(r) for r in results[:NEWEST]],
        "decisions": sorted(decisions, key=lambda d: d["at"] or 0, reverse=True)[:NEWEST],
        "in_progress": sorted(in_progress, key=lambda p: p["percent"], reverse=True)[:NEWEST],
        "workers": workers,
        "failed": sorted(failed, key=lambda f: when(f["at"]), reverse=True)[:FAILED_SHOWN],
    }


def history_json(ctx: NodeContext) -> dict:
    """This node's samples and the scaling decisions within them (``GET /history``)."""
    since = time.time() - ctx.history.interval * POINTS
    decisions = [decision_view(d, ctx.config.node_name) for d in ctx.scaler.decisions() if (d.get("at") or 0) >= since]
    return {"node": ctx.config.node_name, **ctx.history.to_json(), "decisions": decisions}


def cluster_history() -> dict:
    """Both nodes' samples added up per sample time, both nodes' scaling decisions, and the
    sample times at which a node found its peer unreachable (``peer_down``)."""
    ctx = get_context()
    own = history_json(ctx)
    series, decisions = [own["points"]], own["decisions"]
    peer_answered = None
    if ctx.peer.url:
        theirs = ctx.peer.history()
        peer_answered = theirs is not None
        if theirs is not None:
            points = theirs.get("points")
            series.append([p for p in points if isinstance(p, dict) and isinstance(p.get("at"), (int, float))]
                          if isinstance(points, list) else [])
            name = str(theirs.get("node") or ctx.peer.url)
            decisions = decisions + tagged(theirs.get("decisions"), _DECISION_KEYS, name)
    return {"at": time.time(), "interval": ctx.history.interval, "window": ctx.history.interval * POINTS,
            "points": merge(series), "decisions": sorted(decisions, key=lambda d: when(d["at"])),
            "peer_answered": peer_answered}


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
