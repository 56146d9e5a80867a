"""The dashboard's lists of results and of failed tasks, searched and paged: ``GET /dashboard/list``.

Newest first, both nodes merged (``scope=node``: this node's only, as the peer asks for its part).
A search matches a task whose id, result or reason contains the text (case-insensitive). Each
node's kept results (``RESULTS_RETENTION``) are searched whole; a page is at most ``MAX_LIMIT``
items and starts at most ``MAX_OFFSET`` items deep.
"""

from __future__ import annotations

import re

from flask import request

from nodeapp.context import NodeContext
from nodeapp.store.results import merge_newest
from nodeapp.web import peer_answers
from nodeapp.web.errors import ApiError

KINDS = ("results", "failed")
MAX_LIMIT, MAX_OFFSET, MAX_QUERY = 100, 10_000, 128
_QUERY = re.compile(r"[ -~]*")
_KEYS = {"results": ("id", "iterations", "completed_at", "result"),
         "failed": ("id", "state", "iterations", "at", "reason")}


def _number(name: str, default: int, high: int) -> int:
    raw = request.args.get(name, str(default))
    if not raw.isdigit() or int(raw) > high:
        raise ApiError(400, "bad_request", f"'{name}' must be a whole number from 0 to {high}, got {raw[:20]!r}")
    return int(raw)


def asked() -> tuple[str, str, int, int, bool]:
    """``kind``, ``q``, ``offset``, ``limit`` and whether only this node is asked; 400 if malformed."""
    kind = request.args.get("kind", "results")
    if kind not in KINDS:
        raise ApiError(400, "bad_request", f"'kind' must be one of {', '.join(KINDS)}")
    query = request.args.get("q", "").strip().lower()
    if len(query) > MAX_QUERY or not _QUERY.fullmatch(query):
        raise ApiError(400, "bad_request", f"'q' must be at most {MAX_QUERY} printable ASCII characters")
    scope = request.args.get("scope", "cluster")
    if scope not in ("cluster", "node"):
        raise ApiError(400, "bad_request", "'scope' must be cluster or node")
    if scope == "node":  # the peer's part of a page: everything up to its end, from the top
        return kind, query, 0, _number("limit", MAX_LIMIT, MAX_OFFSET + MAX_LIMIT + 1), True
    return kind, query, _number("offset", 0, MAX_OFFSET), max(1, _number("limit", 20, MAX_LIMIT)), False


def own_items(ctx: NodeContext, kind: str, query: str, count: int) -> list[dict]:
    """This node's newest ``count`` matching items, newest first."""
    tasks = ctx.node.tasks
    records = tasks.results.newest_completed(ctx.config.results_retention) if kind == "results" else \
        tasks.results.newest_failed(ctx.config.results_retention)
    items = []
    for record in records:
        item = {"id": record.id, "iterations": record.iterations, "completed_at": record.completed_at,
                "result": record.result} if kind == "results" else \
            {"id": record.id, "state": record.state, "iterations": record.iterations, "at": record.completed_at,
             "reason": record.reason}
        if not query or any(query in str(item.get(key) or "").lower() for key in ("id", "result", "reason")):
            items.append({"node": ctx.config.node_name, **item})
            if len(items) >= count:
                break
    return items


def listing(ctx: NodeContext) -> dict:
    """The answer of ``GET /dashboard/list``: ``items``, ``offset``, ``limit``, ``more`` (an older
    page exists) and ``peer_answered`` (None without a peer or for ``scope=node``)."""
    kind, query, offset, limit, node_only = asked()
    wanted = offset + limit + 1
    items = own_items(ctx, kind, query, wanted)
    peer_answered = None
    if not node_only and ctx.peer.url:
        picked = _checked(ctx, ctx.peer.listing(kind, query, wanted), kind)
        peer_answered = picked is not None
        if picked is not None:
            at = "completed_at" if kind == "results" else "at"
            items = merge_newest(items, picked, wanted, key=lambda item: (_time(item.get(at)), item["id"]))
    if node_only:
        return {"items": items}
    return {"kind": kind, "q": query, "offset": offset, "limit": limit, "items": items[offset:offset + limit],
            "more": len(items) > offset + limit, "peer_answered": peer_answered}


def _checked(ctx: NodeContext, theirs: list | None, kind: str) -> list[dict] | None:
    """The peer's items, each checked (``nodeapp/web/peer_answers.py``); None if it gave none or
    one this node does not read (then kept as the peer's problem, in ``/stats`` and the log)."""
    if theirs is None:
        return None
    path = "/dashboard/list"
    read = peer_answers.result if kind == "results" else peer_answers.failed_task
    try:
        return [{"node": peer_answers.text(item.get("node"), path, "node") or ctx.peer.url,
                 **{key: value for key, value in read(item, path).items() if key in _KEYS[kind]}}
                for item in peer_answers.objects(theirs, path, "items")]
    except peer_answers.BadPeerAnswer as exc:
        ctx.peer.bad_answer(str(exc))
        return None


def _time(at) -> float:
    return at if isinstance(at, (int, float)) else 0.0
