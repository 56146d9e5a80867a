"""The query parameters that place a task in time and order: ``priority``, ``not_before`` or
``countdown``, ``deadline`` or ``expires_in`` (``PUT /enqueue``, ``PUT /enqueue_batch``).

Times are Unix seconds, plain decimals (no sign, exponent, NaN or infinity); ``countdown`` and
``expires_in`` are seconds from the node's clock, for clients whose clock may be off. A bad
value is a 400 naming the parameter, and nothing is queued.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from nodeapp.web.errors import ApiError
from nodeapp.web.params import query_args
from nodeapp.store.queue import PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN

_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")


@dataclass(frozen=True)
class TaskOptions:
    priority: int = PRIORITY_DEFAULT
    not_before: float | None = None  # wall clock; None: at once
    deadline: float | None = None  # wall clock; None: none


DEFAULT = TaskOptions()


#: The query parameters ``task_options`` reads: a request with none of them gets ``DEFAULT``.
NAMES = frozenset({"priority", "not_before", "countdown", "deadline", "expires_in"})


def _number(args, name: str, code: str) -> float | None:
    raw = args.get(name)
    if raw is None:
        return None
    if not _DECIMAL.fullmatch(raw):
        raise ApiError(400, code, f"'{name}' must be a number of seconds (digits, an optional fraction), got {raw!r}")
    return float(raw)


def _one_of(args, absolute: str, relative: str, code: str, now: float) -> float | None:
    at, after = _number(args, absolute, code), _number(args, relative, code)
    if at is not None and after is not None:
        raise ApiError(400, code, f"give '{absolute}' or '{relative}', not both")
    return at if after is None else now + after


def task_options(max_delay: float, now: float | None = None, args=None) -> TaskOptions:
    """The request's options (of ``args``, by default the request's query), validated:
    ``not_before`` and ``deadline`` at most ``max_delay`` (MAX_DELAY_SECONDS) ahead, a
    ``deadline`` in the future and after ``not_before``."""
    args = query_args() if args is None else args
    if NAMES.isdisjoint(args):
        return DEFAULT
    now = time.time() if now is None else now
    raw = args.get("priority")
    priority = PRIORITY_DEFAULT
    if raw is not None:
        if not re.fullmatch(r"[0-9]{1,2}", raw) or not PRIORITY_MIN <= int(raw) <= PRIORITY_MAX:
            raise ApiError(400, "bad_priority", f"'priority' must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} "
                                                f"(higher is served first), got {raw!r}")
        priority = int(raw)
    not_before = _one_of(args, "not_before", "countdown", "bad_not_before", now)
    if not_before is not None and not_before > now + max_delay:
        raise ApiError(400, "bad_not_before", f"not_before is {not_before - now:.0f} s ahead; at most {max_delay:g} s "
                                              "(MAX_DELAY_SECONDS)")
    deadline = _one_of(args, "deadline", "expires_in", "bad_deadline", now)
    if deadline is not None:
        if deadline <= now:
            raise ApiError(400, "bad_deadline", "the deadline has already passed")
        if deadline > now + max_delay:
            raise ApiError(400, "bad_deadline", f"the deadline is {deadline - now:.0f} s ahead; at most {max_delay:g} s "
                                                "(MAX_DELAY_SECONDS)")
        if not_before is not None and deadline <= not_before:
            raise ApiError(400, "bad_deadline", "the deadline must be after not_before")
    if not_before is not None and not_before <= now:
        not_before = None  # due already: an ordinary task
    return TaskOptions(priority, not_before, deadline)
