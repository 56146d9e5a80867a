"""Endpoints for a task's life beyond SPEC.md's core: batch enqueue, cancel, retry, results by
cursor, and the peer's look-up of idempotency keys and reusable results (docs/api.md)."""

from __future__ import annotations

import heapq
import re

from flask import Blueprint, jsonify, request

from nodeapp.web.access import caller, check_intake, check_owner, client_access, forwarded_headers
from nodeapp.store.results import decode_cursor, encode_cursor
from nodeapp.web import peer_answers
from nodeapp.web.params import checked, from_peer, json_field, peer_only, peer_unavailable, positive_int
from nodeapp.web.auth import requires_if_set
from nodeapp.web.bodies import json_body, read_body
from nodeapp.context import get_context
from nodeapp.web.enqueueing import lookup_answer, queue, reuse_wanted, submission
from nodeapp.web.task_options import task_options
from nodeapp.web.errors import ApiError
from nodeapp.store.idempotency import is_key
from nodeapp.store.results import summary
from nodeapp.store.records import Draining, QueueFull, TaskRecord, WrongState, is_task_id
from nodeapp.web.views import task_json
from tmcommon import batchwire

bp = Blueprint("tasks", __name__)

#: Most results one ``GET /results`` answer holds, and how many without ``limit``.
RESULTS_PAGE_MAX, RESULTS_PAGE_DEFAULT = 1000, 100
#: Most keys and pairs one ``POST /lookup`` may ask about.
LOOKUP_MAX = 100_000
_WORK = re.compile(r"[0-9a-f]{128}")


# ------------------------------------------------------------------ batch enqueue
@bp.put("/enqueue_batch")
@client_access
def enqueue_batch():
    ctx = get_context()
    check_intake()
    config = ctx.config
    reuse = reuse_wanted()
    options = task_options(config.max_delay)  # the same for every task of the batch
    owner = caller().owner
    if request.mimetype != batchwire.CONTENT_TYPE:
        raise ApiError(415, "unsupported_media_type",
                       f"a batch is sent as Content-Type: {batchwire.CONTENT_TYPE} (see docs/api.md), "
                       f"got {request.mimetype or 'none'!r}")
    data = read_body(config.max_batch_bytes, "MAX_BATCH_BYTES")
    items = []
    try:
        count = batchwire.declared_count(data)
        if count > config.max_batch_tasks:
            raise ApiError(413, "batch_too_large",
                           f"the batch declares {count} tasks; the limit is {config.max_batch_tasks} (MAX_BATCH_TASKS)")
        if count == 0:
            raise ApiError(400, "bad_batch", "the batch holds no task")
        for index, task in enumerate(batchwire.decode(data)):
            if not 1 <= task.iterations <= config.max_iterations:
                raise ApiError(400, "bad_iterations", f"task {index}: iterations must be from 1 to "
                               f"{config.max_iterations} (MAX_ITERATIONS), got {task.iterations}; nothing was queued")
            if len(task.body) > config.max_body_bytes:
                raise ApiError(413, "body_too_large", f"task {index}: the body is {len(task.body)} bytes; the limit "
                               f"is {config.max_body_bytes} (MAX_BODY_BYTES); nothing was queued")
            items.append(submission(task.body, task.iterations, task.key, options, owner))
    except batchwire.BatchFormatError as exc:
        raise ApiError(400, "bad_batch", f"{exc}; nothing was queued") from None
    done, headers = queue(ctx, items, reuse, batch=True)
    replayed = sum(d.replayed for d in done)
    answer = {"ids": [d.id for d in done], "replayed": replayed,
              "reused": sum(d.reused_from is not None for d in done)}
    if replayed == len(done):
        headers["Idempotent-Replayed"] = "true"
        return jsonify(answer), 200, headers
    return jsonify(answer), 201, headers


@bp.post("/lookup")
@peer_only
def lookup():
    """The peer asks, before queueing, what this node knows of keys and (digest, iterations) pairs."""
    data = json_body()
    keys = json_field(data, "keys", list, required=False, default=[])
    works = json_field(data, "works", list, required=False, default=[])
    if len(keys) > LOOKUP_MAX or len(works) > LOOKUP_MAX:
        raise ApiError(400, "bad_request", f"at most {LOOKUP_MAX} keys and {LOOKUP_MAX} works")
    if not all(isinstance(k, str) and is_key(k) for k in keys):
        raise ApiError(400, "bad_request", "each key must be 1 to 255 visible ASCII characters")
    if not all(isinstance(w, list) and len(w) == 2 and isinstance(w[0], str) and _WORK.fullmatch(w[0])
               and type(w[1]) is int and w[1] >= 1 for w in works):
        raise ApiError(400, "bad_request", "each work must be [sha512 hex digest, iterations >= 1]")
    tasks = get_context().node.tasks
    pairs = [(bytes.fromhex(d), n) for d, n in works]
    known, results = tasks.lookup(keys, pairs)
    return jsonify(lookup_answer(known, results, tasks.runs([w for w in pairs if w not in results])))


# ------------------------------------------------------------------ cancel and retry
@bp.post("/cancel/<task_id>")
@requires_if_set
@client_access
def cancel(task_id: str):
    return _act(task_id, "cancel", lambda tasks: tasks.cancel(task_id), "not_cancellable")


@bp.post("/retry/<task_id>")
@requires_if_set
@client_access
def retry(task_id: str):
    check_intake()
    reuse = reuse_wanted()
    return _act(task_id, "retry", lambda tasks: tasks.retry(task_id, reuse=reuse), "not_retryable")


def _act(task_id: str, verb: str, action, refusal: str):
    """Do ``action`` on this node's task, or pass the call on to the peer when this node lacks it."""
    ctx = get_context()
    if not is_task_id(task_id):
        raise ApiError(404, "unknown_task", f"no task with id {task_id!r} on either node (not a task id)")
    mine = ctx.node.tasks.status(task_id)
    if mine is not None:  # its owner never changes: checked before acting
        check_owner(mine.owner, task_id, verb)
    try:
        record: TaskRecord | None = action(ctx.node.tasks) if mine is not None else None
    except WrongState as exc:
        raise ApiError(409, refusal, str(exc)) from None
    except QueueFull as full:
        raise ApiError(503, "queue_full", f"{full}; retry later", headers={"Retry-After": "1"}) from None
    except Draining:
        raise ApiError(503, "shutting_down", "this node is shutting down; it queues nothing more",
                       headers={"Retry-After": "1"}) from None
    if record is not None:
        return jsonify(task_json(record))
    if not from_peer() and ctx.peer.url:
        answer = ctx.peer.forward("POST", f"/{verb}/{task_id}", params=request.args, headers=forwarded_headers())
        if answer is not None:
            status, body = answer
            if status == 200:
                body = checked(ctx, body, peer_answers.task, task_id, f"/{verb}")
            elif 400 <= status < 600:
                body = checked(ctx, body, peer_answers.error, f"/{verb}")
            else:
                body = None
        if answer is None or body is None:
            raise peer_unavailable(task_id, verb)
        return jsonify(body), status
    raise ApiError(404, "unknown_task", f"no task with id {task_id!r} on either node")


# ------------------------------------------------------------------ results by cursor
@bp.get("/results")
@client_access
def results():
    ctx = get_context()
    limit = (positive_int("limit", "bad_limit", RESULTS_PAGE_MAX) if "limit" in request.args
             else RESULTS_PAGE_DEFAULT)
    raw = request.args.get("after", "")
    try:
        positions = decode_cursor(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_cursor", str(exc)) from None
    tasks = ctx.node.tasks
    pairs, missed = tasks.results.completed_after(positions.get(tasks.epoch, 0), limit)
    ours = [(record.completed_at, tasks.epoch, seq, _result_json(record)) for seq, record in pairs]
    if from_peer():  # the peer merges: give it the numbers too
        return jsonify(epoch=tasks.epoch, results=[e[3] for e in ours], seqs=[e[2] for e in ours], missed=missed)
    headers = {}
    next_positions = {tasks.epoch: positions.get(tasks.epoch, 0)}
    theirs = []
    if ctx.peer.url:
        answer = ctx.peer.forward("GET", "/results", params={"after": raw, "limit": limit})
        answer = checked(ctx, answer[1], peer_answers.results_page) if answer and answer[0] == 200 else None
        if answer is None:
            headers["X-Peer-Unavailable"] = "1"
            next_positions.update((e, s) for e, s in positions.items() if e != tasks.epoch)  # keep their place
        else:
            epoch, theirs, their_missed = answer
            next_positions[epoch] = positions.get(epoch, 0)
            missed += their_missed
    merged = list(heapq.merge(ours, theirs, key=lambda e: e[0]))[:limit]
    for _, epoch, seq, _ in merged:
        next_positions[epoch] = seq
    return jsonify(results=[e[3] for e in merged], next=encode_cursor(next_positions), missed=missed), 200, headers


def _result_json(record: TaskRecord) -> dict:
    out = summary(record)
    if record.reused_from is not None:
        out["reused_from"] = record.reused_from
    return out


