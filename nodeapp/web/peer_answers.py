"""The peer's answers, checked before this node shows or merges them.

A peer of another version, or a broken one, may answer any JSON. Each reader here returns the
part in the form this node's views use, picked field by field, or raises ``BadPeerAnswer``
naming the endpoint and what is wrong: the view then leaves the peer's part out and says why
(``problem``), never a 500. Nothing of a peer's answer reaches a client unchecked.
"""

from __future__ import annotations

import math
import re
from typing import Any

from nodeapp.store.results import EPOCH

_TASK_ID = re.compile(r"[0-9a-f]{32}")
_RESULT = re.compile(r"[0-9a-f]{128}")
_STATES = frozenset({"queued", "running", "completed", "failed", "cancelled"})
#: Longest text of a peer's shown as is (a name, a reason); longer is cut.
TEXT_MAX = 500
#: Most items of one list read from a peer's answer (its own lists are far shorter), unless the
#: request asked for more (``pullCompleted?top=N`` reads N).
ITEMS_MAX = 1000


class BadPeerAnswer(ValueError):
    """A peer's answer in a form this node does not read."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"the peer's {path} answer {what}")


def number(value: Any, path: str, name: str, *, optional: bool = True) -> float | None:
    """A finite number (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadPeerAnswer(path, f"has {name}={_shown(value)}, not a number")
    return value


def count(value: Any, path: str, name: str) -> int:
    """A whole number >= 0 (a missing one is 0)."""
    found = number(value, path, name)
    if found is None:
        return 0
    if found < 0 or found != int(found):
        raise BadPeerAnswer(path, f"has {name}={_shown(value)}, not a count")
    return int(found)


def text(value: Any, path: str, name: str, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadPeerAnswer(path, f"has {name}={_shown(value)}, not a string")
    return value[:TEXT_MAX]


def flag(value: Any, path: str, name: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise BadPeerAnswer(path, f"has {name}={_shown(value)}, not true or false")
    return value


def mapping(value: Any, path: str, name: str) -> dict:
    """An object (a missing one is empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadPeerAnswer(path, f"has {name} of type {type(value).__name__}, not an object")
    return value


def objects(value: Any, path: str, name: str, limit: int = ITEMS_MAX) -> list[dict]:
    """A list of objects (a missing one is empty), at most ``limit`` of them read."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value[:limit]):
        raise BadPeerAnswer(path, f"has {name} that is not a list of objects")
    return value[:limit]


def task_id(value: Any, path: str, name: str = "id") -> str:
    if not isinstance(value, str) or not _TASK_ID.fullmatch(value):
        raise BadPeerAnswer(path, f"has {name}={_shown(value)}, not a task id")
    return value


def result(item: dict, path: str) -> dict:
    """A completed task as ``pullCompleted`` and ``results`` list it."""
    out = {"id": task_id(item.get("id"), path)}
    digest = item.get("result")
    if not isinstance(digest, str) or not _RESULT.fullmatch(digest):
        raise BadPeerAnswer(path, f"has result={_shown(digest)}, not a SHA-512 hex digest")
    out["result"] = digest
    out["iterations"] = count(item.get("iterations"), path, "iterations")
    out["completed_at"] = number(item.get("completed_at"), path, "completed_at", optional=False)
    if item.get("reused_from") is not None:
        out["reused_from"] = task_id(item["reused_from"], path, "reused_from")
    return out


def failed_task(item: dict, path: str) -> dict:
    """A failed or cancelled task as the dashboard lists it."""
    return {"id": task_id(item.get("id"), path), "state": text(item.get("state"), path, "state"),
            "iterations": count(item.get("iterations"), path, "iterations"), "at": number(item.get("at"), path, "at"),
            "reason": text(item.get("reason"), path, "reason")}


def results(answer: Any, top: int = ITEMS_MAX, path: str = "/pullCompleted") -> list[dict]:
    """The peer's ``pullCompleted?top=top``: a list of results, at most the ``top`` asked for."""
    if not isinstance(answer, list):
        raise BadPeerAnswer(path, "is not a list")
    return [result(item, path) for item in objects(answer, path, "results", top)]


def results_page(answer: Any) -> tuple[str, list[tuple[float, str, int, dict]], int]:
    """The peer's own part of ``GET /results`` as (epoch, [(completed_at, epoch, seq, result)], missed)."""
    path = "/results"
    body = mapping(answer, path, "the answer")
    epoch = body.get("epoch")
    if not isinstance(epoch, str) or not EPOCH.fullmatch(epoch):
        raise BadPeerAnswer(path, f"has epoch={_shown(epoch)}, not an epoch")
    items, seqs = objects(body.get("results"), path, "results"), body.get("seqs")
    if not isinstance(seqs, list) or len(seqs) != len(items):
        raise BadPeerAnswer(path, "has no seqs to go with its results")
    entries = []
    for item, seq in zip(items, seqs):
        if type(seq) is not int or seq < 0:
            raise BadPeerAnswer(path, f"has seq={_shown(seq)}, not a count")
        checked = result(item, path)
        entries.append((checked["completed_at"], epoch, seq, checked))
    return epoch, entries, count(body.get("missed"), path, "missed")


def task(answer: Any, wanted: str, path: str) -> dict:
    """A task as ``GET /status`` (or cancel, retry) shows it: the task asked for, its known fields."""
    body = mapping(answer, path, "the answer")
    if body.get("id") != wanted:
        raise BadPeerAnswer(path, f"is about id={_shown(body.get('id'))}, not the task asked for")
    if not isinstance(body.get("state"), str) or body["state"] not in _STATES:
        raise BadPeerAnswer(path, f"has state={_shown(body.get('state'))}")
    out: dict[str, Any] = {"id": wanted, "state": body["state"], "iterations": count(body.get("iterations"), path,
                                                                                    "iterations")}
    for name in ("enqueued_at", "completed_at", "not_before", "deadline"):
        if body.get(name) is not None:
            out[name] = number(body[name], path, name)
    for name in ("attempts", "done", "resumed_from", "priority"):
        if body.get(name) is not None:
            out[name] = count(body[name], path, name)
    if body.get("result") is not None:
        out["result"] = result({**body, "completed_at": out.get("completed_at", 0)}, path)["result"]
    if body.get("reason") is not None:
        out["reason"] = text(body["reason"], path, "reason")
    if body.get("reused_from") is not None:
        out["reused_from"] = task_id(body["reused_from"], path, "reused_from")
    if body.get("owner") is not None:  # the id of the key that queued it (docs/api.md, "Client keys")
        out["owner"] = text(body["owner"], path, "owner")
    for name in ("spot_checked", "checking"):  # docs/verification.md
        if body.get(name) is not None:
            out[name] = flag(body[name], path, name)
    return out


def error(answer: Any, path: str) -> dict:
    """A JSON error of the peer's, ``{"error", "message"}``."""
    body = mapping(answer, path, "the answer")
    return {"error": text(body.get("error"), path, "error", optional=False),
            "message": text(body.get("message") or "", path, "message")}


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
