"""Checkpoints of long tasks: the (iterations done, digest) a worker reports for a task it holds.

What a node accepts (``TaskStore`` applies the rules that need the task):

* well formed: ``done`` an integer, ``digest`` 128 lowercase hex characters (checked here);
* only from the worker that holds the task's lease at that moment;
* ``0 < done < iterations``, and more than the task's current checkpoint (never backwards).

What it cannot check is that ``digest`` really is the chain's value after ``done`` iterations:
only recomputing would tell. So a result computed from a checkpoint is marked with
``resumed_from`` in its status, and a client that must not trust one worker's intermediate state
can recompute or resubmit such a task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DIGEST = re.compile(r"[0-9a-f]{128}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    done: int
    digest: str


def is_digest(text: str) -> bool:
    """Whether ``text`` looks like a chain value: 128 lowercase hex characters."""
    return _DIGEST.fullmatch(text) is not None


def parse_checkpoints(items: object) -> dict[str, Checkpoint]:
    """``[{"id", "done", "digest"}, ...]`` from a request body, by task id.

    Raises:
        ValueError: with a message for the caller, if any item is malformed.
    """
    if not isinstance(items, list):
        raise ValueError("'checkpoints' must be a list")
    parsed = {}
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("id"), str)
                and type(item.get("done")) is int and isinstance(item.get("digest"), str)):
            raise ValueError("each checkpoint must be an object with string 'id', integer 'done' and string 'digest'")
        if not is_digest(item["digest"]):
            raise ValueError("each checkpoint 'digest' must be 128 lowercase hex characters")
        parsed[item["id"]] = Checkpoint(item["done"], item["digest"])
    return parsed
