"""The HTTP endpoints of SPEC.md: public ones for clients, internal ones for nodes and workers."""

from __future__ import annotations

import base64
import logging
import re

from flask import Blueprint, Response, jsonify, request

from nodeapp.web.access import caller, check_intake, client_access
from nodeapp.web.bodies import json_body, read_body
from nodeapp.store.checkpoints import is_digest, parse_checkpoints
from nodeapp.context import get_context
from nodeapp.web.errors import ApiError
from nodeapp.web.params import (
    checked, from_peer, internal, json_entries, json_field, operator_only, peer_only, peer_unavailable, positive_int,
    query_args,
)
from nodeapp.fleet.loans import MAX_LOANS, is_loan_id
from nodeapp.store.results import merge_newest
from nodeapp.web.enqueueing import REPLAYED_HEADER, queue, request_key, reuse_wanted, submission
from nodeapp.web.task_options import task_options
from nodeapp.store.records import COMPLETED, is_task_id
from nodeapp.store.verification import MAX_MARKS, Caught
from nodeapp.fleet.quarantine_sync import EXCHANGED
from nodeapp.version import __version__
from nodeapp.fleet.pool import Report
from nodeapp.store.results import encode_json
from nodeapp.web import peer_answers
from nodeapp.web.views import node_stats, task_json

bp = Blueprint("nodeapp", __name__)
log = logging.getLogger(__name__)

_RESULT = re.compile(r"[0-9a-f]{128}")


def _checkpoints(data: dict) -> dict:
    """The body's optional ``checkpoints`` (``nodeapp/store/checkpoints.py``); malformed ones are a 400."""
    try:
        return parse_checkpoints(data.get("checkpoints", []))
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


def _not_quarantined(worker_id: str) -> None:
    """A quarantined worker (caught with a wrong result) may not claim, post or renew anything."""
    if worker_id in get_context().node.quarantine:
        raise ApiError(403, "quarantined", f"worker {worker_id} is quarantined: a spot-check found a wrong result "
                                           "it computed; it may claim nothing more (see docs/verification.md)")


def _marks(item: dict) -> list[str]:
    """A result's optional ``marks``: at most MAX_MARKS digests (``tmcommon/marks.py``)."""
    marks = item.get("marks", [])
    if not (isinstance(marks, list) and len(marks) <= MAX_MARKS and all(isinstance(m, str) and is_digest(m)
                                                                         for m in marks)):
        raise ApiError(400, "bad_request", f"each result's 'marks' must be a list of at most {MAX_MARKS} digests "
                                           "(128 lowercase hex characters)")
    return marks


# ------------------------------------------------------------------ public
@bp.put("/enqueue")
@client_access
def enqueue():
    ctx = get_context()
    check_intake(ctx)
    req = request._get_current_object()  # out of the proxy once: each request.x through it is a lookup
    args = query_args(req)
    iterations = positive_int("iterations", "bad_iterations", ctx.config.max_iterations, args)
    key, reuse = request_key(req.environ), reuse_wanted(args)
    options = task_options(ctx.config.max_delay, args=args)
    data = read_body(ctx.config.max_body_bytes, request=req)
    [done], headers = queue(ctx, [submission(data, iterations, key, options, caller().owner)], reuse)
    if done.reused_from and _completed(ctx, done.id):  # a run still going is its owner's to know of
        answer = jsonify(id=done.id, reused_from=done.reused_from)
    else:  # the common answer, written directly: a tenth of the view's time through jsonify
        answer = Response(b'{"id":"%s"}\n' % done.id.encode(), mimetype="application/json")
    if done.replayed:
        return answer, 200, {**headers, REPLAYED_HEADER: "true"}
    return answer, 201, headers


def _completed(ctx, task_id: str) -> bool:
    record = ctx.node.tasks.status(task_id)
    return record is not None and record.state == COMPLETED


@bp.post("/pullCompleted")
@client_access
def pull_completed():
    ctx = get_context()
    top = positive_int("top", "bad_top")
    top = min(top, ctx.config.results_retention * 2)
    # Entries are (completed_at, id, JSON bytes): a local result is encoded once in its life.
    records = ctx.node.tasks.results.newest_completed(top)
    entries = [(r.completed_at, r.id, data) for r, data in zip(records, ctx.summaries.encode(records))]
    headers = {"Content-Type": "application/json"}
    if not from_peer() and ctx.peer.url:
        theirs = checked(ctx, ctx.peer.newest_results(top), peer_answers.results, top)
        if theirs is None:
            headers["X-Peer-Unavailable"] = "1"
        else:
            peer_entries = [(r["completed_at"], r["id"], encode_json(r)) for r in theirs]
            entries = merge_newest(entries, peer_entries, top, key=lambda e: (e[0], e[1]))
    return b"[" + b",".join(e[2] for e in entries) + b"]", 200, headers


@bp.get("/status/<task_id>")
@client_access
def status(task_id: str):
    ctx = get_context()
    if not is_task_id(task_id):  # no such task anywhere: not worth asking the peer
        raise ApiError(404, "unknown_task", f"no task with id {task_id!r} on either node (not a task id)")
    record = ctx.node.tasks.status(task_id)
    task = task_json(record) if record is not None else None
    if task is None and not from_peer() and ctx.peer.url:
        answered, task = ctx.peer.status(task_id)
        if task is not None:
            task = checked(ctx, task, peer_answers.task, task_id, "/status")
            answered = task is not None
        if not answered:
            raise peer_unavailable(task_id)
    if task is None:
        raise ApiError(404, "unknown_task", f"no task with id {task_id!r} on either node")
    return jsonify(task)


@bp.get("/health")
def health():
    ctx = get_context()
    journal = ctx.node.tasks.journal
    state = journal.state() if journal is not None else None
    failing = state in ("failed", "stuck")
    answer = jsonify(status="journal_unavailable" if failing else "ok", node=ctx.config.node_name,
                     version=__version__, draining=ctx.node.tasks.draining, durable=journal is not None,
                     paused=ctx.intake.paused,
                     **({"journal": state} if journal is not None else {}))
    if failing:  # writes are answered 503 now: say so to load balancers and supervisors
        answer.status_code = 503
        answer.headers["Retry-After"] = "1"
    return answer


@bp.get("/stats")
def stats():
    ctx = get_context()
    return jsonify(node_stats(ctx))


@bp.get("/metrics")
def metrics():
    ctx = get_context()
    body, content_type = ctx.metrics.render()
    return Response(body, content_type=content_type)


# ---------------------------------------------------------------- internal
@bp.post("/worker_down/<instance_id>")
@internal
def worker_down(instance_id: str):
    ctx = get_context()
    data = json_body()
    named = json_field(data, "instance_id", str, required=False, default=instance_id)
    if named != instance_id:
        raise ApiError(400, "bad_request", "instance_id in the body differs from the one in the path")
    returned = json_field(data, "returned", list, required=False, default=[])
    checkpoints = _checkpoints(data)
    gone = ctx.node.worker_down(instance_id, [r for r in returned if isinstance(r, str)], checkpoints=checkpoints)
    if gone.removed or gone.requeued:
        log.info("worker down: %s (%s), %d task(s) requeued, %d failed", instance_id,
                 "ours" if gone.removed else "peer's", gone.requeued, gone.failed)
    return jsonify(removed=gone.removed, requeued=gone.requeued, failed=gone.failed)


@bp.get("/try_get_node_quota")
@peer_only
def try_get_node_quota():
    grant = get_context().node.workers.lend()
    if grant is None:
        log.debug("quota refused to peer")
        return jsonify(granted=False)
    log.info("quota lent to peer: loan %s for %gs unless renewed", grant.loan, grant.ttl)
    return jsonify(granted=True, loan=grant.loan, ttl=grant.ttl)


@bp.post("/renew_quota")
@peer_only
def renew_quota():
    loans = json_field(json_body(), "loans", list)
    if len(loans) > MAX_LOANS or not all(map(is_loan_id, loans)):
        raise ApiError(400, "bad_request", f"'loans' must be at most {MAX_LOANS} loan ids (1 to 64 of 0-9, a-f)")
    return jsonify(get_context().node.workers.renewal(loans).to_json())


@bp.post("/return_quota")
@peer_only
def return_quota():
    loan = json_field(json_body(), "loan", str, required=False)
    if loan is not None and not is_loan_id(loan):
        raise ApiError(400, "bad_request", "'loan' must be a loan id (1 to 64 of 0-9, a-f)")
    new_max = get_context().node.workers.loan_returned(loan)
    log.info("quota returned by peer%s: max now %d", f": loan {loan}" if loan else "", new_max)
    return jsonify(max=new_max)


@bp.post("/quarantine/sync")
@peer_only
def sync_quarantine():
    """The peer sends the workers it quarantined and gets this node's (each takes in the other's)."""
    ctx = get_context()
    ctx.quarantine_sync.merge(json_entries(json_body(), "quarantine", Caught.from_json, EXCHANGED, "entry",
                                           "{worker, at, task, reason, engine, cpu, lanes, launcher} as in /stats "
                                           "checks.quarantine"))
    return jsonify(quarantine=ctx.quarantine_sync.listed())


@bp.post("/claim")
@internal
def claim():
    ctx = get_context()
    data = json_body()
    worker_id = json_field(data, "worker_id", str)
    max_tasks = json_field(data, "max_tasks", int, required=False, default=1)
    max_iterations = json_field(data, "max_iterations", int, required=False, default=None)
    if not worker_id or max_tasks < 1 or (max_iterations is not None and max_iterations < 1):
        raise ApiError(400, "bad_request", "worker_id must be non-empty; max_tasks and max_iterations >= 1")
    _not_quarantined(worker_id)
    try:
        report = Report.from_claim(data)  # the worker's rate, engine and lanes, when it sends them
    except ValueError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    budget = int((report.rate if report else ctx.config.hash_rate) * ctx.config.claim_seconds)
    max_iterations = budget if max_iterations is None else min(max_iterations, budget)
    tasks = ctx.node.claim(worker_id, min(max_tasks, 1000), max_iterations, report)
    return jsonify(
        tasks=[{"id": t.id, "iterations": t.iterations, "data": base64.b64encode(t.data or b"").decode(),
                **({"checkpoint": {"done": t.checkpoint.done, "digest": t.checkpoint.digest}} if t.checkpoint else {})}
               for t in tasks],
        lease_seconds=ctx.config.lease_seconds,
    )


@bp.post("/complete")
@internal
def complete():
    ctx = get_context()
    data = json_body()
    worker_id = json_field(data, "worker_id", str)
    results = json_field(data, "results", list)
    pairs, marks = [], {}
    for item in results:
        if not (isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(item.get("result"), str)):
            raise ApiError(400, "bad_request", "each result must be an object with string 'id' and 'result'")
        if not _RESULT.fullmatch(item["result"]):
            raise ApiError(400, "bad_request", "each 'result' must be a SHA-512 digest: 128 lowercase hex characters")
        pairs.append((item["id"], item["result"]))
        marks[item["id"]] = _marks(item)
    _not_quarantined(worker_id)
    return jsonify(accepted=ctx.node.complete(worker_id, pairs, marks))


@bp.post("/heartbeat")
@internal
def heartbeat():
    ctx = get_context()
    data = json_body()
    worker_id = json_field(data, "worker_id", str)
    task_ids = json_field(data, "task_ids", list, required=False, default=[])
    checkpoints = _checkpoints(data)
    _not_quarantined(worker_id)
    task_ids = [t for t in task_ids if isinstance(t, str)]
    renewed = ctx.node.heartbeat(worker_id, task_ids, checkpoints)
    # tasks cancelled (or whose lease was lost) meanwhile: the worker stops them, their results would be ignored
    stop = ctx.node.tasks.stopped(worker_id, task_ids) if renewed < len(task_ids) else []
    return jsonify(renewed=renewed, lease_seconds=ctx.config.lease_seconds, stop=stop)


@bp.post("/configure")
@operator_only
def configure():
    ctx = get_context()
    data = json_body()
    unknown = set(data) - {"peer_url", "max_workers"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    peer_url = json_field(data, "peer_url", str, required=False)
    max_workers = json_field(data, "max_workers", int, required=False)
    if peer_url is not None and peer_url and not peer_url.startswith(("http://", "https://")):
        raise ApiError(400, "bad_request", "peer_url must be an http:// or https:// URL (or empty)")
    if max_workers is not None and not 0 <= max_workers <= 1000:
        raise ApiError(400, "bad_request", "max_workers must be from 0 to 1000")
    if max_workers is not None and max_workers > ctx.config.max_workers:  # what was provisioned is the ceiling
        raise ApiError(400, "above_provisioned", f"max_workers {max_workers} is above MAX_NUM_OF_WORKERS="
                                                 f"{ctx.config.max_workers}, which this node was started with")
    ctx.configure(peer_url=peer_url, max_workers=max_workers)
    return jsonify(peer_url=ctx.peer.url or None, max_workers=ctx.node.workers.counts().max)

