"""What the endpoints share in reading a request: query parameters, JSON fields, who may call (the
token decorators), whether the peer forwarded it, and how a peer's answer is checked or its
absence answered. Errors are ``ApiError`` (400 with a code, or 503)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import request

from nodeapp.fleet.peer import PEER_HEADER
from nodeapp.web.auth import OPERATOR, PEER, WORKER, requires
from nodeapp.web.errors import ApiError
from nodeapp.web.peer_answers import BadPeerAnswer

_DIGITS = re.compile(r"[0-9]{1,20}")

#: The internal endpoints by who may call them (nodeapp/web/auth.py): workers, the peer node, the operator.
internal = requires(WORKER)
peer_only = requires(PEER)
operator_only = requires(OPERATOR)


def query_args(request=request) -> dict[str, str]:
    """The query parameters of ``request`` (by default the current one), each name's first value:
    ``request.args.to_dict()``.

    A query string of ASCII without escapes (``%``, ``+``), as clients send, is split here:
    parse_qsl would do the same (unquoting nothing) and request.args builds a MultiDict on top,
    a tenth of an enqueue's time in the node's code. Any other is left to werkzeug.
    """
    query = request.environ.get("QUERY_STRING", "")
    if not query.isascii() or "%" in query or "+" in query:
        return request.args.to_dict()
    args: dict[str, str] = {}
    for part in query.split("&"):
        if part:  # parse_qsl skips empty parts ("a=1&&b=2"); a name without "=" has the value ""
            name, _, value = part.partition("=")
            args.setdefault(name, value)
    return args


def positive_int(name: str, code: str, high: int | None = None, args=None) -> int:
    """The query parameter ``name`` (of ``args``, by default the request's) as an integer >= 1."""
    raw = (query_args() if args is None else args).get(name)
    if raw is None:
        raise ApiError(400, code, f"query parameter '{name}' is required")
    if not _DIGITS.fullmatch(raw) or int(raw) < 1:
        raise ApiError(400, code, f"'{name}' must be a positive integer, got {raw!r}")
    value = int(raw)
    if high is not None and value > high:
        raise ApiError(400, code, f"'{name}' must be at most {high}, got {value}")
    return value


def json_field(data: dict, name: str, kind: type | tuple[type, ...], required: bool = True, default: Any = None) -> Any:
    if name not in data:
        if required:
            raise ApiError(400, "bad_request", f"field '{name}' is required")
        return default
    value = data[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ApiError(400, "bad_request", f"field '{name}' must be of type {names}")
    return value


def json_entries(data: dict, name: str, parse: Callable[[Any], Any], most: int, noun: str, form: str) -> list:
    """The list in field ``name``, each item made by ``parse`` (None: malformed); a 400 for more
    than ``most`` items ("at most 256 entries") or a malformed one ("each entry must be ...")."""
    items = json_field(data, name, list)
    if len(items) > most:
        raise ApiError(400, "bad_request", f"at most {most} {noun}s")
    entries = [parse(item) for item in items]
    if any(entry is None for entry in entries):
        raise ApiError(400, "bad_request", f"each {noun} must be {form}")
    return entries


def from_peer() -> bool:
    """A request forwarded by the peer is answered from local state only (no ping-pong)."""
    return PEER_HEADER in request.headers


def checked(ctx, answer: Any, read: Callable[..., Any], *args: Any) -> Any:
    """``read(answer, *args)``, a reader of ``peer_answers``; None when the peer gave no answer or a
    malformed one (then logged, and shown in ``/stats`` as the peer's ``problem``)."""
    if answer is None:
        return None
    try:
        return read(answer, *args)
    except BadPeerAnswer as exc:
        ctx.peer.bad_answer(str(exc))
        return None


def peer_unavailable(task_id: str, action: str = "") -> ApiError:
    """A task this node does not have, while the peer, which may have it, could not be asked."""
    late = f"; the {action} may still reach it" if action else ""
    return ApiError(503, "peer_unavailable", f"task {task_id} is not on this node, and the other node could not be "
                    f"asked (it may be there{late}); retry later",
                    headers={"Retry-After": "2", "X-Peer-Unavailable": "1"})
