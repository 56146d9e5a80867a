"""The operator's endpoints (operator token): client keys, pause and resume intake, purge the
queue, and ``GET /active``, the tasks each worker holds right now (docs/api.md, "Operator controls")."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, jsonify

from nodeapp.web.params import json_entries, json_field, operator_only, peer_only
from nodeapp.store.apikeys import ApiKey, MAX_KEYS, TooManyKeys, is_key_id, is_name
from nodeapp.web.bodies import json_body
from nodeapp.context import get_context
from nodeapp.web.errors import ApiError

bp = Blueprint("operator", __name__)
log = logging.getLogger(__name__)


# ------------------------------------------------------------------ client keys
@bp.get("/keys")
@operator_only
def list_keys():
    ctx = get_context()
    return jsonify(keys=[k.public() for k in ctx.keys.listing()], required=ctx.config.api_keys == "required")


@bp.post("/keys")
@operator_only
def create_key():
    ctx = get_context()
    data = json_body()
    unknown = set(data) - {"name"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    name = json_field(data, "name", str, required=False, default="")
    if not is_name(name):
        raise ApiError(400, "bad_request", "'name' must be at most 100 printable ASCII characters")
    try:
        entry, key = ctx.keys.create(name)
    except TooManyKeys as exc:
        raise ApiError(409, "too_many_keys", str(exc)) from None
    log.info("api key %s (%r) made", entry.id, name)
    shared = ctx.key_sync.exchange() is not None
    return jsonify(**entry.public(), key=key, peer_informed=shared), 201


@bp.post("/keys/<key_id>/revoke")
@operator_only
def revoke_key(key_id: str):
    ctx = get_context()
    entry = ctx.keys.revoke(key_id) if is_key_id(key_id) else None
    if entry is None:
        raise ApiError(404, "unknown_key", f"no key with id {key_id!r} (see GET /keys)")
    log.info("api key %s revoked", key_id)
    shared = ctx.key_sync.exchange() is not None
    return jsonify(**entry.public(), peer_informed=shared)


@bp.post("/keys/sync")
@peer_only
def sync_keys():
    """The peer sends its keys and gets this node's (both merge: a revocation wins)."""
    ctx = get_context()
    ctx.keys.merge(json_entries(json_body(), "keys", ApiKey.from_json, MAX_KEYS, "key",
                                "{id, name, digest, created_at, revoked_at}"))
    return jsonify(keys=ctx.keys.to_json())


# ------------------------------------------------------------------ intake and queue
@bp.post("/pause")
@operator_only
def pause():
    return _set_intake(True)


@bp.post("/resume")
@operator_only
def resume():
    return _set_intake(False)


def _set_intake(paused: bool):
    ctx = get_context()
    ctx.intake.set(paused)
    log.warning("intake %s by the operator%s", "paused" if paused else "resumed",
                ": enqueue and retry answer 503 paused" if paused else "")
    return jsonify(node=ctx.config.node_name, **ctx.intake.to_json())


@bp.post("/purge")
@operator_only
def purge():
    """Cancel every queued task of this node (scheduled ones too; running ones run on)."""
    ctx = get_context()
    purged = ctx.node.tasks.purge()
    log.warning("queue purged by the operator: %d task(s) cancelled", purged)
    return jsonify(node=ctx.config.node_name, purged=purged)


@bp.get("/active")
@operator_only
def active():
    """The tasks each worker holds on this node right now (Celery's ``inspect active``). The
    operator's only: the id of a running task is what it takes to cancel it."""
    ctx = get_context()
    now = time.time()
    held: dict[str, list] = {}
    for worker_id, record, since in ctx.node.tasks.held():
        held.setdefault(worker_id, []).append({
            "id": record.id, "iterations": record.iterations, "done": record.done or 0,
            "priority": record.priority, "held_seconds": round(max(0.0, now - since), 3)})
    return jsonify(node=ctx.config.node_name,
                   workers=[{"id": w, "tasks": tasks} for w, tasks in sorted(held.items())])
