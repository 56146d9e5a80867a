"""The dashboard: ``GET /`` is a self-refreshing page, ``GET /dashboard/data`` the JSON it polls.

The JSON covers the whole cluster: this node's figures and, fetched server-side, its peer's
(a browser may not reach the peer's private address). Only figures, task ids, results and
scaling decisions go out, picked field by field: never a token, never a task body.
"""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, render_template

from nodeapp.context import get_context
from nodeapp.results import merge_newest, summary

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard/static")

#: Results and scaling decisions the page lists.
NEWEST = 10
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
        "workers": {key: int(workers.get(key) or 0) for key in ("live", "pending", "max")},
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
        "workers": f"{figures.get('live', 0)}+{figures.get('pending', 0)}/{figures.get('max_workers', 0)}",
    }


def result_view(result: dict) -> dict:
    return {key: result.get(key) for key in ("id", "iterations", "completed_at", "result")}


def progress_view(item: dict, node: str) -> dict:
    done, total = int(item.get("done") or 0), int(item.get("iterations") or 0)
    return {"node": node, "id": str(item.get("id", "")), "done": done, "iterations": total,
            "percent": round(100 * done / total, 1) if total else 0.0}


def cluster_view() -> dict:
    """This node and its peer, their totals, newest results and last scaling decisions."""
    ctx = get_context()
    own = ctx.stats()
    nodes = [node_view(own, ctx.config.node_url or None)]
    decisions = [decision_view(d, nodes[0]["node"]) for d in own["scaler"]["decisions"]]
    in_progress = [progress_view(p, nodes[0]["node"]) for p in own.get("in_progress", [])]
    results = [summary(r) for r in ctx.node.tasks.newest_completed(NEWEST)]
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
    counted = [n for n in nodes if n["reachable"]]
    totals = {key: sum(n[key] for n in counted) for key in _COUNTS}
    totals["workers"] = {key: sum(n["workers"][key] for n in counted) for key in ("live", "pending", "max")}
    return {
        "at": time.time(),
        "node": nodes[0]["node"],
        "peer": {"url": peer_url, "reachable": nodes[1]["reachable"] if peer_url else None},
        "totals": totals,
        "nodes": nodes,
        "results": [result_view(r) for r in results[:NEWEST]],
        "decisions": sorted(decisions, key=lambda d: d["at"] or 0, reverse=True)[:NEWEST],
        "in_progress": sorted(in_progress, key=lambda p: p["percent"], reverse=True)[:NEWEST],
    }


@bp.get("/")
def page():
    ctx = get_context()
    return render_template("dashboard.html", node=ctx.config.node_name), 200, _PAGE_HEADERS


@bp.get("/dashboard/data")
def data():
    return jsonify(cluster_view()), 200, {"Cache-Control": "no-store"}
