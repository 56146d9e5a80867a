"""Completed results as ``pullCompleted`` lists them, and the merge of two nodes' newest lists.

Shared by the API and the dashboard; no Flask here.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

from nodeapp.store.tasks import TaskRecord


def summary(record: TaskRecord) -> dict:
    """A completed task as ``pullCompleted`` lists it."""
    return {"id": record.id, "result": record.result, "iterations": record.iterations,
            "completed_at": record.completed_at}


def _dict_key(result: dict) -> tuple[float, Any]:
    return result.get("completed_at") or 0, result.get("id")


def merge_newest(ours: Iterable, theirs: Iterable, top: int,
                 key: Callable[[Any], tuple[float, str]] = _dict_key) -> list:
    """The ``top`` newest of two lists that are each newest first, each id once.

    ``key(item)`` gives (completed_at, id); by default items are pullCompleted's dicts. On equal
    times ours come first. Reads only as far into either list as it needs.
    """
    seen: set[str] = set()
    merged: list = []
    if top < 1:
        return merged
    for item in heapq.merge(ours, theirs, key=lambda r: key(r)[0], reverse=True):
        task_id = key(item)[1]
        if task_id in seen:
            continue
        seen.add(task_id)
        merged.append(item)
        if len(merged) == top:
            break
    return merged
