"""Queueing what a client sends, for ``PUT /enqueue`` and ``PUT /enqueue_batch``.

Idempotency keys and reusable results are looked up on the peer too (one ``POST /lookup`` per
request), then every task of the request is queued in one step (``TaskStore.submit_many``), all
or nothing. When the peer cannot be asked, keys and results are checked on this node only and
the answer carries ``X-Peer-Unavailable: 1``.
"""

from __future__ import annotations

import hashlib
import re

from flask import request

from nodeapp.web.errors import ApiError
from nodeapp.web.params import query_args
from nodeapp.store.idempotency import KeyEntry, is_key
from nodeapp.store.records import Draining, KeyMismatch, QueueFull, Submission, Submitted, is_task_id
from nodeapp.web.task_options import TaskOptions

KEY_HEADER = "Idempotency-Key"
#: Set (to ``true``) on an answer that repeats what an earlier request with the same key got.
REPLAYED_HEADER = "Idempotent-Replayed"
_RESULT = _DIGEST = re.compile(r"[0-9a-f]{128}")  # a SHA-512 digest, as a result or as a body's
_FLAGS = {"1": True, "true": True, "0": False, "false": False}


def reuse_wanted(args=None) -> bool:
    """The ``reuse`` query parameter (of ``args``, by default the request's): on unless ``0`` or ``false``."""
    raw = (query_args() if args is None else args).get("reuse", "1")
    wanted = _FLAGS.get(raw.lower())
    if wanted is None:
        raise ApiError(400, "bad_reuse", f"'reuse' must be 1 or 0 (true or false), got {raw!r}")
    return wanted


def request_key(environ=None) -> str | None:
    """The request's ``Idempotency-Key`` header, if any (of ``environ``, by default the request's)."""
    environ = request.environ if environ is None else environ
    key = environ.get("HTTP_IDEMPOTENCY_KEY")  # KEY_HEADER, without request.headers' exception
    if key is None:
        return None
    if not is_key(key):
        raise ApiError(400, "bad_idempotency_key", f"{KEY_HEADER} must be 1 to 255 visible ASCII characters")
    return key


def submission(data: bytes, iterations: int, key: str | None, options: TaskOptions, owner: str | None) -> Submission:
    """One task of a request, its digest computed here (outside the store's lock)."""
    return Submission(data, iterations, hashlib.sha512(data).digest(), key, priority=options.priority,
                      not_before=options.not_before, deadline=options.deadline, owner=owner)


def queue(ctx, items: list[Submission], reuse: bool, *, batch: bool = False) -> tuple[list[Submitted], dict]:
    """Queue ``items`` (all or none); returns what became of each and the answer's extra headers."""
    headers: dict[str, str] = {}
    peer_keys: dict = {}
    peer_results: dict = {}
    peer_runs: dict = {}
    if ctx.peer.url:  # what to ask is worked out only when there is a peer to ask
        keys = [item.key for item in items if item.key is not None]
        # Asking the peer costs a round trip on the enqueue path: worth it only for work that costs more.
        floor = ctx.config.reuse_peer_min_iterations
        works = list(dict.fromkeys((item.digest.hex(), item.iterations) for item in items
                                   if item.iterations >= floor)) if reuse else []
        answer = ctx.peer.lookup(keys, works) if keys or works else {}
        if answer is None:
            headers["X-Peer-Unavailable"] = "1"
        elif answer:
            peer_keys, peer_results = _peer_answer(answer, keys)
            peer_runs = _peer_runs(answer)
    try:
        return ctx.node.tasks.submit_many(items, reuse=reuse, peer_keys=peer_keys, peer_results=peer_results,
                                          peer_runs=peer_runs), headers
    except KeyMismatch as exc:
        where = f"task {exc.index}: " if batch else ""
        raise ApiError(422, "idempotency_key_mismatch", f"{where}{exc}; nothing was queued") from None
    except QueueFull as full:
        raise ApiError(503, "queue_full", f"{full}; nothing was queued, retry later",
                       headers={"Retry-After": "1"}) from None
    except Draining:
        raise ApiError(503, "shutting_down", "this node is shutting down; send the task to the other node",
                       headers={"Retry-After": "1"}) from None


def lookup_answer(known: dict[str, KeyEntry], results: dict, runs: dict | None = None) -> dict:
    """``POST /lookup``'s answer (read back by ``_peer_answer`` and ``_peer_runs``): known keys,
    kept results and the tasks queued or running here for the works asked about."""
    return {"keys": {key: {"id": e.task_id, "iterations": e.iterations, "digest": e.digest.hex()}
                     for key, e in known.items()},
            "results": [[digest.hex(), iterations, task_id, result]
                        for (digest, iterations), (task_id, result) in results.items()],
            "runs": [[digest.hex(), iterations, task_id] for (digest, iterations), task_id in (runs or {}).items()]}


def _peer_runs(answer: dict) -> dict:
    """The peer's tasks queued or running for the works asked about, ``{(digest, iterations): id}``;
    entries of the wrong form (or from a peer that does not say) are left out."""
    runs = {}
    for item in answer.get("runs") if isinstance(answer.get("runs"), list) else ():
        if isinstance(item, list) and len(item) == 3:
            digest, iterations, task_id = item
            if (isinstance(digest, str) and _DIGEST.fullmatch(digest) and type(iterations) is int and iterations >= 1
                    and isinstance(task_id, str) and is_task_id(task_id)):
                runs[(bytes.fromhex(digest), iterations)] = task_id
    return runs


def _peer_answer(answer: dict, asked: list[str]) -> tuple[dict[str, KeyEntry], dict]:
    """The peer's ``lookup_answer`` about the keys ``asked``; entries of the wrong form are left out."""
    keys, results = {}, {}
    known, found = answer.get("keys"), answer.get("results")
    for key, entry in (known.items() if isinstance(known, dict) else ()):
        if key not in asked or not isinstance(entry, dict):
            continue
        task_id, iterations, digest = entry.get("id"), entry.get("iterations"), entry.get("digest")
        if (isinstance(task_id, str) and is_task_id(task_id) and type(iterations) is int and iterations >= 1
                and isinstance(digest, str) and _DIGEST.fullmatch(digest)):
            keys[key] = KeyEntry(task_id, iterations, bytes.fromhex(digest))
    for item in found if isinstance(found, list) else ():
        if not (isinstance(item, list) and len(item) == 4):
            continue
        digest, iterations, task_id, result = item
        if (isinstance(digest, str) and _DIGEST.fullmatch(digest) and type(iterations) is int and iterations >= 1
                and isinstance(task_id, str) and is_task_id(task_id) and isinstance(result, str)
                and _RESULT.fullmatch(result)):
            results[(bytes.fromhex(digest), iterations)] = (task_id, result)
    return keys, results
